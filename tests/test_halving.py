"""Successive halving: the declaration's checks, the decisions from the rung files, rung trainings that stop with a
checkpoint and a dev loss and resume to the weights of an uninterrupted run, and the workflow that drives it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train import write_config

REPO = Path(__file__).resolve().parent.parent


def _train(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steermoe.cli", "train", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---- rung trainings ------------------------------------------------------------------------------------------
def test_a_cell_stopped_at_a_rung_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    settings = dict(training={"max_steps": 12, "warmup_steps": 2}, save_steps=6, eval_steps=6,
                    eval_parquet_dirs=[f"{tiny['corpus']}/dev.parquet"], dataloader_num_workers=0)
    whole, halved = (write_config(tmp_path / x, tiny, **settings) for x in "ab" if (tmp_path / x).mkdir() is None)
    assert _train(whole).returncode == 0
    rung = tmp_path / "b" / "out" / "rungs" / "rung1"
    first = _train(halved, "--until-step", "4", "--rung-dir", str(rung))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((rung / "train_summary.json").read_text())
    assert summary["steps"] == 4 and not (tmp_path / "b" / "out" / "final").exists()
    dev = [e["eval_loss"] for e in summary["log_history"] if "eval_loss" in e]
    assert dev == [summary["dev_loss"]]  # evaluated at the rung's step, once
    assert (rung / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "out" / "checkpoint-4" / "model.safetensors").read_bytes()
    # killed after the rung's checkpoint, before its folder: the same command measures nothing again
    (rung / "train_summary.json").unlink()
    again = _train(halved, "--until-step", "4", "--rung-dir", str(rung))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((rung / "train_summary.json").read_text())["dev_loss"] == summary["dev_loss"]
    assert "resuming from" in again.stderr + again.stdout
    # kept: it trains on from the rung's checkpoint, under the schedule of all 12 steps
    assert _train(halved).returncode == 0
    a = load_file(str(tmp_path / "a" / "out" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # a rung behind the newest checkpoint cannot be measured again
    late = _train(halved, "--until-step", "3", "--rung-dir", str(tmp_path / "late"))
    assert late.returncode != 0 and "has ended" in late.stderr
