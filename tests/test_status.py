"""`steermoe status`: the state of every experiment, read from the files its jobs write."""
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from steermoe.report.status import experiment_line, read_progress, status
from tests.test_aggregate import BASE, BASE_ERRORS, BETTER, FAILED, NOT_RUN, experiment, write_evaluated, write_log

REPO = Path(__file__).resolve().parent.parent
TRAINING = "layer_wise_running"

LOG = """parquet_dirs: 32 of 32 rows kept
step 80/1680  loss 3.1  grad_norm 0.5  learning_rate 0.01  epoch 0.1  70s  ETA 1400s
step 160/1680  loss 2.4  grad_norm 0.4  learning_rate 0.01  epoch 0.2  140s  ETA 1330s
step 160/1680  eval_loss 2.6  eval_runtime 3.1  epoch 0.2  143s  ETA 1358s
resuming
step 240/1680  loss 2.0  grad_norm 0.3  learning_rate 0.01  epoch 0.3  50s  ETA 900s
step 320/1680  loss 1.8  grad_norm 0.3  learning_rate 0.01  epoch 0.4  110s  ETA 1020s
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_progress_is_read_from_the_train_logs_step_lines_and_a_resumed_run_has_its_own_clock(tmp_path):
    (tmp_path / "train.log").write_text(LOG)
    progress = read_progress(tmp_path / "train.log")
    assert (progress.step, progress.total, progress.loss, progress.dev_loss) == (320, 1680, 1.8, 2.6)
    # the resumed run's last line: ETA 1020 s for 1360 steps, 0.75 s per step (not the first run's 0.875)
    assert progress.seconds_per_step == pytest.approx(0.75) and progress.seconds == 110


def test_the_first_logged_step_already_gives_an_eta(tmp_path):
    # a training logs no line at step 0, so its first line is the only one for a while
    (tmp_path / "train.log").write_text(LOG.splitlines()[1] + "\n")
    progress = read_progress(tmp_path / "train.log")
    assert progress.step == 80 and progress.seconds_per_step == pytest.approx(1400 / 1600)


def test_each_experiment_gets_its_state_eta_losses_metric_and_log(workdir):
    write_evaluated(BASE, BASE_ERRORS)
    write_log(FAILED, "train", "Traceback ...\nsteermoe: error: results/x_train.yaml: unknown key 'seed2'\n")
    write_log(TRAINING, "train", LOG)
    stalled = "layer_wise_stalled"
    write_log(stalled, "train", LOG)
    old = time.time() - 3600
    os.utime(Path("logs") / stalled / "train.log", (old, old))
    lines = {x["experiment"]: x for x in (experiment_line(experiment(e, "layer_wise"), Path("results"), Path("logs"))
                                           for e in (BASE, FAILED, TRAINING, stalled, NOT_RUN))}
    assert lines[BASE]["state"] == "done" and lines[BASE]["metric"].startswith("wer 0.")
    assert lines[FAILED]["state"] == "failed" and "unknown key 'seed2'" in lines[FAILED]["metric"]
    assert lines[FAILED]["log"] == f"logs/{FAILED}/train.log"
    running = lines[TRAINING]
    assert (running["state"], running["step"], running["total"]) == ("training", 320, 1680)
    assert running["eta"] == pytest.approx(0.75 * (1680 - 320)) and running["dev_loss"] == 2.6
    assert lines[stalled]["state"].startswith("stalled 1h0") and lines[stalled]["eta"] is None
    assert lines[NOT_RUN]["state"] == "pending" and lines[NOT_RUN]["step"] is None
    table = status([experiment(e, "layer_wise") for e in (BASE, TRAINING, NOT_RUN)], Path("results"), Path("logs"))
    assert f"{TRAINING}" in table and "320/1680" in table and "17m00s" in table  # the ETA, 1020 s
    assert table.splitlines()[-1] == "1 done, 1 training, 1 pending"


def test_data_still_being_prepared_is_preparing_and_a_failed_preparation_is_failed(workdir):
    waiting, broken = (replace(experiment(e, "layer_wise", dataset=d), data_dir=f"data/{d}")
                       for e, d in ((BASE, "synth-en"), (BETTER, "synth-zh")))
    write_log("data", "synth-en", "synth-en speech:  13%|#         | 345/2700 [00:37<03:56,  9.95utt/s]\n")
    write_log("data", "synth-zh", "steermoe: error: espeak-ng has no voice cmn-latn-pinyin\n")
    preparing, failed = (experiment_line(e, Path("results"), Path("logs")) for e in (waiting, broken))
    assert (preparing["state"], preparing["log"], preparing["metric"]) == ("preparing", "logs/data/synth-en.log", "")
    assert failed["state"] == "failed" and "no voice cmn-latn-pinyin" in failed["metric"]


def test_a_reference_row_being_decoded_is_evaluating_not_preparing_or_failed(workdir):
    reference = experiment("reference_whisper-tiny.en_own_synth-en", "reference")
    write_log(reference.id, "evaluate", "decoded 160/200 utterances  123s\n")
    line = experiment_line(reference, Path("results"), Path("logs"))
    assert (line["state"], line["log"]) == ("evaluating", f"logs/{reference.id}/evaluate.log")
    write_log(reference.id, "evaluate", "steermoe: error: models/whisper-tiny.en is not there\n")
    assert experiment_line(reference, Path("results"), Path("logs"))["state"] == "failed"


def test_an_evaluation_variant_shows_the_training_it_shares(workdir):
    write_log(TRAINING, "train", LOG)
    line = experiment_line(replace(experiment(f"{TRAINING}_protocoloriginal", "layer_wise"), trained_by=TRAINING),
                           Path("results"), Path("logs"))
    assert (line["state"], line["step"]) == ("training", 320)


def test_the_status_command_reads_the_matrix_while_nothing_has_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "steermoe.cli", "status", "--results", str(tmp_path / "results"),
                           "--logs", str(tmp_path / "logs")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("experiment") and "ETA" in lines[0]
    assert all(" pending " in line for line in lines[1:-1]) and lines[-1].endswith(" pending")
    assert BETTER not in proc.stdout  # the repository's own matrix, not the test's


def test_a_watch_interval_that_is_not_positive_is_one_clear_error():
    proc = subprocess.run([sys.executable, "-m", "steermoe.cli", "status", "--watch", "0"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--watch: the redraw interval must be a positive number of seconds, got 0" in proc.stderr
