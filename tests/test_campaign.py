"""The fault and bad-input campaign: what a hostile user does to a run, each case a test that CI runs.

Held before, tested where the mechanism lives: kills during preparation, training, evaluation and aggregation redo only
what is needed and give the same table (tests/test_crash.py); a truncated or hash-mismatched checkpoint is moved aside
and the previous one resumes exactly (tests/test_bad_inputs.py, tests/test_checkpoint_safety.py); two workflows in one
folder are refused, matrix, catalog and template attacks are rejected with file, line and cell (tests/test_bad_inputs.py,
tests/test_security.py); no pickle is ever loaded (tests/test_checkpoint_safety.py).

Here, the cases that did not hold, one section each:
1. a finished training is final: run again, it does nothing; a kill after final/ is written restores the same bytes
2. evaluation never truncates audio longer than the encoder's window
3. YAML alias bombs and huge axes products are refused before they are expanded
4. every float setting is finite
5. duplicate utterance ids are renamed (preparation) or refused (raw parquet), naming both sources
6. a full disk, a truncated weights file: one `steermoe: error:` line naming the file, nothing partial left
7. max_steps 0, absurd expert counts, NUL-only transcripts, the FireRedASR loader's message
"""
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.test_crash import (EXPERIMENT, files, finish, in_log, kill_group, run_snakemake, start, start_snakemake,
                              table_without_timing, tiny_workflow, wait_until)
from tests.test_train import write_config


def run_steermoe(args: list, log: Path, cwd: Path) -> tuple[int, str]:
    """`steermoe ARGS` to the end in `cwd`: its exit code and output."""
    proc = start(args, log, cwd)
    code = proc.wait(timeout=600)
    return code, log.read_text()


# ---- 1. a finished training is final ---------------------------------------------------------------------------
# a checkpoint at the last step too; output_dir relative, so that a copy of the folder is the same config
TRAIN = dict(training={"max_steps": 7, "output_dir": "out"}, save_steps=3, save_total_limit=1)


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    """A config trained to the end once by the real command, and every file of its output folder then."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, tiny, **TRAIN)
    finish(["train", "--config", config.name], folder / "train.log", cwd=folder)
    return {"config": config, "files": files(folder / "out")}


def copy_of(finished_run, tmp_path) -> Path:
    """The finished run's config and output folder copied into tmp_path (hard links kept, as training made them);
    returns the config's name, which the tests run in tmp_path."""
    source = finished_run["config"].parent
    shutil.copytree(source / "out", tmp_path / "out")
    for name in ("model.safetensors", "steermoe.json", "train_summary.json"):
        (tmp_path / "out" / "final" / name).unlink()
        (tmp_path / "out" / "final" / name).hardlink_to(tmp_path / "out" / "finished" / name)
    shutil.copy(finished_run["config"], tmp_path)
    return Path(finished_run["config"].name)


def test_training_a_finished_run_again_does_nothing_and_changes_no_file(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    before = files(out)
    text = finish(["train", "--config", config], tmp_path / "again.log", tmp_path)
    assert "already trained (7 steps" in text and "nothing to do" in text
    assert "step 8/7" not in text and "Loading weights" not in text  # no model was even loaded
    assert files(out) == before


def test_a_final_folder_deleted_as_snakemake_deletes_outputs_comes_back_byte_identical(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    before = files(out / "final")
    for name in before:  # what Snakemake does to a job's outputs before it runs the job again
        (out / "final" / name).unlink()
    text = finish(["train", "--config", config], tmp_path / "again.log", tmp_path)
    assert "out/final: restored from out/finished" in text and "nothing to do" in text
    assert files(out / "final") == before


def test_killed_after_its_last_checkpoint_the_run_ends_without_another_step(finished_run, tmp_path):
    """Killed after the checkpoint of the last step and before finished/ was written: the same command ends the run
    with the uninterrupted run's weights, no step past max_steps, and deletes no checkpoint."""
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    shutil.rmtree(out / "finished")
    shutil.rmtree(out / "final")
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-7"]
    text = finish(["train", "--config", config], tmp_path / "again.log", tmp_path)
    assert "resuming from" in text and "saved at the end of training (step 7)" in text and "step 8/" not in text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints
    assert files(out / "final")["model.safetensors"] == finished_run["files"]["final/model.safetensors"]
    assert json.loads((out / "final" / "train_summary.json").read_text())["steps"] == 7


def test_another_config_for_the_same_output_folder_is_refused_with_the_difference_named(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    before = files(out)
    other = "linear_whisper_qwen_tones_train.yaml"
    (tmp_path / other).write_text((tmp_path / config).read_text().replace("max_steps: 7", "max_steps: 9"))
    code, text = run_steermoe(["train", "--config", other], tmp_path / "other.log", tmp_path)
    assert code == 2 and "Traceback" not in text, text[-2000:]
    line = text.strip().splitlines()[-1]
    assert line.startswith(f"steermoe: error: {other}: training.output_dir out holds the finished training of "
                           f"another config, layer_wise_whisper_qwen_tones_train"), line
    assert "training.max_steps: 7 -> 9" in line
    assert files(out) == before


def test_an_edited_config_trains_afresh_and_keeps_the_earlier_training_aside(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    earlier = (out / "finished" / "model.safetensors").read_bytes()
    (tmp_path / config).write_text((tmp_path / config).read_text().replace("max_steps: 7", "max_steps: 4"))
    text = finish(["train", "--config", config], tmp_path / "edited.log", tmp_path)
    assert "was trained with an earlier version of layer_wise_whisper_qwen_tones_train.yaml " \
           "(training.max_steps: 7 -> 4): moved to" in text
    assert json.loads((out / "final" / "train_summary.json").read_text())["steps"] == 4
    [aside] = (out / "superseded").glob("finished-*")
    assert (aside / "model.safetensors").read_bytes() == earlier


@pytest.mark.slow
def test_snakemake_killed_after_final_is_written_restores_the_same_weights_and_table(tiny, tmp_path):
    """Killed once the train job has written final/ and before Snakemake records the job: Snakemake deletes the
    job's outputs and runs it again, which restores the same bytes instead of training on."""
    reference = tiny_workflow(tmp_path / "reference", tiny)
    run_snakemake(reference, tmp_path / "reference.log")
    root = tiny_workflow(tmp_path / "wf", tiny)
    proc = start_snakemake(root, tmp_path / "killed.log")
    train_log = root / "logs" / EXPERIMENT / "train.log"
    wait_until(in_log(train_log, "final weights in"), proc, "final/ was written", timeout=900)
    kill_group(proc)
    final = root / "results" / EXPERIMENT / "train" / "final"
    written = files(final)
    assert list((root / ".snakemake" / "incomplete").iterdir()), "Snakemake had recorded the job already"

    run_snakemake(root, tmp_path / "rerun.log")
    text = train_log.read_text()
    assert "already trained (200 steps" in text and "step 201" not in text, text[-2000:]
    assert files(final) == written
    want = load_file(str(reference / "results" / EXPERIMENT / "train" / "final" / "model.safetensors"))
    got = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert table_without_timing(root / "results" / "table.csv") == \
        table_without_timing(reference / "results" / "table.csv")
