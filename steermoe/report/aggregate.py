"""`steermoe aggregate`: every experiment of the matrix into one honest table, paired comparisons, and plots.

Reads each experiment's results and status (steermoe/report/results.py), builds the rows (steermoe/report/tables.py) and
the figures (steermoe/report/plots.py). Outputs (each written atomically, after everything was computed, table.csv
last):
    table.csv          one row per experiment x test set x metric; failed and not-run experiments are rows too
    comparisons.csv    per group with a baseline: each other experiment vs the baseline, paired bootstrap
    plots/metrics.png, plots/steering_gates.png, plots/training_curves.png
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from steermoe.declare.experiments import Experiment
from steermoe.declare.halving import Halving, halving_states
from steermoe.declare.settings import WORKFLOW_CONFIG
from steermoe.errors import DataError
from steermoe.fsutil import write_atomic
from steermoe.report.plots import plot_metrics, plot_steering_gates, plot_training_curves
from steermoe.report.results import INVALID, collect
from steermoe.report.tables import (COMPARISON_COLUMNS, comparison_rows, override_columns, summary_text, table_columns,
                                    table_rows, to_csv)


def git_commit(root: Path | None = None) -> str:
    """The checked-out commit (the table's git_commit column); "" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or None, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def aggregate(experiments: list[Experiment], results_dir: Path, out_dir: Path,
              logs_dir: Path = Path(WORKFLOW_CONFIG["logs"]),
              root: Path | None = None, commit: str | None = None, seed: int = 0, resamples: int = 1000,
              plots: bool = True, columns: list[str] | None = None, halvings: dict[str, Halving] | None = None,
              log=print) -> dict:
    """Build table.csv, comparisons.csv and plots/*.png in out_dir. Everything is computed before anything is
    written, and every file is replaced atomically, table.csv last: a failure leaves the previous outputs."""
    ids = [str(e.id) for e in experiments]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"experiment ids must be unique; repeated: {', '.join(duplicates)}")
    states = halving_states(halvings or {}, experiments, str(results_dir))
    results = {i: collect(e, Path(results_dir), Path(logs_dir), root, trained=states.get(i, {}).get("trained"))
               for i, e in zip(ids, experiments)}
    columns = override_columns(experiments, columns)
    commit = git_commit(root) if commit is None else commit
    table = table_rows(experiments, results, columns, commit, seed=seed, resamples=resamples, halving=states)
    comparisons = comparison_rows(experiments, results, seed=seed, resamples=resamples)
    outputs: dict[Path, bytes | str] = {}
    if plots:
        summaries = {row["experiment"]: row for row in table if row.get("seeds")}  # the replicate sets' rows
        outputs[Path("plots/metrics.png")] = plot_metrics(experiments, results, summaries)
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

