"""One experiment's results and status, read from the files its jobs wrote (torch-free).

Per experiment `{exp}` (paths relative to the workflow root):
    results/{exp}/eval/metrics.json            the headline metric with counts and CI (steermoe evaluate)
    results/{exp}/eval/predictions.jsonl       per-utterance errors / reference units, matched by id for comparisons
    results/{exp}/eval/steering.json           router usage per layer (experiments with steering)
    results/{exp}/train/final/train_summary.json and steermoe.json   (steermoe train)
    the rendered train/test configs            (hashed; the test config's hash is also in metrics.json)
    logs/{exp}/train.log, logs/{exp}/evaluate.log   where a failure says why

Status of an experiment:
    ok                   metrics.json is there and was computed with the current rendered configs
    stale                metrics.json is there (its values are kept) but a rendered config changed since, the
                         trained model is gone, or the matrix asks for another metric: re-run the workflow
    failed at model import / data preparation
                         training never started because a step it needs failed; that step's log says why
    failed at train      no trained model; the train log says why
    failed at evaluate   trained, but no metrics; the evaluate log says why
    not run              nothing yet (or trained and not evaluated yet)
    invalid results      a results file is malformed; the error names the file
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from steermoe.declare.experiments import Experiment
from steermoe.declare.outputs import META, METRICS_FILE, PREDICTIONS_FILE, STEERING_FILE, SUMMARY, folders, log_file
from steermoe.declare.settings import METRICS
from steermoe.errors import DataError
from steermoe.fsutil import sha256_file

# what an older steermoe wrote into metrics.json -> today's name
OLD_NAMES = {"exact_match": "qa_accuracy", "reference_words": "reference_units",
             "reference_characters": "reference_units"}
OLD_VALUES = {"protocol": ("seed", "original")}  # a field's value an older steermoe wrote -> today's
ERROR_PREFIX = "steermoe: error:"
OK, STALE = "ok", "stale"
FAILED_TRAIN, FAILED_EVAL, NOT_RUN, INVALID = "failed at train", "failed at evaluate", "not run", "invalid results"
FAILED_IMPORT, FAILED_DATA = "failed at model import", "failed at data preparation"


class MalformedFile(DataError):
    """A results file that cannot be read; the message names it."""


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise MalformedFile(f"{path}: not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise MalformedFile(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    if not isinstance(value, dict):
        raise MalformedFile(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_predictions(path: Path) -> list[dict]:
    """predictions.jsonl: one object per utterance with id, errors and reference_units."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MalformedFile(f"{path}: not UTF-8 text ({err.reason})") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise MalformedFile(f"{path}: line {number} is not valid JSON ({err.msg})") from err
        missing = [k for k in ("id", "errors", "reference_units") if not isinstance(item, dict) or k not in item]
        if missing:
            raise MalformedFile(f"{path}: line {number} lacks {', '.join(missing)}")
        items.append(item)
    return items


