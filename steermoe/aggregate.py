"""Aggregation: every experiment of the matrix into one honest table, paired comparisons, and plots.

Inputs, per experiment `{exp}` (paths relative to the workflow root):
    results/{exp}/eval/metrics.json            the headline metric with counts and CI (steermoe evaluate)
    results/{exp}/eval/predictions.jsonl       per-utterance errors / reference units, matched by id for comparisons
    results/{exp}/eval/steering.json           router usage per layer (experiments with steering)
    results/{exp}/train/final/train_summary.json and steermoe.json   (steermoe train)
    the rendered train/test configs            (hashed; the test config's hash is also in metrics.json)
    logs/{exp}/train.log, logs/{exp}/evaluate.log   where a failure says why

Outputs (each written atomically, after everything was computed, table.csv last):
    table.csv          one row per experiment x test set x metric; failed and not-run experiments are rows too
    comparisons.csv    per group with a baseline: each other experiment vs the baseline, paired bootstrap (only
                       between ok experiments; otherwise the row says why not)
    plots/metrics.png, plots/steering_gates.png, plots/training_curves.png

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

A failed / not-run / invalid experiment gets one row (its headline metric) with status and error; an ok experiment
gets one row per metric: English `wer` (Whisper-normalised, headline) and `wer_raw`; Chinese `cer`; QA
`qa_accuracy` (normalised exact match, headline), `qa_yes_no` (yes/no subset) and `qa_lenient_substring` (the
original code's lenient substring score, reported only as such).

Rows follow the matrix order and numbers have fixed formats, so two runs from scratch on machines that agree on
the precision columns (precision, weights_dtype, device, device_model; the CPU class decides the precision) give
byte-identical tables apart from the timing columns (train_seconds, eval_seconds, rtf).
"""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from steermoe.errors import DataError
from steermoe.fsutil import sha256_file, write_atomic

HEADLINE = {"wer": "wer", "cer": "cer", "qa_accuracy": "qa_accuracy", "exact_match": "qa_accuracy"}
NOTES = {
    "wer": "word error rate after Whisper English normalisation",
    "wer_raw": "word error rate on the raw text (case and punctuation count)",
    "cer": "character error rate (punctuation and spaces removed, full-width and case folded)",
    "qa_accuracy": "normalised exact match against the majority answer (a tie: the first listed)",
    "qa_yes_no": "normalised exact match against the majority answer, yes/no questions only",
    "qa_any_annotator": "normalised exact match against any annotator's answer (not an accuracy)",
    "qa_lenient_substring": "the original code's lenient substring score (not an accuracy)",
}
SEED_PROTOCOL_NOTES = {  # the same metric names, computed as the original code did (steermoe/protocols.py)
    "wer": "seed protocol: raw word error rate, no normalisation, 5 % subset, mean over sampling seeds",
    "cer": "seed protocol: raw character error rate, no normalisation, 5 % subset, mean over sampling seeds",
    "qa_accuracy": "seed protocol: lenient substring match, one row per annotator, 5 % subset, mean over sampling "
                   "seeds (not an accuracy)",
}
LOWER_IS_BETTER = {"wer": True, "wer_raw": True, "cer": True, "qa_accuracy": False, "qa_yes_no": False,
                   "qa_any_annotator": False, "qa_lenient_substring": False}
TIMING_COLUMNS = ("train_seconds", "eval_seconds", "rtf")
# how the model was trained (train_summary.json; metrics.json for an untrained model): tables from scratch match
# only between runs that agree on these (steermoe/precision.py)
PRECISION_COLUMNS = ("precision", "weights_dtype", "device", "device_model", "cpu_flags")
ERROR_PREFIX = "steermoe: error:"
OK, STALE = "ok", "stale"
FAILED_TRAIN, FAILED_EVAL, NOT_RUN, INVALID = "failed at train", "failed at evaluate", "not run", "invalid results"
FAILED_IMPORT, FAILED_DATA = "failed at model import", "failed at data preparation"

