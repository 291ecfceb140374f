"""Crash tests: SIGKILL during data preparation, training, evaluation and aggregation, then the same command again
finishes with exactly the results of an uninterrupted run; SIGTERM / SIGUSR1 during training save a checkpoint
first (what SLURM sends before a time limit).

Every case runs the real `steermoe` command as a scheduler would: in its own process group, its output redirected
to a log file (no PYTHONUNBUFFERED), and kills it at a deterministic point: a progress line in that log, a file
appearing on disk, or a FIFO the command blocks on while opening an output.
"""
import csv
import io
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from tests.test_train import write_config
from tests.tiny import WORDS, save_tiny_models, tone_corpus

VENV_BIN = Path(sys.executable).parent
MEASURED_KEYS = ("rtf", "decode_seconds", "peak_host_memory_mb")  # metrics.json values measured on the run


# ---- running and killing the real command ----------------------------------------------------------------------
def job_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a log file, as in a real job
    return {**env, "OMP_NUM_THREADS": "1", "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}


def start(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """`steermoe ARGS > LOG 2>&1` in a new process group (a Snakemake job, a SLURM step)."""
    with open(log, "w") as handle:
        return subprocess.Popen([str(VENV_BIN / "steermoe"), *map(str, args)], stdout=handle,
                                stderr=subprocess.STDOUT, cwd=cwd, env=job_env(), start_new_session=True)


def finish(args: list[str], log: Path, cwd: Path | None = None) -> str:
    """Run to the end; the log's text. Fails with the log's tail unless the command succeeded."""
    proc = start(args, log, cwd)
    code = proc.wait(timeout=600)
    text = log.read_text()
    assert code == 0, f"steermoe {' '.join(map(str, args))} exited {code}:\n{text[-3000:]}"
    return text


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the command exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def in_log(log: Path, text: str):
    return lambda: log.is_file() and text in log.read_text(errors="replace")


def blocked_on_fifo(proc: subprocess.Popen):
    """True while the process waits for a reader of a FIFO it opens for writing (Linux)."""
    def check():
        try:
            return Path(f"/proc/{proc.pid}/wchan").read_text() == "wait_for_partner"
        except OSError:
            return False
    return check


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> int:
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=120)


def group_gone(proc: subprocess.Popen, timeout: float = 30) -> bool:
    """No process of the job's group is left (a worker whose parent was killed exits by itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in MEASURED_KEYS}


def assert_same_evaluation(folder: Path, reference: Path) -> None:
    """Everything an evaluation writes is identical, apart from the values metrics.json measures (time, memory)."""
    got, want = files(folder), files(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        if name == "metrics.json":
            assert without_timing(json.loads(got[name])) == without_timing(json.loads(want[name]))
        else:
            assert got[name] == want[name], name


# ---- data preparation ------------------------------------------------------------------------------------------
def librispeech(root: Path, sizes: dict[str, int]) -> Path:
    """A corpus in the LibriSpeech release layout, its audio stereo 44.1 kHz (resampled and down-mixed when
    prepared)."""
    for split, n in sizes.items():
        chapter = root / split / "7" / "11"
        chapter.mkdir(parents=True)
        lines = []
        for i in range(n):
            t = np.arange(int((0.8 + 0.4 * (i % 3)) * 44100)) / 44100
            mono = 0.3 * np.sin(2 * np.pi * (200 + 7 * i) * t)
            sf.write(chapter / f"7-11-{i:04d}.flac", np.stack([mono, 0.5 * mono], axis=1), 44100)
            lines.append(f"7-11-{i:04d} {WORDS[i % 6].upper()} {WORDS[(i // 6) % 6].upper()}\n")
        (chapter / "7-11.trans.txt").write_text("".join(lines))
    return root


def test_sigkill_during_data_preparation_keeps_the_previous_corpus_and_the_rerun_resumes(tmp_path):
    from steermoe.data.layout import CHUNK, PARTIAL_CHUNKS, read_split

    corpus = librispeech(tmp_path / "LibriSpeech", {"dev-clean": 3, "test-clean": 3, "train-clean-100": 600})
    command = ["data", "prepare", "--corpus", "librispeech", "--root", corpus, "--workers", "2", "--out"]
    finish(command + [tmp_path / "reference"], tmp_path / "reference.log")
    out = tmp_path / "prepared"
    finish(command + [out, "--max-audio-length", "1.0"], tmp_path / "earlier.log")  # an earlier preparation
    earlier = files(out)

    log = tmp_path / "prepare.log"
    proc = start(command + [out], log)
    partial = tmp_path / ".prepared.partial"
    # splits are prepared in name order: killed once the first chunk of train-clean-100 is stored
    first_chunk = partial / PARTIAL_CHUNKS / "train-clean-100" / "000000.json"
    wait_until(first_chunk.is_file, proc, "a chunk of train-clean-100 was stored")
    proc.kill()  # the main process only (the OOM killer's choice): its two workers must not linger
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (partial / "train-clean-100.parquet").exists() and not (partial / "manifest.json").exists()
    assert group_gone(proc)
    assert files(out) == earlier  # the earlier corpus is untouched and still reads
    assert read_split(out, "train-clean-100").num_rows == json.loads(earlier["manifest.json"])["splits"][
        "train-clean-100"]["rows"]

    text = finish(command + [out], log)
    assert "train-clean-100: 600 rows" in text
    assert "test-clean: 0.00 h of audio" in text and "3 of 3 utterances were prepared before (resumed)" in text
    done = int(re.search(r"train-clean-100: .*; (\d+) of 600 utterances were prepared before", text)[1])
    assert CHUNK <= done < 600 and done % CHUNK == 0  # the finished chunks are not prepared again
    assert files(out) == files(tmp_path / "reference")  # parquet, manifest and rejects: byte for byte
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial folder left


# ---- training: SIGTERM / SIGUSR1 save a checkpoint, SIGKILL loses at most the steps since the last one ----------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-tiny")
    encoder, decoder = save_tiny_models(root)
    corpus = tone_corpus(root / "tones", sizes={"train": 32, "dev": 4, "test": 48})
    return {"encoder": encoder, "decoder": decoder, "corpus": corpus}


TRAIN = dict(training={"max_steps": 40}, save_steps=1000, dataloader_num_workers=1)  # no scheduled checkpoint


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """The final folder of an uninterrupted training run (the real command)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    finish(["train", "--config", write_config(folder, tiny, **TRAIN)], folder / "train.log")
    return folder / "out" / "final"


def assert_same_training(final: Path, reference: Path) -> None:
    got, want = load_file(str(final / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    losses = [[(h["step"], h["loss"]) for h in json.loads((f / "train_summary.json").read_text())["log_history"]
               if "loss" in h] for f in (final, reference)]
    assert losses[0] == losses[1] and losses[0]


def stop_with(sig: signal.Signals, config: Path, log: Path, after_step: int) -> int:
    """Start training, send `sig` to its process group once `after_step` is logged; the step it stopped at."""
    proc = start(["train", "--config", config], log)
    wait_until(in_log(log, f"step {after_step}/40 "), proc, f"step {after_step} was logged")  # line by line
    assert kill_group(proc, sig) == 2
    text = log.read_text()
    assert f"steermoe: error: stopped by {sig.name} at step " in text and "Traceback" not in text, text[-3000:]
    step = int(text.split(f"stopped by {sig.name} at step ")[1].split(";")[0])
    assert after_step <= step < 40
    return step


def test_sigterm_and_sigusr1_save_a_checkpoint_and_the_same_command_resumes_exactly(tiny, uninterrupted, tmp_path):
    """The signal goes to the whole process group, data-loader workers included, as SLURM and Snakemake send it.
    Stopped twice (SIGTERM, then SIGUSR1 in the resumed run), the run still ends with the uninterrupted weights."""
    config = write_config(tmp_path, tiny, **TRAIN)
    out, log = tmp_path / "out", tmp_path / "train.log"
    first = stop_with(signal.SIGTERM, config, log, after_step=3)
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{first}"]  # the signal's own checkpoint
    assert (out / f"checkpoint-{first}" / "complete.json").is_file() and not (out / "final").exists()

    second = stop_with(signal.SIGUSR1, config, log, after_step=first + 3)
    assert f"resuming from {out}/checkpoint-{first}" in log.read_text()
    assert (out / f"checkpoint-{second}" / "complete.json").is_file() and not (out / "final").exists()

    text = finish(["train", "--config", config], log)
    assert f"resuming from {out}/checkpoint-{second}" in text
    assert_same_training(out / "final", uninterrupted)


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_previous_one(tiny, uninterrupted, tmp_path):
    config = write_config(tmp_path, tiny, **{**TRAIN, "save_steps": 15})
    out, log = tmp_path / "out", tmp_path / "train.log"
    proc = start(["train", "--config", config], log)
    wait_until(in_log(log, "32 training utterances"), proc, "training began")  # incomplete folders are gone by now
    marker = out / "checkpoint-30" / ".complete.json.tmp"  # where the completion marker is built
    marker.parent.mkdir(parents=True)
    os.mkfifo(marker)  # opening it blocks: the checkpoint's files are written, its marker is not
    wait_until(blocked_on_fifo(proc), proc, "checkpoint-30 was being marked complete", timeout=600)
    assert kill_group(proc) == -signal.SIGKILL
    assert (out / "checkpoint-15" / "complete.json").is_file()
    assert (out / "checkpoint-30" / "model.safetensors").is_file()
    assert not (out / "checkpoint-30" / "complete.json").exists()

    text = finish(["train", "--config", config], log)
    assert f"removing incomplete checkpoint {out}/checkpoint-30" in text
    assert f"resuming from {out}/checkpoint-15" in text
    assert_same_training(out / "final", uninterrupted)


# ---- evaluation ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A trained experiment with two checkpoints, its test config, and the evaluation of its final weights run
    alone (the reference)."""
    from steermoe.declare.runconfig import load_run_config
    from steermoe.run.evaluate import evaluate
    from steermoe.run.train import train

    folder = tmp_path_factory.mktemp("trained")
    train(load_run_config(write_config(folder, tiny, training={"max_steps": 4}, save_steps=2)), log=lambda *_: None)
    test = write_config(folder, tiny, name="layer_wise_whisper_qwen_tones_test",
                        evaluation={"batch_size": 1, "max_new_tokens": 12})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs run (OMP_NUM_THREADS=1): the same arithmetic
    try:
        evaluate(load_run_config(test), output_dir=folder / "reference-eval", log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "test": test, "reference": folder / "reference-eval"}


def test_sigkill_during_evaluation_keeps_the_previous_results_and_the_rerun_completes(trained, tmp_path):
    from steermoe.declare.runconfig import load_run_config
    from steermoe.run.evaluate import evaluate

    out = tmp_path / "eval"
    evaluate(load_run_config(trained["test"]), checkpoint=trained["folder"] / "out" / "checkpoint-2", output_dir=out,
             log=lambda *_: None)  # an earlier evaluation (of an earlier checkpoint) is in place
    earlier = files(out)
    command = ["evaluate", "--config", trained["test"], "--out", out]
    log = tmp_path / "evaluate.log"
    proc = start(command, log)
    wait_until(in_log(log, "decoded 3/48 utterances"), proc, "3 of 48 utterances were decoded")
    assert kill_group(proc) == -signal.SIGKILL
    assert files(out) == earlier  # nothing written until the whole split is decoded

    text = finish(command, log)
    assert "decoded 48/48 utterances" in text
    assert_same_evaluation(out, trained["reference"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "evaluate.log"]  # no partial or old folder


# ---- aggregation -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    """A workflow folder whose table was aggregated before a new result arrived, and the uninterrupted
    aggregation of the new state (reference)."""
    from tests.test_aggregate import BASE_ERRORS, BETTER_ERRORS, CONFIG_PATHS, write_evaluated
    from steermoe.declare.matrix import load_matrix

    root = tmp_path_factory.mktemp("aggregated") / "wf"
    root.mkdir()
    (root / "catalog.yaml").write_text("encoders:\n  tiny: {type: whisper, path: models/tiny}\n"
                                       "decoders:\n  smol: {path: models/smol}\n"
                                       "datasets:\n  synth-en: {synth: synth-en, metric: wer, prompt: 'say: '}\n")
    (root / "matrix.tsv").write_text("method\tencoder\tdecoder\tdataset\tnum_experts\tgroup\tbaseline\n"
                                     "linear\ttiny\tsmol\tsynth-en\t\tg\ttrue\n"
                                     "layer_wise\ttiny\tsmol\tsynth-en\t4\tg\tfalse\n"
                                     "layer_wise\ttiny\tsmol\tsynth-en\t8\tg\tfalse\n")
    command = ["aggregate", "--matrix", "matrix.tsv", "--catalog", "catalog.yaml", "--resamples", "300"]
    cwd, exps = os.getcwd(), []
    os.chdir(root)  # the result-writing helpers write relative to the working directory
    try:
        exps = load_matrix("matrix.tsv", "catalog.yaml")
        for exp in exps:
            CONFIG_PATHS[exp.id] = (Path(exp.train_config), Path(exp.test_config))
        write_evaluated(exps[0].id, BASE_ERRORS, steering=False)
        write_evaluated(exps[1].id, BETTER_ERRORS)
        finish(command, root / "aggregate.log", root)  # the earlier table: the third experiment not run yet
        write_evaluated(exps[2].id, BASE_ERRORS)  # ... which has now finished
    finally:
        os.chdir(cwd)
        for exp in exps:
            CONFIG_PATHS.pop(exp.id, None)
    reference = root.parent / "reference"
    shutil.copytree(root, reference)
    finish(command, reference / "aggregate.log", reference)
    return {"root": root, "reference": reference, "command": command}


OUTPUTS = ("table.csv", "comparisons.csv", "plots/metrics.png", "plots/steering_gates.png",
           "plots/training_curves.png")


@pytest.mark.parametrize("target", ["plots/metrics.png", "table.csv"])  # the first and the last file written
def test_sigkill_during_aggregation_leaves_whole_files_and_the_rerun_completes(aggregated, tmp_path, target):
    root = tmp_path / "wf"
    shutil.copytree(aggregated["root"], root)
    results, reference = root / "results", aggregated["reference"] / "results"
    earlier = {name: (results / name).read_bytes() for name in OUTPUTS}
    assert earlier["table.csv"] != (reference / "table.csv").read_bytes()  # the new result changes the table
    tmp = results / target
    tmp = tmp.parent / f".{tmp.name}.tmp"  # where fsutil.write_atomic builds the file
    os.mkfifo(tmp)  # opening it for writing blocks: a deterministic point inside the writes
    proc = start(aggregated["command"], root / "aggregate.log", root)
    wait_until(blocked_on_fifo(proc), proc, f"aggregate began writing {target}")
    assert kill_group(proc) == -signal.SIGKILL
    tmp.unlink()
    tmp.write_bytes(earlier[target][:100])  # what a kill in the middle of a write leaves behind
    for name in OUTPUTS:
        data = (results / name).read_bytes()
        # every output is whole: the earlier version, or (written before the kill) the new one
        assert data in (earlier[name], (reference / name).read_bytes()), name
    assert (results / "table.csv").read_bytes() == earlier["table.csv"]  # table.csv is written last

    finish(aggregated["command"], root / "aggregate.log", root)
    for name in OUTPUTS:
        assert (results / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list(results.rglob(".*.tmp"))
    rows = list(csv.DictReader(io.StringIO((results / "table.csv").read_text())))
    assert [r["status"] for r in rows if r["metric"] == "wer"] == ["ok", "ok", "ok"]


# ---- the workflow: Snakemake killed mid-train, then the same command --------------------------------------------
def tiny_workflow(root: Path, tiny: dict) -> Path:
    """A copy of the workflow whose matrix is one experiment on the tiny models and the tone corpus."""
    from tests.test_workflow import copy_workflow, write_matrix
    from tests.tiny import tiny_catalog

    copy_workflow(root)
    catalog = tiny_catalog(tiny["encoder"], tiny["decoder"], tiny["corpus"], max_steps=200, warmup_steps=0,
                           save_steps=5, eval_steps=5, save_total_limit=3, use_early_stopping=False)
    (root / "experiments" / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    write_matrix(root, "layer_wise\ttiny-whisper\ttiny-qwen\ttones", header="method\tencoder\tdecoder\tdataset\n")
    return root


EXPERIMENT = "layer_wise_tiny-whisper_tiny-qwen_tones"


def start_snakemake(root: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen([str(VENV_BIN / "snakemake"), "--cores", "2", "results/table.csv"], cwd=root,
                                stdout=handle, stderr=subprocess.STDOUT, env=job_env(), start_new_session=True)


def run_snakemake(root: Path, log: Path) -> str:
    code = start_snakemake(root, log).wait(timeout=900)
    assert code == 0, log.read_text()[-4000:]
    return log.read_text()


def table_without_timing(path: Path) -> list[dict]:
    from steermoe.report.tables import TIMING_COLUMNS

    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
            for row in csv.DictReader(io.StringIO(path.read_text()))]


@pytest.fixture(scope="module")
def workflow_reference(tiny, tmp_path_factory):
    """The tiny workflow run once without interruption."""
    reference = tiny_workflow(tmp_path_factory.mktemp("workflow-reference") / "wf", tiny)
    run_snakemake(reference, reference.parent / "run.log")
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_snakemake_stopped_mid_train_resumes_with_the_same_command(tiny, workflow_reference, tmp_path, sig):
    """SIGKILL: Snakemake and its job die at once (a lost login node); SIGTERM: what Ctrl-C or `kill` of the run
    sends to the process group, the train job saving a checkpoint first."""
    root = tiny_workflow(tmp_path / "wf", tiny)
    proc = start_snakemake(root, tmp_path / "stopped.log")
    train = root / "results" / EXPERIMENT / "train"
    wait_until(lambda: (train / "checkpoint-10" / "complete.json").is_file(), proc, "checkpoint-10 was written")
    code = kill_group(proc, sig)
    assert code == -signal.SIGKILL if sig == signal.SIGKILL else code != 0
    assert not (train / "final" / "model.safetensors").exists()  # (Snakemake made the empty folder)
    stopped = (root / "logs" / EXPERIMENT / "train.log").read_text()
    newest = max(int(p.name.split("-")[1]) for p in train.glob("checkpoint-*"))
    if sig == signal.SIGTERM:
        assert f"stopped by SIGTERM at step {newest}; a checkpoint was saved" in stopped, stopped[-2000:]

    text = run_snakemake(root, tmp_path / "rerun.log")
    assert ("steermoe: removed the lock left by a Snakemake run that is no longer running" in text) == \
        (sig == signal.SIGKILL)  # after SIGTERM Snakemake removed its lock itself
    train_log = (root / "logs" / EXPERIMENT / "train.log").read_text()
    assert f"resuming from results/{EXPERIMENT}/train/checkpoint-{newest}" in train_log, train_log[-2000:]
    reference = workflow_reference / "results" / EXPERIMENT
    assert_same_training(train / "final", reference / "train" / "final")
    assert_same_evaluation(root / "results" / EXPERIMENT / "eval", reference / "eval")
    assert table_without_timing(root / "results" / "table.csv") == \
        table_without_timing(workflow_reference / "results" / "table.csv")
    assert "Nothing to be done" in run_snakemake(root, tmp_path / "again.log")


def test_a_lock_is_removed_only_when_every_run_that_could_hold_it_is_gone(tmp_path):
    import socket

    from steermoe import snakelock

    meta = tmp_path / ".snakemake"
    (meta / "locks").mkdir(parents=True)

    def lock_with(*owners) -> bool:
        shutil.rmtree(meta / snakelock.OWNERS, ignore_errors=True)
        (meta / snakelock.OWNERS).mkdir()
        (meta / "locks" / "0.output.lock").write_text("results/table.csv\n")
        for i, owner in enumerate(owners):
            (meta / snakelock.OWNERS / f"{i}.json").write_text(json.dumps(owner))
        return snakelock.clear_stale_lock(meta, log=messages.append)

    messages = []
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = {"host": socket.gethostname(), "pid": ended.pid, "start": "1"}
    alive = {"host": socket.gethostname(), "pid": os.getpid(), "start": snakelock._start_time(os.getpid())}
    reused = {**alive, "start": "1"}  # this pid, but another process: the recorded run is gone
    elsewhere = {**dead, "host": socket.gethostname() + "-other"}  # cannot be checked from here
    assert not lock_with()  # a lock of unknown origin stays (Snakemake's own message says what to do)
    assert not lock_with(dead, alive) and not lock_with(elsewhere, dead)
    assert (meta / "locks" / "0.output.lock").is_file() and not messages
    assert lock_with(dead, reused)
    assert not list((meta / "locks").iterdir()) and not list((meta / snakelock.OWNERS).iterdir())
    assert "removed the lock left by a Snakemake run that is no longer running" in messages[0]
    record = snakelock.register(meta)  # a run records itself, and removes the record when it ends
    assert json.loads(record.read_text()) == alive
    snakelock.unregister(meta)
    assert not record.exists()
