"""The table and the paired comparisons, built from every experiment's results (steermoe/report/results.py).

table.csv: one row per experiment x test set x metric; failed and not-run experiments are rows too. A failed /
not-run / invalid experiment gets one row (its headline metric) with status and error; an ok experiment gets one
row per metric: English `wer` (Whisper-normalised, headline) and `wer_raw`; Chinese `cer`; QA `qa_accuracy`
(normalised exact match, headline), `qa_yes_no` (yes/no subset) and `qa_lenient_substring` (the original code's
lenient substring score, reported only as such).

Replicates (experiments whose settings differ only in `seed`) keep one row each and add, after the last of them, a
summary row named after the set: the mean over seeds of the headline metric, the standard deviation across seeds
and a 95 % CI from a crossed bootstrap over seeds and utterances (steermoe/report/seeds.py).

comparisons.csv: per group with a baseline, each other experiment vs the baseline, paired bootstrap (only between
ok experiments; otherwise the row says why not). Replicate sets are compared as sets, paired by seed and utterance.

Rows follow the matrix order and numbers have fixed formats, so two runs from scratch on machines that agree on
the precision columns (precision, weights_dtype, device, device_model; the CPU class decides the precision) give
byte-identical tables apart from the timing columns (train_seconds, eval_seconds, rtf).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from steermoe.declare.experiments import Experiment, differences
from steermoe.declare.settings import REFERENCE
from steermoe.errors import DataError
from steermoe.report.results import OK, ExperimentResult, MalformedFile, read_predictions

NOTES = {
    "wer": "word error rate after Whisper English normalisation",
    "wer_raw": "word error rate on the raw text (case and punctuation count)",
    "cer": "character error rate (punctuation and spaces removed, full-width and case folded)",
    "qa_accuracy": "normalised exact match against the majority answer (a tie: the first listed)",
    "qa_yes_no": "normalised exact match against the majority answer, yes/no questions only",
    "qa_any_annotator": "normalised exact match against any annotator's answer (not an accuracy)",
    "qa_lenient_substring": "the original code's lenient substring score (not an accuracy)",
}
ORIGINAL_PROTOCOL_NOTES = {  # the same metric names, computed as the original code did (steermoe/declare/protocols.py)
    "wer": "original protocol: raw word error rate, no normalisation, 5 % subset, mean over sampling seeds",
    "cer": "original protocol: raw character error rate, no normalisation, 5 % subset, mean over sampling seeds",
    "qa_accuracy": "original protocol: lenient substring match, one row per annotator, 5 % subset, mean over sampling "
                   "seeds (not an accuracy)",
}
LOWER_IS_BETTER = {"wer": True, "wer_raw": True, "cer": True, "qa_accuracy": False, "qa_yes_no": False,
                   "qa_any_annotator": False, "qa_lenient_substring": False}
TIMING_COLUMNS = ("train_seconds", "eval_seconds", "rtf")
# how the model was trained (train_summary.json; metrics.json for an untrained model): tables from scratch match
# only between runs that agree on these (steermoe/run/precision.py)
PRECISION_COLUMNS = ("precision", "weights_dtype", "device", "device_model", "cpu_flags")

COMPARISON_COLUMNS = ["group", "baseline", "experiment", "differs_from_baseline", "test_set", "metric", "direction",
                      "baseline_value", "value", "delta", "ci_low", "ci_high", "p_value", "significant", "verdict",
                      "interval_covers", "utterances", "seeds", "resamples", "status", "error"]


def interval_covers(trainings: int | None) -> str:
    """What a confidence interval resamples, for rows of `trainings` trainings each (None: nothing is trained):
    a single training's interval leaves out what another seed or another machine's kernels would change."""
    if trainings is None:
        return "test utterances (nothing trained)"
    if trainings == 1:
        return "test utterances only (one training per row; training variance not included)"
    return f"seeds x test utterances ({trainings} trainings per row)"


def table_columns(override_columns: list[str]) -> list[str]:
    return ["experiment", "method", "encoder", "decoder", "dataset", "recipe", "group", "baseline",
            "differs_from_baseline", "tags",
            *override_columns, "replicate_of", "seeds",
            "halving", "halving_rung", "halving_rank", "halving_measure",
            "test_set", "protocol", "metric", "headline", "value", "std", "ci_low", "ci_high", "interval_covers",
            "substitutions",
            "deletions",
            "insertions", "correct", "reference_units", "utterances", "trainable_parameters", "train_steps",
            "train_seconds", "eval_seconds", "rtf", "precision", "weights_dtype", "device", "device_model",
            "cpu_flags", "config_sha256", "train_config_sha256", "git_commit", "status",
            "error", "log", "note"]


def override_columns(experiments: list[Experiment], declared: list[str] | None = None) -> list[str]:
    """The matrix's override columns (`declared`, e.g. its header's), then any other override key used, in order
    of first appearance; not those the table has already (test_set, protocol: there with the result's value)."""
    columns: dict[str, None] = dict.fromkeys(declared or [])
    for exp in experiments:
        columns.update(dict.fromkeys(exp.overrides or {}))
    own = set(table_columns([]))
    return [c for c in columns if c not in own]


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


def ci_bounds(block: dict) -> tuple:
    """(low, high) of a metric block's 95 % CI; (None, None) without one."""
    ci = block.get("ci95") or (None, None)
    return ci[0], ci[1]


def _metric_blocks(metrics: dict) -> list[tuple[str, dict]]:
    """(table metric name, counts) for every metric row of an evaluated experiment; each block carries its own
    reference_units (steermoe/metrics.py)."""
    name = metrics["metric"]
    if metrics.get("protocol") == "original":  # one number, as the original code computed it
        return [(name, metrics)]
    if name == "wer":
        return [(name, metrics), ("wer_raw", {**metrics["raw"], "utterances": metrics.get("utterances")})]
    if name == "cer":
        return [(name, metrics)]
    out = [(name, metrics)]
    for key, label in (("yes_no", "qa_yes_no"), ("any_annotator", "qa_any_annotator"),
                       ("lenient_substring", "qa_lenient_substring")):
        out.append((label, metrics.get(key) or {"value": None, "ci95": None, "correct": 0, "utterances": 0,
                                                "reference_units": 0}))
    return out


def _protocol(exp: Experiment, result: ExperimentResult) -> str:
    """The evaluation protocol: as evaluated, else as configured."""
    return (result.metrics or {}).get("protocol") or (exp.settings or {}).get("protocol") or "honest"


def _reference_label(exp: Experiment) -> str:
    return "reference (the encoder model's own decoder, untrained): " if exp.method == REFERENCE else ""


def _trainable(result: ExperimentResult):
    if result.metrics and result.metrics.get("trainable_parameters") is not None:
        return int(result.metrics["trainable_parameters"])
    counts = (result.summary or {}).get("trainable_parameters")
    if isinstance(counts, dict):
        return int(sum(counts.values()))
    return counts


def group_baselines(experiments: list[Experiment]) -> dict[tuple, Experiment]:
    """{(group, test set): its baseline experiment} (a replicate set's first seed)."""
    return {(e.group, e.test_set): e for e in reversed(experiments) if e.group and e.baseline}


def replicate_sets(experiments: list[Experiment]) -> dict[str, list]:
    """{set name: its experiments in matrix order} for every replicate set (experiments.name_replicates)."""
    sets: dict[str, list] = {}
    for exp in experiments:
        if exp.replicate_of:
            sets.setdefault(str(exp.replicate_of), []).append(exp)
    return sets


def _aligned(paths: list[Path]) -> list[list[dict]]:
    """Per-utterance records of several evaluations on the same test set, in the first one's utterance order."""
    runs = [_paired(paths[0], paths[0])[0]]
    return runs + [_paired(paths[0], path)[1] for path in paths[1:]]


def _seed_of(exp: Experiment):
    return (exp.overrides or {}).get("seed", (exp.settings or {}).get("seed", 0))


def _summary_row(name: str, members: list, results: dict[str, ExperimentResult], first_row: dict, seed: int,
                 resamples: int) -> dict:
    """The replicate set's row: mean, spread and crossed-bootstrap CI of the headline metric over its seeds."""
    from steermoe.report.seeds import summarise

    seeds = ",".join(str(_seed_of(e)) for e in members)
    row = {**{k: first_row.get(k) for k in ("method", "encoder", "decoder", "dataset", "recipe", "group", "baseline",
                                            "differs_from_baseline", "tags", "test_set", "protocol",
                                            "trainable_parameters", "train_steps")},
           "experiment": name, "seeds": seeds, "metric": first_row["metric"], "headline": True,
           "interval_covers": interval_covers(len(members)),
           "note": f"mean of {len(members)} seeds; std across seeds; 95 % CI: crossed bootstrap over seeds and "
                   f"utterances"}
    done = [results[str(e.id)] for e in members]
    missing = [r.id for r in done if r.status != OK]
    if missing:
        return {**row, "status": "incomplete", "error": f"{len(missing)} of {len(done)} seeds not ok: "
                                                        f"{', '.join(missing)}"}
    try:
        stats = summarise(_aligned([r.predictions_path for r in done]), seed=seed, resamples=resamples)
    except (DataError, ValueError) as err:
        return {**row, "status": "error", "error": str(err)}
    low, high, mean = stats["ci95"][0], stats["ci95"][1], stats["mean"]
    if first_row["metric"] == "qa_accuracy":  # the records count errors: accuracy = 1 - error rate
        low, high, mean = 1 - high, 1 - low, 1 - mean
    return {**row, "value": mean, "std": stats["std"], "ci_low": low, "ci_high": high,
            "utterances": first_row.get("utterances"), "status": OK, "error": ""}


HALVING_STOPPED = "stopped"  # the status of a cell that successive halving stopped and that is not evaluated


def _halving_columns(state: dict | None) -> dict:
    if state is None:
        return {}
    return {"halving": state["status"], "halving_rung": state["rung"], "halving_rank":
            f"{state['rank']}/{state['of']}" if state["rank"] else "", "halving_measure": state["measure"]}


def table_rows(experiments: list[Experiment], results: dict[str, ExperimentResult], override_columns: list[str],
               git_commit: str, seed: int = 0, resamples: int = 1000, halving: dict | None = None) -> list[dict]:
    """`halving`: the fates of successive halving's cells (steermoe.declare.halving.halving_states)."""
    sets = replicate_sets(experiments)
    last_of_set = {members[-1].id: name for name, members in sets.items()}
    baselines = group_baselines(experiments)
    rows = []
    for exp in experiments:
        r = results[str(exp.id)]
        overrides = exp.overrides or {}
        baseline = baselines.get((exp.group, exp.test_set))
        base = {"experiment": r.id, "method": exp.method, "encoder": exp.encoder,
                "decoder": exp.decoder, "dataset": exp.dataset,
                "recipe": exp.recipe or "", "group": exp.group or "",
                "baseline": bool(exp.baseline), "tags": ",".join(exp.tags or []),
                "differs_from_baseline": differences(exp, baseline) if baseline and not exp.baseline else "",
                **{c: overrides.get(c, "") for c in override_columns},
                "replicate_of": exp.replicate_of or "",
                "test_set": r.test_set, "protocol": _protocol(exp, r), "trainable_parameters": _trainable(r),
                "interval_covers": interval_covers(None if exp.method == REFERENCE else 1),
                "train_steps": (r.summary or {}).get("steps"),
                "train_seconds": (r.summary or {}).get("train_seconds_this_run"),
                **{c: (r.summary or r.metrics or {}).get(c) for c in PRECISION_COLUMNS},
                "config_sha256": r.config_sha256, "train_config_sha256": r.train_config_sha256,
                "git_commit": git_commit, "status": r.status, "error": r.error, "log": r.log,
                **_halving_columns((halving or {}).get(exp.id))}
        if exp.id in (halving or {}) and not halving[exp.id]["evaluated"]:
            base.update(status=HALVING_STOPPED, error=halving[exp.id]["text"])
        if r.metrics is None:
            headline = str(exp.metric or "")
            rows.append({**base, "metric": headline, "headline": True, "note": NOTES.get(headline, "")})
        for name, block in _metric_blocks(r.metrics) if r.metrics else []:
            low, high = ci_bounds(block)
            rows.append({**base, "metric": name, "headline": name == r.metrics["metric"],
                         "value": block.get("value"), "ci_low": low, "ci_high": high,
                         "substitutions": block.get("substitutions"), "deletions": block.get("deletions"),
                         "insertions": block.get("insertions"), "correct": block.get("correct"),
                         "reference_units": block.get("reference_units"), "utterances": block.get("utterances"),
                         "eval_seconds": r.metrics.get("decode_seconds"), "rtf": r.metrics.get("rtf"),
                         "note": _reference_label(exp)
                                 + (ORIGINAL_PROTOCOL_NOTES if base["protocol"] == "original" else NOTES)[name]
                                 + _windowed_note(r.metrics.get("windowed"))
                                 + _dropped_note(r.metrics.get("dropped_at_preparation"), block.get("utterances"))
                                 + (f"; {halving[exp.id]['text']}" if exp.id in (halving or {}) else "")})
        if r.id in last_of_set:
            name = last_of_set[r.id]
            first = next(row for row in rows if row["experiment"] == str(sets[name][0].id))
            rows.append(_summary_row(name, sets[name], results, first, seed, resamples))
    return rows


def _windowed_note(windowed: dict | None) -> str:
    """What the note says of utterances longer than the encoder's window (decoded in windows, none cut short)."""
    if not windowed:
        return ""
    return (f"; {windowed['utterances']} utterance(s) longer than {windowed['window_seconds']:g} s decoded in "
            f"consecutive windows (up to {windowed['most_windows']}) and joined")


def _dropped_note(dropped: dict | None, scored: int | None) -> str:
    """What the note says of test utterances that preparation left out (too long, bad audio): never silently."""
    if not dropped:
        return ""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in dropped["reasons"].items())
    return (f"; {scored} of {dropped['of']} utterances scored, {dropped['utterances']} dropped at preparation "
            f"({reasons})")


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