COMPARISON_COLUMNS = ["group", "baseline", "experiment", "test_set", "metric", "direction", "baseline_value", "value",
                      "delta", "ci_low", "ci_high", "p_value", "significant", "verdict", "utterances", "resamples",
                      "status", "error"]


def table_columns(override_columns: list[str]) -> list[str]:
    return ["experiment", "method", "encoder", "decoder", "dataset", "recipe", "group", "baseline", "tags",
            *override_columns,
            "test_set", "protocol", "metric", "headline", "value", "ci_low", "ci_high", "substitutions", "deletions",
            "insertions", "correct", "reference_units", "utterances", "trainable_parameters", "train_steps",
            "train_seconds", "eval_seconds", "rtf", "precision", "weights_dtype", "device", "device_model",
            "cpu_flags", "config_sha256", "train_config_sha256", "git_commit", "status",
            "error", "log", "note"]


# ---------------------------------------------------------------- reading one experiment

def get_field(exp, key: str, default=None):
    """Experiments are matrix.Experiment objects or plain dicts (tests build them directly)."""
    if isinstance(exp, dict):
        return exp.get(key, default)
    return getattr(exp, key, default)


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


def _test_set(exp, test_config: Path | None) -> str:
    """The test split's name: the experiment's own, else from the rendered test config's parquet_dirs."""
    explicit = get_field(exp, "test_set")
    if explicit:
        return str(explicit)
    files = (get_field(exp, "parquet") or {}).get("test")
    if files:  # matrix.Experiment: the test split's parquet files
        return f"{get_field(exp, 'dataset')}/{'+'.join(Path(f).stem for f in files)}"
    if test_config is not None and test_config.is_file():
        try:
            import yaml

            dirs = (yaml.safe_load(test_config.read_text(encoding="utf-8")) or {}).get("parquet_dirs") or []
            dirs = [dirs] if isinstance(dirs, str) else dirs
            names = [Path(str(d).rstrip("/")).stem for d in dirs]
            if names:
                return f"{get_field(exp, 'dataset')}/{'+'.join(names)}"
        except Exception:  # a test config we cannot read is no reason to lose the row
            pass
    return f"{get_field(exp, 'dataset')}/test"


def collect(exp, results: Path, logs: Path, root: Path | None = None) -> ExperimentResult:
    """Everything known about one experiment; never raises for a missing or broken experiment."""
    root = Path(root) if root is not None else Path(".")
    exp_id = str(get_field(exp, "id"))
    folder = Path(results) / exp_id
    trainer = str(get_field(exp, "trained_by") or exp_id)  # the experiment whose training this one evaluates
    train_log, eval_log = Path(logs) / trainer / "train.log", Path(logs) / exp_id / "evaluate.log"

    def rendered(key: str, suffix: str) -> Path | None:
        value = get_field(exp, key)
        if value:
            return root / value
        found = sorted(folder.glob(f"*_{suffix}*.yaml")) if folder.is_dir() else []
        return found[0] if found else None

    train_config, test_config = rendered("train_config", "train"), rendered("test_config", "test")
    out = ExperimentResult(id=exp_id, status=NOT_RUN, test_set=_test_set(exp, test_config),
                           train_config_sha256=_file_sha(train_config))
    metrics_path = folder / "eval" / "metrics.json"
    predictions_path = folder / "eval" / "predictions.jsonl"
    summary_path = Path(results) / trainer / "train" / "final" / "train_summary.json"
    meta_path = Path(results) / trainer / "train" / "final" / "steermoe.json"
    steering_path = folder / "eval" / "steering.json"
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
        stale = [f"{summary_path.parent} is missing"] if out.summary is None else []
        current_test = _file_sha(test_config)
        if current_test and out.config_sha256 and current_test != out.config_sha256:
            stale.append(f"{test_config} changed since evaluation")
        trained_with = (meta or {}).get("config_sha256")
        if out.train_config_sha256 and trained_with and trained_with != out.train_config_sha256:
            stale.append(f"{train_config} changed since training")
        wanted = HEADLINE.get(str(get_field(exp, "metric") or ""), None)
        got = HEADLINE.get(out.metrics["metric"])
        if wanted and got != wanted:
            stale.append(f"the matrix asks for {wanted} but {metrics_path} holds {got}")
        if stale:
            out.status, out.error = STALE, "; ".join(stale) + ": re-run the workflow"
        return out
    if out.summary is not None:  # trained, not evaluated
        message = log_error(eval_log)
        if message is None:
            out.status, out.error = NOT_RUN, "trained; not evaluated yet"
        else:
            out.status, out.error, out.log = FAILED_EVAL, message, str(eval_log)
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