def log_error(path: Path) -> str | None:
    """The reason a step failed: the last `steermoe: error:` line, else the last traceback's exception line,
    else the last non-empty line. None when the log does not exist."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    message, in_traceback = None, False
    for line in lines:
        if line.startswith(ERROR_PREFIX):
            message, in_traceback = line[len(ERROR_PREFIX):].strip(), False
        elif line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and line.strip() and not line[0].isspace():
            # the first unindented line after the frames is the exception ("ValueError: ..."); a chained
            # traceback starts another block, and the last block's exception wins
            message, in_traceback = line.strip(), False
    if message is None:
        message = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return message or "the log is empty"


@dataclass
class ExperimentResult:
    id: str
    status: str
    error: str = ""
    log: str = ""
    metrics: dict | None = None
    predictions_path: Path | None = None
    summary: dict | None = None  # train_summary.json
    steering: dict | None = None
    config_sha256: str = ""
    train_config_sha256: str = ""
    test_set: str = ""


def _file_sha(path) -> str:
    return sha256_file(Path(path)) if path and Path(path).is_file() else ""


def _test_set(exp: Experiment, test_config: Path | None) -> str:
    """`{dataset}/{split}`: the prepared split(s) the experiment is scored on (`+` joins several), from the
    experiment, else from the rendered test config's parquet_dirs."""
    files = (exp.parquet or {}).get("test")
    if files:  # matrix.Experiment: its test set's parquet files
        return f"{exp.dataset}/{'+'.join(Path(f).stem for f in files)}"
    if test_config is not None and test_config.is_file():
        try:
            import yaml

            dirs = (yaml.safe_load(test_config.read_text(encoding="utf-8")) or {}).get("parquet_dirs") or []
            dirs = [dirs] if isinstance(dirs, str) else dirs
            names = [Path(str(d).rstrip("/")).stem for d in dirs]
            if names:
                return f"{exp.dataset}/{'+'.join(names)}"
        except Exception:  # a test config we cannot read is no reason to lose the row
            pass
    return f"{exp.dataset}/test"


def collect(exp: Experiment, results: Path, logs: Path, root: Path | None = None,
            trained: Path | None = None) -> ExperimentResult:
    """Everything known about one experiment; never raises for a missing or broken experiment. `trained`: the
    folder its model is in when not its final one (a halving rung's)."""
    root = Path(root) if root is not None else Path(".")
    exp_id = str(exp.id)
    folder = Path(results) / exp_id
    trainer = str(exp.trained_by or exp_id)  # the experiment whose training this one evaluates
    has_training = exp.trains
    train_log, eval_log = Path(log_file(logs, "train", trainer)), Path(log_file(logs, "evaluate", exp_id))

    def rendered(key: str, suffix: str) -> Path | None:
        value = getattr(exp, key)
        if value:
            return root / value
        found = sorted(folder.glob(f"*_{suffix}*.yaml")) if folder.is_dir() else []
        return found[0] if found else None

    train_config, test_config = rendered("train_config", "train"), rendered("test_config", "test")
    out = ExperimentResult(id=exp_id, status=NOT_RUN, test_set=_test_set(exp, test_config),
                           train_config_sha256=_file_sha(train_config))
    evaluated = Path(folders(results, exp_id)["eval_dir"])
    final = Path(trained or folders(results, trainer)["final_dir"])
    metrics_path, predictions_path = evaluated / METRICS_FILE, evaluated / PREDICTIONS_FILE
    steering_path = evaluated / STEERING_FILE
    summary_path, meta_path = final / SUMMARY, final / META
    try:
        if summary_path.is_file():
            out.summary = read_json(summary_path)
        meta = read_json(meta_path) if meta_path.is_file() else None
        if metrics_path.is_file():
            out.metrics = read_json(metrics_path)
            _check_metrics(out.metrics, metrics_path)
            if not predictions_path.is_file():
                raise MalformedFile(f"{predictions_path}: missing beside {metrics_path.name} (evaluation writes both)")
            out.predictions_path = predictions_path
            if steering_path.is_file():
                out.steering = read_json(steering_path)
    except MalformedFile as err:
        out.status, out.error = INVALID, str(err)
        out.metrics = out.summary = out.steering = out.predictions_path = None
        return out

    if out.metrics is not None:
        out.status, out.log = OK, str(eval_log) if eval_log.is_file() else ""
        out.config_sha256 = str(out.metrics.get("config_sha256") or "")
        if out.summary is None:  # the model these metrics came from is gone: training was re-run (and failed?)
            message = log_error(train_log)
            if message is not None and train_log.stat().st_mtime >= metrics_path.stat().st_mtime:
                out.status, out.error, out.log = FAILED_TRAIN, message, str(train_log)
                out.error += f" (the metrics in {metrics_path} are from an earlier model)"
                out.metrics = out.steering = out.predictions_path = None
                return out
        stale = [f"{summary_path.parent} is missing"] if out.summary is None and has_training else []
        current_test = _file_sha(test_config)
        if current_test and out.config_sha256 and current_test != out.config_sha256:
            stale.append(f"{test_config} changed since evaluation")
        trained_with = (meta or {}).get("config_sha256")
        if out.train_config_sha256 and trained_with and trained_with != out.train_config_sha256:
            stale.append(f"{train_config} changed since training")
        wanted, got = exp.metric, out.metrics["metric"]
        if wanted and got != wanted:
            stale.append(f"the matrix asks for {wanted} but {metrics_path} holds {got}")
        if stale:
            out.status, out.error = STALE, "; ".join(stale) + ": re-run the workflow"
        return out
    if out.summary is not None or not has_training:  # trained (or nothing to train), not evaluated
        message = log_error(eval_log)
        if message is not None:
            out.status, out.error, out.log = FAILED_EVAL, message, str(eval_log)
        elif (upstream := _upstream_failure(exp, Path(logs), root)) is not None:  # its test set's data (or a
            out.status, out.error, out.log = upstream                             # reference row's model import)
        else:
            out.status, out.error = NOT_RUN, "trained; not evaluated yet" if has_training else "not evaluated yet"
        return out
    message = log_error(train_log)
    if message is not None:
        out.status, out.error, out.log = FAILED_TRAIN, message, str(train_log)
        return out
    upstream = _upstream_failure(exp, Path(logs), root)
    if upstream is not None:
        out.status, out.error, out.log = upstream
    elif folder.is_dir() and any(folder.rglob("*")):
        out.error = f"{folder} holds no trained model and there is no {train_log}"
    return out


