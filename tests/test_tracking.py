"""Tracking beyond TensorBoard: a run tracked to a local MLflow store holds the training curves, the rendered config
and the evaluation metrics, under the experiment's name."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import write_config

REPO = Path(__file__).resolve().parent.parent


def steermoe(*args, env):
    return subprocess.run([sys.executable, "-m", "steermoe.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=900)


def test_training_and_evaluation_are_tracked_in_one_mlflow_run_named_after_the_experiment(tiny, tmp_path):
    import mlflow

    store = tmp_path / "mlruns"
    env = {"MLFLOW_TRACKING_URI": store.as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_EXPERIMENT_NAME": "steermoe-test"}
    sections = {"training": {"report_to": "mlflow", "max_steps": 4}, "run_name": "layer_wise_tiny_tones"}
    train = write_config(tmp_path, tiny, **sections)
    test = write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test", **sections)
    for command, config in (("train", train), ("evaluate", test)):
        proc = steermoe(command, "--config", config, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]

    mlflow.set_tracking_uri(store.as_uri())
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    experiment = mlflow.get_experiment_by_name("steermoe-test")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    assert [r.info.run_name for r in runs] == ["layer_wise_tiny_tones"]  # one run: training's, joined by evaluation
    metrics = runs[0].data.metrics
    assert "loss" in metrics and "eval/wer" in metrics
    assert metrics["eval/wer_ci_low"] <= metrics["eval/wer"] <= metrics["eval/wer_ci_high"]
    client = mlflow.MlflowClient()
    assert client.get_metric_history(runs[0].info.run_id, "loss")[-1].step == 4
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "config")}
    assert artifacts == {f"config/{train.name}", f"config/{test.name}"}


def test_a_tracker_that_is_not_installed_is_named_before_any_weights_load(tiny, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = write_config(tmp_path, tiny, training={"report_to": "wandb"})
    proc = steermoe("check", config, env={})
    assert proc.returncode == 2
    assert f"{config}: training.report_to is wandb, but wandb (pip install wandb) is not installed" in proc.stderr