def _upstream_failure(exp, logs: Path, root: Path) -> tuple[str, str, str] | None:
    """Why training never started: a failed model import or data preparation (their logs exist and their outputs
    do not). None when nothing upstream failed (the experiment simply has not run yet)."""
    checks = []
    for entry in (get_field(exp, "encoder_entry") or {}, get_field(exp, "decoder_entry") or {}):
        if entry.get("embedded") and entry.get("path"):
            checks.append((FAILED_IMPORT, root / entry["path"] / "config.json",
                           logs / "models" / f"{entry['embedded']}.log"))
    if get_field(exp, "data_dir"):
        checks.append((FAILED_DATA, root / get_field(exp, "data_dir") / "manifest.json",
                       logs / "data" / f"{get_field(exp, 'dataset')}.log"))
    for status, output, log in checks:
        if not output.exists():
            message = log_error(log)
            if message is not None:
                return status, message, str(log)
    return None


def _check_metrics(metrics: dict, path: Path) -> None:
    metric = metrics.get("metric")
    if metric not in HEADLINE:
        raise MalformedFile(f"{path}: 'metric' is {metric!r}, expected one of wer, cer, exact_match")
    for key in ("value", "ci95", "utterances"):
        if key not in metrics:
            raise MalformedFile(f"{path}: missing '{key}'")
    if metric == "wer" and metrics.get("protocol", "honest") == "honest" and not isinstance(metrics.get("raw"), dict):
        raise MalformedFile(f"{path}: missing 'raw' (the raw WER)")


# ---------------------------------------------------------------- table rows