def comparison_rows(experiments: list[Experiment], results: dict[str, ExperimentResult], seed: int = 0,
                    resamples: int = 1000) -> list[dict]:
    """Every non-baseline experiment of a group against the group's baseline, paired on the same utterances.

    delta = value - baseline value in the headline metric's own units (WER/CER: negative is better; QA accuracy:
    positive is better); ci_low/ci_high: 95 % paired-bootstrap interval of delta; significant: the interval
    excludes zero. The bootstrap runs on per-utterance errors (QA: 0/1 per question, one unit each). A replicate
    set is one row, named after the set, with `seeds` pairs.
    """
    sets = replicate_sets(experiments)
    groups: dict[tuple, list] = {}  # a group compares on each of its test sets separately
    for exp in experiments:
        if exp.group:
            groups.setdefault((str(exp.group), exp.test_set), []).append(exp)
    rows = []
    for (group, _), members in groups.items():  # dicts keep matrix order
        baselines = [e for e in members if e.baseline]
        if not baselines:
            continue
        base_exp = baselines[0]
        base = results[str(base_exp.id)]
        base_set = base_exp.replicate_of
        compared = set()
        for exp in members:
            name = exp.replicate_of
            if exp is base_exp or (name and name == base_set) or (name and name in compared):
                continue  # a replicate set is compared once, as a set
            r = results[str(exp.id)]
            metric = str(exp.metric or "")
            row = {"group": group, "baseline": base_set or base.id, "experiment": name or r.id,
                   "differs_from_baseline": differences(exp, base_exp), "test_set": r.test_set, "metric": metric,
                   "direction": "lower is better" if LOWER_IS_BETTER.get(metric, True) else "higher is better",
                   "resamples": resamples}
            if name:
                compared.add(name)
            if len({e.replicate_of or e.id for e in baselines}) > 1:
                row.update(status="error", error=f"group {group!r} has {len(baselines)} baselines "
                                                 f"({', '.join(str(e.id) for e in baselines)}); mark one")
            elif name or base_set:
                row.update(_compare_sets(sets.get(base_set, [base_exp]), sets.get(name, [exp]), results, seed,
                                         resamples))
            elif base.status != OK:
                row.update(status="baseline not available", error=f"baseline {base.id}: {base.status}"
                                                                  + (f" ({base.error})" if base.error else ""))
            elif r.status != OK:
                row.update(status="not available", error=f"{r.status}" + (f": {r.error}" if r.error else ""))
            else:
                row.update(_compare(base_exp, base, exp, r, seed, resamples))
            rows.append(row)
    return rows


