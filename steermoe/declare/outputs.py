"""Where an experiment's outputs and logs live, and the progress line its training log carries: the one place they
are named. The Snakefile's rules, training, evaluation, the table and `steermoe status` all read them from here.

    {results}/{id}/{name}_train[_{variant}].yaml, ..._test[_{variant}].yaml   the rendered configs
    {results}/{id}/train/                  checkpoints, finished/ (steermoe train)
    {results}/{id}/train/final/            model.safetensors, steermoe.json, train_summary.json
    {results}/{id}/train/rungs/rung{k}/    the same at rung k of a successive halving (train_summary.json: dev_loss)
    {results}/halving/{group}/decision{k}.json   the halving decision after rung k
    {results}/{id}/eval/                   metrics.json, predictions.jsonl, steering.json, steering.png
    {logs}/{id}/train.log, evaluate.log    one per job (train-rung{k}.log: a halving rung's training);
                                           {logs}/data/{dataset}.log, {logs}/models/{name}.log
"""
from __future__ import annotations

import re

TRAIN_DIR, FINAL, EVAL_DIR = "train", "final", "eval"  # a config run by hand: training.output_dir/{final,eval}
WEIGHTS = "model.safetensors"  # the Trainer's own name, so its resume and best-model loading find the file
META, SUMMARY = "steermoe.json", "train_summary.json"
METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.jsonl"
STEERING_FILE, STEERING_PLOT = "steering.json", "steering.png"


def folders(results: str, exp_id: str) -> dict:
    """The training, final and evaluation folders of experiment `exp_id` under `results`."""
    return {"train_dir": f"{results}/{exp_id}/{TRAIN_DIR}", "final_dir": f"{results}/{exp_id}/{TRAIN_DIR}/{FINAL}",
            "eval_dir": f"{results}/{exp_id}/{EVAL_DIR}"}


def rung_dir(train_dir: str, rung: int | str) -> str:
    """The trained folder of a training stopped at rung `rung` (1 = the first) of a successive halving."""
    return f"{train_dir}/rungs/rung{rung}"


def decision_file(results: str, group: str, rung: int | str) -> str:
    """The decision of group `group`'s successive halving after rung `rung`: which cells train on."""
    return f"{results}/halving/{group}/decision{rung}.json"


def experiment_files(results: str, name: str, variant: str | None) -> dict:
    """Every file and folder of experiment `{name}[_{variant}]` under `results`."""
    suffix = f"_{variant}" if variant else ""
    folder = f"{results}/{name}{suffix}"
    return {"train_config": f"{folder}/{name}_train{suffix}.yaml", "test_config": f"{folder}/{name}_test{suffix}.yaml",
            **folders(results, name + suffix)}


def log_file(logs: str, job: str, name: str | None = None) -> str:
    """The log of one job: 'train' or 'evaluate' of experiment `name`, 'data' or 'models' of a dataset or model
    `name`, or the one 'plan' or 'aggregate' job of the matrix."""
    if name is None:
        return f"{logs}/{job}.log"
    return f"{logs}/{name}/{job}.log" if job in ("train", "evaluate") else f"{logs}/{job}/{name}.log"


def rung_log(logs: str, name: str, rung: int | str) -> str:
    """The log of experiment `name`'s training to rung `rung` of a successive halving."""
    return f"{logs}/{name}/train-rung{rung}.log"


# ---- the progress line: `step N/M  loss 1.23  eval_loss 2.5  61s  ETA 120s` ----------------------------------
PROGRESS_LINE = re.compile(r"^step (\d+)/(\d+)  (.*)  (\d+)s(?:  ETA (\d+)s)?$")


def progress_line(step: int, total: int, values: dict, elapsed: float, eta: float | None) -> str:
    """One logging step of training: its logged values, the seconds since this run started, the ETA."""
    shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    return f"step {step}/{total}  {shown}  {elapsed:.0f}s" + (f"  ETA {eta:.0f}s" if eta is not None else "")


def parse_progress_line(line: str) -> tuple[int, int, dict, int, int | None] | None:
    """(step, total, {name: value text}, seconds, ETA seconds or None) of a progress line; None for any other."""
    match = PROGRESS_LINE.match(line.strip())
    if not match:
        return None
    eta = int(match[5]) if match[5] is not None else None
    return int(match[1]), int(match[2]), dict(re.findall(r"(\S+) (\S+)", match[3])), int(match[4]), eta