def _fmt(value, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000000"
    return str(value)


def _ci(block: dict) -> tuple:
    ci = block.get("ci95") or (None, None)
    return ci[0], ci[1]


def _metric_blocks(metrics: dict) -> list[tuple[str, dict]]:
    """(table metric name, counts) for every metric row of an evaluated experiment."""
    name = HEADLINE[metrics["metric"]]
    utterances = metrics.get("utterances")
    if metrics.get("protocol") == "seed":  # one number, as the original code computed it
        units = metrics.get("reference_units") if name != "qa_accuracy" else utterances
        return [(name, {**metrics, "reference_units": units})]
    if name in ("wer", "cer"):
        units = metrics.get("reference_words", metrics.get("reference_characters"))
        rows = [(name, {**metrics, "reference_units": units})]
        if name == "wer":
            raw = metrics["raw"]
            rows.append(("wer_raw", {**raw, "utterances": utterances,
                                     "reference_units": raw.get("reference_words")}))
        return rows
    out = [("qa_accuracy", {**metrics, "reference_units": utterances})]
    for key, label in (("yes_no", "qa_yes_no"), ("any_annotator", "qa_any_annotator"),
                       ("lenient_substring", "qa_lenient_substring")):
        block = metrics.get(key) or {"value": None, "ci95": None, "correct": 0, "utterances": 0}
        out.append((label, {**block, "reference_units": block.get("utterances")}))
    return out


def _protocol(exp, result: ExperimentResult) -> str:
    """The evaluation protocol: as evaluated, else as configured."""
    return (result.metrics or {}).get("protocol") or (get_field(exp, "settings") or {}).get("protocol") or "honest"


def _trainable(result: ExperimentResult):
    if result.metrics and result.metrics.get("trainable_parameters") is not None:
        return int(result.metrics["trainable_parameters"])
    counts = (result.summary or {}).get("trainable_parameters")
    if isinstance(counts, dict):
        return int(sum(counts.values()))
    return counts


def table_rows(experiments: list, results: dict[str, ExperimentResult], override_columns: list[str],
               git_commit: str) -> list[dict]:
    rows = []
    for exp in experiments:
        r = results[str(get_field(exp, "id"))]
        overrides = get_field(exp, "overrides") or {}
        base = {"experiment": r.id, "method": get_field(exp, "method"), "encoder": get_field(exp, "encoder"),
                "decoder": get_field(exp, "decoder"), "dataset": get_field(exp, "dataset"), "recipe": get_field(exp, "recipe") or "",
                "group": get_field(exp, "group") or "",
                "baseline": bool(get_field(exp, "baseline")), "tags": ",".join(get_field(exp, "tags") or []),
                **{c: overrides.get(c, "") for c in override_columns},
                "test_set": r.test_set, "protocol": _protocol(exp, r), "trainable_parameters": _trainable(r),
                "train_steps": (r.summary or {}).get("steps"),
                "train_seconds": (r.summary or {}).get("train_seconds_this_run"),
                **{c: (r.summary or r.metrics or {}).get(c) for c in PRECISION_COLUMNS},
                "config_sha256": r.config_sha256, "train_config_sha256": r.train_config_sha256,
                "git_commit": git_commit, "status": r.status, "error": r.error, "log": r.log}
        if r.metrics is None:
            headline = HEADLINE.get(str(get_field(exp, "metric") or ""), str(get_field(exp, "metric") or ""))
            rows.append({**base, "metric": headline, "headline": True, "note": NOTES.get(headline, "")})
            continue
        for name, block in _metric_blocks(r.metrics):
            low, high = _ci(block)
            rows.append({**base, "metric": name, "headline": name == HEADLINE[r.metrics["metric"]],
                         "value": block.get("value"), "ci_low": low, "ci_high": high,
                         "substitutions": block.get("substitutions"), "deletions": block.get("deletions"),
                         "insertions": block.get("insertions"), "correct": block.get("correct"),
                         "reference_units": block.get("reference_units"), "utterances": block.get("utterances"),
                         "eval_seconds": r.metrics.get("decode_seconds"), "rtf": r.metrics.get("rtf"),
                         "note": (SEED_PROTOCOL_NOTES if base["protocol"] == "seed" else NOTES)[name]})
    return rows


def _digits(column: str) -> int:
    return {"train_seconds": 1, "eval_seconds": 2, "rtf": 4}.get(column, 6)


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c), _digits(c)) for c in columns])
    return buffer.getvalue()


# ---------------------------------------------------------------- paired comparisons

def _paired(baseline_path: Path, other_path: Path) -> tuple[list[dict], list[dict]]:
    """Per-utterance errors of both systems in the same utterance order; the ids and each id's reference (and QA
    answers) must be equal."""
    def by_id(path):
        items = read_predictions(path)
        table = {}
        for item in items:
            if item["id"] in table:
                raise MalformedFile(f"{path}: utterance id {item['id']!r} appears twice")
            table[item["id"]] = item
        return [item["id"] for item in items], table

    order, a = by_id(baseline_path)
    _, b = by_id(other_path)
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise DataError(f"{other_path} and {baseline_path} were not decoded on the same test utterances: "
                        f"{len(only_b)} ids only in the first (e.g. {only_b[:3]}), {len(only_a)} only in the "
                        f"second (e.g. {only_a[:3]})")
    differ = [i for i in order if (a[i].get("reference"), a[i].get("answers")) != (b[i].get("reference"),
                                                                                  b[i].get("answers"))]
    if differ:
        first = differ[0]
        raise DataError(f"{other_path} and {baseline_path} were scored against different references for "
                        f"{len(differ)} of {len(order)} utterances (e.g. {first!r}: {b[first].get('reference')!r} "
                        f"against {a[first].get('reference')!r}): not the same test set")
    units = ("errors", "reference_units")
    return [{k: a[i][k] for k in units} for i in order], [{k: b[i][k] for k in units} for i in order]


