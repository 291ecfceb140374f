"""Experiment tracking beyond TensorBoard (which is always written): MLflow or Weights & Biases, chosen by the
config's `training.report_to`. The training curves go through the Trainer's own integrations; the rendered config
and, later, the evaluation metrics join the same run, which is named after the experiment (`run_name`).

MLflow reads its usual environment (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); W&B its own (WANDB_PROJECT,
WANDB_MODE=offline on a machine without network). The evaluation finds the training's run by its name.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os

from steermoe.declare.runconfig import RunConfig
from steermoe.errors import ConfigError

PACKAGES = {"mlflow": "mlflow (pip install mlflow-skinny)", "wandb": "wandb (pip install wandb)"}


def run_name(run: RunConfig) -> str:
    """The tracker's run name: the config's run_name (the workflow writes the experiment id), else its file name."""
    return run.top.run_name or run.name


def check_tracker(run: RunConfig) -> None:
    """The tracker a config asks for is installed (checked before any weights load)."""
    tracker = run.training.report_to
    if tracker in PACKAGES and importlib.util.find_spec(tracker) is None:
        raise ConfigError(f"{run.path}: training.report_to is {tracker}, but {PACKAGES[tracker]} is not installed in "
                          f"this environment; install it, or set report_to: tensorboard")


def trainer_report_to(run: RunConfig) -> list[str]:
    """The Trainer's report_to: the tracker's integration (TensorBoard is written by steermoe.run.train itself)."""
    return [run.training.report_to] if run.training.report_to in PACKAGES else []


def _wandb_id(name: str) -> str:
    """A W&B run id derived from the run name, so that training and evaluation write to the same run."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def prepare_trainer_run(run: RunConfig) -> None:
    """Environment the Trainer's integration reads (before the Trainer is built)."""
    if run.training.report_to == "wandb":
        os.environ.setdefault("WANDB_RUN_ID", _wandb_id(run_name(run)))
        os.environ.setdefault("WANDB_RESUME", "allow")


def log_config(run: RunConfig) -> None:
    """The rendered config, as an artifact (MLflow) or a file (W&B) of the active run."""
    if run.training.report_to == "mlflow":
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_artifact(str(run.path), artifact_path="config")
    elif run.training.report_to == "wandb":
        import wandb

        if wandb.run is not None:
            wandb.save(str(run.path), policy="now")


def log_evaluation(run: RunConfig, result: dict) -> None:
    """The headline metric, its CI and the test config into the experiment's run (the training's, found by name)."""
    values = {f"eval/{result['metric']}": result["value"], f"eval/{result['metric']}_ci_low": result["ci95"][0],
              f"eval/{result['metric']}_ci_high": result["ci95"][1], "eval/utterances": result["utterances"]}
    name = run_name(run)
    if run.training.report_to == "mlflow":
        import mlflow

        experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default"))
        found = mlflow.search_runs(experiment_ids=[experiment.experiment_id] if experiment else None,
                                   filter_string=f"tags.mlflow.runName = '{name}'", output_format="list",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        with mlflow.start_run(run_id=found[0].info.run_id if found else None, run_name=None if found else name):
            mlflow.log_metrics(values)
            mlflow.log_artifact(str(run.path), artifact_path="config")
    elif run.training.report_to == "wandb":
        import wandb

        with wandb.init(name=name, id=_wandb_id(name), resume="allow") as tracked:
            tracked.log(values)
            tracked.save(str(run.path), policy="now")
