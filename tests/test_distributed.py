"""Several processes on one machine, over gloo as on CPUs: torchrun (DDP) and the DeepSpeed launcher (ZeRO-2, ZeRO-3)
train to the weights of one process with the same global batch, resume after the whole job is killed, and evaluate
shard by shard to the bytes of one process."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from steermoe.declare.runconfig import load_run_config
from tests.test_crash import MEASURED_KEYS
from tests.test_train import REPO, write_config

BIN = Path(sys.executable).parent
STEERMOE = str(BIN / "steermoe")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BATCH, STEPS = 4, 6  # per process; 32 utterances: 8 batches, 4 steps per epoch with 2 processes (2 epochs in 6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, config: Path, tmp_path: Path) -> list[str]:
    """The command that trains `config` in two processes. The DeepSpeed form is the original code's own,
    `deepspeed --num_gpus=N <entry point> --config X.yaml --deepspeed_config <json>`, with two CPU processes."""
    port = str(free_port())
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
                STEERMOE, "train", "--config", str(config)]
    if launcher == "deepspeed-zero2":
        ds_config = REPO / "steermoe" / "declare" / "deepspeed" / "stage2_simple.json"
    else:  # ZeRO-3, every parameter sliced across the processes (these tiny ones too, as a 7B model's are)
        shipped = json.loads((REPO / "steermoe" / "declare" / "deepspeed" / "stage3.json").read_text())
        shipped["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        ds_config = tmp_path / "stage3_sliced.json"
        ds_config.write_text(json.dumps(shipped))
    return [str(BIN / "deepspeed"), "--master_port", port, "--num_gpus=2", STEERMOE, "train", "--config", str(config),
            "--deepspeed_config", str(ds_config)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.fixture(scope="module")
def one_process(tiny, tmp_path_factory):
    """The reference: one process, the same global batch (2 x 4) as two gradient-accumulated batches of 4."""
    from steermoe.run.train import train

    root, done = tmp_path_factory.mktemp("one-process"), {}

    def run(steps: int) -> dict:
        if steps not in done:
            (root / str(steps)).mkdir()
            train(load_run_config(write_config(
                root / str(steps), tiny, training={"batch_size": BATCH, "gradient_accumulation_steps": 2,
                                                   "max_steps": steps})), log=lambda *_: None)
            done[steps] = weights(root / str(steps) / "out" / "final")
        return done[steps]
    return run


# tolerance: the two processes sum their gradients in another order (gloo all-reduce against accumulation)
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed-zero2", "deepspeed-zero3"])
def test_two_processes_train_to_the_weights_of_one_process_with_the_same_global_batch(tiny, tmp_path, launcher,
                                                                                       one_process):
    config = write_config(tmp_path, tiny, training={"batch_size": BATCH, "max_steps": STEPS}, save_steps=3)
    proc = subprocess.run(launch(launcher, config, tmp_path), capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert_same_weights(weights(out / "final"), one_process(STEPS), atol=1e-6)
    assert_same_weights(weights(out / "checkpoint-6"), weights(out / "final"), atol=0)  # whole, under ZeRO-3 too
    # process 0 alone logs, writes TensorBoard and the final folder; each process keeps its own RNG state
    assert proc.stdout.count(f"step 1/{STEPS} ") == 1
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    summary = json.loads((out / "final" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == STEPS and summary["device"] == "cpu"
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors", "complete.json"} <= {
        p.name for p in (out / "checkpoint-3").iterdir()}


def test_the_steering_clip_under_zero2_uses_the_groups_norm_across_processes(tiny, tmp_path):
    """A steering clip far below the gradients' norm clips every step: each ZeRO-2 process holds a slice of the
    steering group and must scale it by the whole group's norm, as one process does, not by its slice's own."""
    from steermoe.run.train import train

    clip = {"steering": {"num_experts": 4, "steering_gradient_clip": 1e-4}, "clip_steering_gradients": True}
    (tmp_path / "one").mkdir()
    train(load_run_config(write_config(tmp_path / "one", tiny, training={
        "batch_size": BATCH, "gradient_accumulation_steps": 2, "max_steps": 3}, **clip)), log=lambda *_: None)
    config = write_config(tmp_path, tiny, training={"batch_size": BATCH, "max_steps": 3}, **clip)
    proc = subprocess.run(launch("deepspeed-zero2", config, tmp_path), capture_output=True, text=True, env=ENV,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "out" / "final"), weights(tmp_path / "one" / "out" / "final"), atol=1e-6)


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process it started, as a node failure or an out-of-memory kill would."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        member.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(family, timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed-zero2"])
def test_a_killed_two_process_run_resumes_to_the_weights_of_an_uninterrupted_run(tiny, tmp_path, launcher,
                                                                                 one_process):
    steps = 40  # the kill lands after checkpoint-4, long before the end
    config = write_config(tmp_path, tiny, training={"batch_size": BATCH, "max_steps": steps}, save_steps=4)
    command = launch(launcher, config, tmp_path)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            cwd=tmp_path)
    marker = tmp_path / "out" / "checkpoint-4" / "complete.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate()[0][-3000:]
    kill_job(proc)
    assert not (tmp_path / "out" / "final").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_weights(weights(tmp_path / "out" / "final"), one_process(steps), atol=1e-6)


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])  # deepspeed: what `steermoe launch --gpus 2` runs
def test_two_process_evaluation_equals_one_process_byte_for_byte(tiny, tmp_path, launcher):
    """Two processes each decode every other batch; process 0 merges and writes."""
    from steermoe.run.train import train

    train(load_run_config(write_config(tmp_path, tiny, training={"max_steps": 2})), log=lambda *_: None)
    config = write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test",
                          evaluation={"batch_size": 2, "max_new_tokens": 6})
    one = subprocess.run([STEERMOE, "evaluate", "--config", str(config), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=ENV)
    assert one.returncode == 0, one.stderr[-2000:]
    start = ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"] if launcher == "torchrun" else
             [str(BIN / "deepspeed"), "--master_port", str(free_port()), "--num_gpus=2"])
    two = subprocess.run([*start, STEERMOE, "evaluate", "--config", str(config), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "[process 1 of 2] decoded 4/4 utterances" in two.stdout  # 8 utterances, 4 batches, 2 each
    for name in ("predictions.jsonl", "steering.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    measured = {*MEASURED_KEYS, "processes"}
    metrics = [{k: v for k, v in json.loads((tmp_path / run / "metrics.json").read_text()).items() if k not in measured}
               for run in ("one", "two")]
    assert metrics[0] == metrics[1]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