def comparison_rows(experiments: list, results: dict[str, ExperimentResult], seed: int = 0,
                    resamples: int = 1000) -> list[dict]:
    """Every non-baseline experiment of a group against the group's baseline, paired on the same utterances.

    delta = value - baseline value in the headline metric's own units (WER/CER: negative is better; QA accuracy:
    positive is better); ci_low/ci_high: 95 % paired-bootstrap interval of delta; significant: the interval
    excludes zero. The bootstrap runs on per-utterance errors (QA: 0/1 per question, one unit each).
    """
    from steermoe.metrics import paired_bootstrap

    groups: dict[str, list] = {}
    for exp in experiments:
        if get_field(exp, "group"):
            groups.setdefault(str(get_field(exp, "group")), []).append(exp)
    rows = []
    for group, members in groups.items():  # dicts keep matrix order
        baselines = [e for e in members if get_field(e, "baseline")]
        if not baselines:
            continue
        base_exp = baselines[0]
        base = results[str(get_field(base_exp, "id"))]
        for exp in members:
            if exp is base_exp:
                continue
            r = results[str(get_field(exp, "id"))]
            metric = HEADLINE.get(str(get_field(exp, "metric") or ""), str(get_field(exp, "metric") or ""))
            row = {"group": group, "baseline": base.id, "experiment": r.id, "test_set": r.test_set, "metric": metric,
                   "direction": "lower is better" if LOWER_IS_BETTER.get(metric, True) else "higher is better",
                   "resamples": resamples}
            if len(baselines) > 1:
                row.update(status="error", error=f"group {group!r} has {len(baselines)} baselines "
                                                 f"({', '.join(str(get_field(e, 'id')) for e in baselines)}); mark one")
            elif base.status != OK:
                row.update(status="baseline not available", error=f"baseline {base.id}: {base.status}"
                                                                  + (f" ({base.error})" if base.error else ""))
            elif r.status != OK:
                row.update(status="not available", error=f"{r.status}" + (f": {r.error}" if r.error else ""))
            elif _protocol(exp, r) != _protocol(base_exp, base):
                row.update(status="error", error=f"{r.id} is evaluated under the {_protocol(exp, r)} protocol, the "
                                                 f"baseline {base.id} under {_protocol(base_exp, base)}")
            elif r.test_set != base.test_set:
                row.update(status="error", error=f"{r.id} is scored on {r.test_set}, the baseline {base.id} on "
                                                 f"{base.test_set}: a paired comparison needs the same test set")
            elif HEADLINE[r.metrics["metric"]] != HEADLINE[base.metrics["metric"]]:
                row.update(status="error", error=f"{r.id} is scored with {HEADLINE[r.metrics['metric']]}, the "
                                                 f"baseline {base.id} with {HEADLINE[base.metrics['metric']]}")
            else:
                try:
                    a, b = _paired(base.predictions_path, r.predictions_path)
                    result = paired_bootstrap(a, b, seed=seed, resamples=resamples)
                except (DataError, ValueError) as err:
                    row.update(status="error", error=str(err))
                else:
                    sign = -1.0 if HEADLINE[r.metrics["metric"]] == "qa_accuracy" else 1.0  # error rate -> accuracy
                    low, high = sorted((sign * result["ci95"][0], sign * result["ci95"][1]))
                    base_value = 1 - result["a"] if sign < 0 else result["a"]
                    value = 1 - result["b"] if sign < 0 else result["b"]
                    significant = low > 0 or high < 0
                    improved = (low > 0) != LOWER_IS_BETTER.get(metric, True)
                    row.update(baseline_value=base_value, value=value, delta=sign * result["delta"], ci_low=low,
                               ci_high=high, p_value=result["p_value"], significant=significant,
                               verdict=("better" if improved else "worse") if significant else "no clear difference",
                               utterances=len(a), status=OK, error="")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- plots

