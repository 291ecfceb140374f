"""Checkpoints hold safetensors and JSON only: training writes no pickle, resuming unpickles nothing and is exact."""
import json
import pickle
import random
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from steermoe.declare.runconfig import load_run_config
from steermoe.errors import TrainingError
from tests.test_train import make_trainer, write_config

CHECKPOINT_FILES = {"model.safetensors", "steermoe.json", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                    "rng_state.safetensors", "rng_state.json", "trainer_state.json", "complete.json"}


def _refuse(*args, **kwargs):
    raise AssertionError("a pickle was written or read")


def _no_pickles(monkeypatch):
    """Every way this process could write or read a pickle (torch.save/load, the pickle module) now fails."""
    for module, name in ((torch, "save"), (torch, "load"), (pickle, "dump"), (pickle, "dumps"), (pickle, "load"),
                         (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, _refuse)


def _kind(path) -> str:
    """What a file is by its content: 'json', 'safetensors' (8-byte header length, then a JSON header) or 'other'."""
    data = path.read_bytes()
    try:
        json.loads(data)
        return "json"
    except ValueError:
        pass
    if len(data) >= 8:
        (size,) = struct.unpack("<Q", data[:8])
        try:
            json.loads(data[8:8 + size])
            return "safetensors"
        except ValueError:
            pass
    return "other"


def test_training_writes_no_pickle_and_resume_unpickles_nothing_and_is_exact(tiny, tmp_path, monkeypatch):
    from steermoe.run.train import train

    settings = dict(training={"max_steps": 8}, save_steps=4, dataloader_num_workers=0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, interrupted = (load_run_config(write_config(tmp_path / x, tiny, **settings)) for x in "ab")
    train(whole, log=lambda *_: None)
    with monkeypatch.context() as patch:
        _no_pickles(patch)
        train(interrupted, log=lambda *_: None)
    out = tmp_path / "b" / "out"
    for checkpoint in ("checkpoint-4", "checkpoint-8"):
        files = {p.name: _kind(p) for p in (out / checkpoint).rglob("*") if p.is_file()}
        assert set(files) == CHECKPOINT_FILES
        assert files == {name: name.rsplit(".", 1)[1] for name in files}  # the content is what the name says
        marker = json.loads((out / checkpoint / "complete.json").read_text())
        assert set(marker["files"]) == CHECKPOINT_FILES - {"complete.json"}
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]

    shutil.rmtree(out / "checkpoint-8")  # as if killed after the first checkpoint
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "finished")  # as if killed before the run finished
    with monkeypatch.context() as patch:
        _no_pickles(patch)
        summary = train(interrupted, log=lambda *_: None)
    assert summary["resumed_from"] == str(out / "checkpoint-4") and summary["steps"] == 8
    a = load_file(str(tmp_path / "a" / "out" / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_optimizer_and_scheduler_state_round_trip_exactly(tiny, tmp_path):
    run = load_run_config(write_config(tmp_path, tiny, training={"warmup_steps": 2}))
    first = make_trainer(run)
    first.create_optimizer_and_scheduler(num_training_steps=6)
    for _ in range(3):
        for p in first.model.parameters():
            if p.requires_grad:
                p.grad = torch.randn_like(p)
        first.optimizer.step()
        first.lr_scheduler.step()
    first._save_optimizer_and_scheduler(str(tmp_path))
    second = make_trainer(run)
    second.create_optimizer_and_scheduler(num_training_steps=6)
    second._load_optimizer_and_scheduler(str(tmp_path))
    saved, loaded = first.optimizer.state_dict(), second.optimizer.state_dict()
    assert saved["state"].keys() == loaded["state"].keys() and len(saved["state"]) == 6
    for index, values in saved["state"].items():
        assert values.keys() == loaded["state"][index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in values.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    assert json.loads(json.dumps(saved["param_groups"])) == json.loads(json.dumps(loaded["param_groups"]))
    assert second.lr_scheduler.state_dict() == first.lr_scheduler.state_dict()
    assert second.lr_scheduler.get_last_lr() == first.lr_scheduler.get_last_lr()

    # the state of another model's parameters is refused, by name
    other = make_trainer(load_run_config(write_config(tmp_path, tiny, name="linear_whisper_qwen_tones_train")))
    other.create_optimizer_and_scheduler(num_training_steps=6)
    with pytest.raises(TrainingError, match="optimizer.json holds the state of other parameters"):
        other._load_optimizer_and_scheduler(str(tmp_path))


def test_rng_states_round_trip(tiny, tmp_path):
    trainer = make_trainer(load_run_config(write_config(tmp_path, tiny)))

    def draw():
        return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(4).tolist()

    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state, which must be kept too
    trainer._save_rng_state(str(tmp_path))
    expected = draw()
    draw()
    trainer._load_rng_state(str(tmp_path))
    assert draw() == expected
    assert load_file(str(tmp_path / "rng_state.safetensors"))["cpu"].dtype == torch.uint8


def test_resume_refuses_unlisted_and_pickled_files(tiny, tmp_path):
    from steermoe.fsutil import sha256_file, write_json
    from steermoe.run.checkpoint import resume_point
    from steermoe.run.train import train

    run = load_run_config(write_config(tmp_path, tiny, training={"max_steps": 2}, save_steps=1))
    train(run, log=lambda *_: None)
    out = tmp_path / "out"
    (out / "checkpoint-2" / "global_step2").mkdir()
    (out / "checkpoint-2" / "global_step2" / "optim_states.pt").write_bytes(b"not listed in complete.json")
    # an older steermoe's checkpoint: pickled optimiser state, listed in its completion marker
    old = out / "checkpoint-1"
    (old / "optimizer.pt").write_bytes(b"\x80\x04pickled")
    marker = json.loads((old / "complete.json").read_text())
    marker["files"]["optimizer.pt"] = sha256_file(old / "optimizer.pt")
    write_json(old / "complete.json", marker)
    messages = []
    assert resume_point(out, run, log=messages.append) is None
    assert "holds files its complete.json does not list (global_step2/optim_states.pt)" in messages[0]
    assert "holds pickled state (optimizer.pt" in messages[1]
    assert len(list((out / "superseded").iterdir())) == 2  # moved aside, not deleted