def _verdict(result: dict, metric_name: str, metric: str, utterances: int) -> dict:
    """A paired result (error rates) as comparison columns in the metric's own units."""
    sign = -1.0 if metric_name == "qa_accuracy" else 1.0  # error rate -> accuracy
    low, high = sorted((sign * result["ci95"][0], sign * result["ci95"][1]))
    base_value = 1 - result["a"] if sign < 0 else result["a"]
    value = 1 - result["b"] if sign < 0 else result["b"]
    significant = low > 0 or high < 0
    improved = (low > 0) != LOWER_IS_BETTER.get(metric, True)
    return dict(baseline_value=base_value, value=value, delta=sign * result["delta"], ci_low=low, ci_high=high,
                p_value=result["p_value"], significant=significant,
                verdict=("better" if improved else "worse") if significant else "no clear difference",
                utterances=utterances, status=OK, error="")


def _mismatch(base_exp, base: ExperimentResult, exp, r: ExperimentResult) -> str | None:
    """Why two evaluations cannot be paired (protocol, test set, metric), or None."""
    if _protocol(exp, r) != _protocol(base_exp, base):
        return f"{r.id} is evaluated under the {_protocol(exp, r)} protocol, the baseline {base.id} under " \
               f"{_protocol(base_exp, base)}"
    if r.test_set != base.test_set:
        return f"{r.id} is scored on {r.test_set}, the baseline {base.id} on {base.test_set}: a paired comparison " \
               f"needs the same test set"
    if r.metrics["metric"] != base.metrics["metric"]:
        return f"{r.id} is scored with {r.metrics['metric']}, the baseline {base.id} with {base.metrics['metric']}"
    return None