def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(plt, message: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return _figure_bytes(fig)


def plot_metrics(experiments: list, results: dict[str, ExperimentResult]) -> bytes:
    """Headline metric per experiment with its 95 % CI, one panel per dataset, colour by method."""
    plt = _pyplot()
    datasets: dict[str, list] = {}
    for exp in experiments:
        datasets.setdefault(str(get_field(exp, "dataset")), []).append(exp)
    methods = list(dict.fromkeys(str(get_field(e, "method")) for e in experiments))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    if not experiments:
        return _empty(plt, "no experiments in the matrix")
    heights = [max(1.5, 0.35 * len(members) + 1) for members in datasets.values()]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(9, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (dataset, members) in zip(axes[:, 0], datasets.items()):
        labels, metric_names = [], set()
        for y, exp in enumerate(members):
            r = results[str(get_field(exp, "id"))]
            labels.append(r.id)
            if r.status in (OK, STALE) and r.metrics.get("value") is not None:
                value, (low, high) = r.metrics["value"], _ci(r.metrics)
                metric_names.add(HEADLINE[r.metrics["metric"]])
                xerr = [[value - low], [high - value]] if low is not None else None
                ax.errorbar(value, y, xerr=xerr, fmt="o", color=colours[str(get_field(exp, "method"))], capsize=4)
                ax.annotate(f"{value:.3f}", (value, y), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=7)
            else:
                ax.annotate(r.status, (0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=8, color="red")
        ax.set_yticks(range(len(members)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_ylim(len(members) - 0.5, -0.5)
        ax.set_title(f"{dataset}", fontsize=9)
        ax.set_xlabel(" / ".join(sorted(metric_names)) + " (95 % CI)" if metric_names else "no results yet",
                      fontsize=8)
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in methods]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="method", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    return _figure_bytes(fig)


def plot_steering_gates(experiments: list, results: dict[str, ExperimentResult]) -> bytes:
    """Per experiment with steering: mean gate per site and expert, and normalised entropy / layer scales."""
    plt = _pyplot()
    found = [(r.id, r.steering) for r in (results[str(get_field(e, "id"))] for e in experiments)
             if r.steering and r.steering.get("mean_gate")]
    if not found:
        return _empty(plt, "no experiment with steering has been evaluated")
    heights = [0.25 * len(s["mean_gate"]) + 1.2 for _, s in found]
    fig, axes = plt.subplots(len(found), 2, figsize=(10, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights, "width_ratios": [3, 2]})
    for (exp_id, s), (left, right) in zip(found, axes):
        gates = s["mean_gate"]
        image = left.imshow(gates, aspect="auto", cmap="viridis", vmin=0)
        left.set(xlabel="expert", ylabel="site", title=f"{exp_id}: mean gate", xticks=range(len(gates[0])))
        left.title.set_fontsize(8)
        fig.colorbar(image, ax=left)
        sites = list(range(len(gates)))
        if s.get("entropy"):
            top = s.get("max_entropy") or math.log(len(gates[0]))
            right.plot([e / top for e in s["entropy"]], sites, "o-", label="entropy / max")
        if s.get("layer_scales"):
            right.plot(s["layer_scales"], sites, "s-", label="layer scale")
        right.invert_yaxis()
        right.set(xlabel="value", title="router entropy and layer scales")
        right.title.set_fontsize(8)
        right.legend(fontsize=6, loc="lower right")
        right.grid(alpha=0.3)
    fig.tight_layout()
    return _figure_bytes(fig)


def plot_training_curves(experiments: list, results: dict[str, ExperimentResult]) -> bytes:
    """Training loss and dev loss against the step, one line per trained experiment."""
    plt = _pyplot()
    curves = []
    for exp in experiments:
        r = results[str(get_field(exp, "id"))]
        history = (r.summary or {}).get("log_history") or []
        train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        dev = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
        if train or dev:
            curves.append((r.id, train, dev))
    if not curves:
        return _empty(plt, "no experiment has finished training")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (exp_id, train, dev) in enumerate(curves):
        colour = f"C{i % 10}"
        if train:
            axes[0].plot(*zip(*train), color=colour, label=exp_id)
        if dev:
            axes[1].plot(*zip(*dev), "o-", color=colour, label=exp_id)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].set(xlabel="step", ylabel="eval_loss", title="dev loss")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return _figure_bytes(fig)


# ---------------------------------------------------------------- the whole aggregation

def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or None, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def override_columns(experiments: list, declared: list[str] | None = None) -> list[str]:
    """The matrix's override columns (`declared`, e.g. its header's), then any other override key used, in order
    of first appearance."""
    columns: dict[str, None] = dict.fromkeys(declared or [])
    for exp in experiments:
        columns.update(dict.fromkeys(get_field(exp, "overrides") or {}))
    return list(columns)


def aggregate(experiments: list, results_dir: Path, out_dir: Path, logs_dir: Path = Path("logs"),
              root: Path | None = None, commit: str | None = None, seed: int = 0, resamples: int = 1000,
              plots: bool = True, columns: list[str] | None = None, log=print) -> dict:
    """Build table.csv, comparisons.csv and plots/*.png in out_dir. Everything is computed before anything is
    written, and every file is replaced atomically, table.csv last: a failure leaves the previous outputs."""
    ids = [str(get_field(e, "id")) for e in experiments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"experiment ids must be unique; repeated: {', '.join(duplicates)}")
    results = {i: collect(e, Path(results_dir), Path(logs_dir), root) for i, e in zip(ids, experiments)}
    columns = override_columns(experiments, columns)
    commit = git_commit(root) if commit is None else commit
    table = table_rows(experiments, results, columns, commit)
    comparisons = comparison_rows(experiments, results, seed=seed, resamples=resamples)
    outputs: dict[Path, bytes | str] = {}
    if plots:
        outputs[Path("plots/metrics.png")] = plot_metrics(experiments, results)
        outputs[Path("plots/steering_gates.png")] = plot_steering_gates(experiments, results)
        outputs[Path("plots/training_curves.png")] = plot_training_curves(experiments, results)
    outputs[Path("comparisons.csv")] = to_csv(comparisons, COMPARISON_COLUMNS)
    outputs[Path("table.csv")] = to_csv(table, table_columns(columns))
    out_dir = Path(out_dir)
    for relative, data in outputs.items():
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / relative, data)

    for r in results.values():
        if r.status == INVALID:
            print(f"steermoe: warning: {r.id}: {r.error}", file=sys.stderr)
    log(summary_text(table, comparisons))
    log(f"written: {', '.join(str(out_dir / p) for p in outputs)}")
    return {"table": table, "comparisons": comparisons, "results": results, "files": [out_dir / p for p in outputs]}


def summary_text(table: list[dict], comparisons: list[dict]) -> str:
    """A short human view of the table: headline metric rows, then the comparisons."""
    lines = [f"{'experiment':<52}{'metric':<14}{'value':>9}  {'95% CI':<19}status"]
    for row in table:
        if not row["headline"]:
            continue
        value = f"{row['value']:.4f}" if row.get("value") is not None else "-"
        ci = f"{row['ci_low']:.4f}-{row['ci_high']:.4f}" if row.get("ci_low") is not None else ""
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        lines.append(f"{row['experiment']:<52}{row['metric']:<14}{value:>9}  {ci:<19}{status}")
    for c in comparisons:
        if c["status"] == OK:
            lines.append(f"{c['experiment']} vs {c['baseline']}: delta {c['delta']:+.4f} "
                         f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] p={c['p_value']:.3f} ({c['direction']}): "
                         f"{c['verdict']}")
        else:
            lines.append(f"{c['experiment']} vs {c['baseline']}: {c['status']}: {c['error']}")
    return "\n".join(lines)