def _upstream_failure(exp: Experiment, logs: Path, root: Path) -> tuple[str, str, str] | None:
    """Why training never started: a failed model import or data preparation (their logs exist and their outputs
    do not). None when nothing upstream failed (the experiment simply has not run yet)."""
    checks = []
    for entry in (exp.encoder_entry or {}, exp.decoder_entry or {}):
        if entry.get("embedded") and entry.get("path"):
            checks.append((FAILED_IMPORT, root / entry["path"] / "config.json",
                           Path(log_file(logs, "models", entry["embedded"]))))
    if exp.data_dir:
        checks.append((FAILED_DATA, root / exp.data_dir / "manifest.json",
                       Path(log_file(logs, "data", exp.dataset))))
    test_data = exp.test_data
    if test_data and Path(test_data).parent != Path(exp.data_dir or ""):  # a test set of its own
        checks.append((FAILED_DATA, root / test_data, Path(log_file(logs, "data", Path(test_data).parent.name))))
    for status, output, log in checks:
        if not output.exists():
            message = log_error(log)
            if message is not None:
                return status, message, str(log)
    return None


def _check_metrics(metrics: dict, path: Path) -> None:
    metric = metrics.get("metric")
    changes = [f"{key} is now {OLD_NAMES[key]}" for key in sorted(OLD_NAMES) if key in metrics or metric == key]
    changes += [f"{key} {value} is now {new}" for key, (value, new) in OLD_VALUES.items() if metrics.get(key) == value]
    if changes:
        raise MalformedFile(f"{path}: written by an older steermoe ({', '.join(changes)}); evaluate again (remove "
                            f"{path.parent} and re-run the workflow)")
    if metric not in METRICS:
        raise MalformedFile(f"{path}: 'metric' is {metric!r}, expected one of {', '.join(METRICS)}")
    for key in ("value", "ci95", "utterances", "reference_units"):
        if key not in metrics:
            raise MalformedFile(f"{path}: missing '{key}'")
    if metric == "wer" and metrics.get("protocol", "honest") == "honest" and not isinstance(metrics.get("raw"), dict):
        raise MalformedFile(f"{path}: missing 'raw' (the raw WER)")