def _compare(base_exp, base: ExperimentResult, exp, r: ExperimentResult, seed: int, resamples: int) -> dict:
    from steermoe.metrics import paired_bootstrap

    problem = _mismatch(base_exp, base, exp, r)
    if problem:
        return {"status": "error", "error": problem}
    try:
        a, b = _paired(base.predictions_path, r.predictions_path)
        result = paired_bootstrap(a, b, seed=seed, resamples=resamples)
    except (DataError, ValueError) as err:
        return {"status": "error", "error": str(err)}
    return {**_verdict(result, r.metrics["metric"], str(exp.metric or ""), len(a)),
            "interval_covers": interval_covers(1)}


def _compare_sets(baseline: list, members: list, results: dict[str, ExperimentResult], seed: int,
                  resamples: int) -> dict:
    """Two replicate sets (or a set and a single run), paired by seed and utterance (steermoe/report/seeds.py)."""
    from steermoe.report.seeds import paired

    base_seeds, seeds = [_seed_of(e) for e in baseline], [_seed_of(e) for e in members]
    if sorted(base_seeds) != sorted(seeds):
        return {"status": "error", "error": f"seeds {sorted(seeds)} against the baseline's {sorted(base_seeds)}: "
                                            f"replicates are paired by seed, so both need the same seeds"}
    by_seed = dict(zip(base_seeds, baseline))
    pairs = [(by_seed[s], e) for s, e in zip(seeds, members)]
    runs = [(results[str(b.id)], results[str(e.id)]) for b, e in pairs]
    for (b_exp, e_exp), (b, r) in zip(pairs, runs):
        if b.status != OK:
            return {"status": "baseline not available", "error": f"baseline {b.id}: {b.status}"}
        if r.status != OK:
            return {"status": "not available", "error": f"{r.id}: {r.status}" + (f": {r.error}" if r.error else "")}
        problem = _mismatch(b_exp, b, e_exp, r)
        if problem:
            return {"status": "error", "error": problem}
    try:
        aligned = _aligned([b.predictions_path for b, _ in runs] + [r.predictions_path for _, r in runs])
        result = paired(aligned[:len(runs)], aligned[len(runs):], seed=seed, resamples=resamples)
    except (DataError, ValueError) as err:
        return {"status": "error", "error": str(err)}
    out = _verdict(result, runs[0][1].metrics["metric"], str(members[0].metric or ""),
                   len(aligned[0]))
    return {**out, "seeds": len(runs), "interval_covers": interval_covers(len(runs))}


def summary_text(table: list[dict], comparisons: list[dict]) -> str:
    """A short human view of the table: headline metric rows, then the comparisons."""
    shown = [row for row in table if row["headline"]]
    width = max([len("experiment"), *(len(row["experiment"]) for row in shown)]) + 2  # ids vary widely in length
    lines = [f"{'experiment':<{width}}{'metric':<14}{'value':>9}  {'95% CI':<19}status"]
    for row in shown:
        value = f"{row['value']:.4f}" if row.get("value") is not None else "-"
        ci = f"{row['ci_low']:.4f}-{row['ci_high']:.4f}" if row.get("ci_low") is not None else ""
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        lines.append(f"{row['experiment']:<{width}}{row['metric']:<14}{value:>9}  {ci:<19}{status}")
    for c in comparisons:
        if c["status"] == OK:
            lines.append(f"{c['experiment']} vs {c['baseline']}: delta {c['delta']:+.4f} "
                         f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] p={c['p_value']:.3f} ({c['direction']}): "
                         f"{c['verdict']} ({c['interval_covers']})")
        else:
            lines.append(f"{c['experiment']} vs {c['baseline']}: {c['status']}: {c['error']}")
    return "\n".join(lines)
