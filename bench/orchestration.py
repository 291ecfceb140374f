"""Orchestration: `snakemake -n` on a generated 1,000-row matrix (target <= 5 s), and the start-up cost every job
pays: the `steermoe` command (`steermoe --help`) and, for train/evaluate jobs, importing the engine (medians).

The workflow (Snakefile, workflow/, templates/, profiles/, experiments/) is copied into a temporary folder and its
matrix replaced by N distinct rows over the catalog's embedded models and synthetic datasets (method x encoder x
dataset x seed). Reading the workflow validates the matrix and renders every experiment's two configs, so the dry
run covers parsing, validation, rendering and the DAG of N x 4 jobs plus data, model and aggregate jobs.

    python -m bench orchestration [--quick] [--rows N]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, arguments, median, report, timed_command, verdict

TARGET_SECONDS = 5.0
WORKFLOW = ["Snakefile", "workflow", "templates", "profiles", "experiments"]
METHODS = ["layer_wise", "linear", "post_encoder", "lora"]
ENCODERS = ["whisper-tiny.en", "whisper-base"]
DATASETS = ["synth-en", "synth-aqa", "synth-zh"]


def matrix(rows: int) -> str:
    """`rows` distinct experiments: every method x encoder x dataset combination, repeated with a new seed."""
    combos = [(m, e, d) for d in DATASETS for e in ENCODERS for m in METHODS]
    lines = ["method\tencoder\tdecoder\tdataset\tseed"]
    for i in range(rows):
        method, encoder, dataset = combos[i % len(combos)]
        lines.append(f"{method}\t{encoder}\tsmollm2\t{dataset}\t{i // len(combos)}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = arguments(__doc__, argv, lambda p: p.add_argument("--rows", type=int, help="matrix rows (default 1000)"))
    rows = args.rows or (100 if args.quick else 1000)
    repetitions = 1 if args.quick else 3
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "wf"
        root.mkdir()
        for name in WORKFLOW:
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, root / name)
        (root / "experiments" / "matrix.tsv").write_text(matrix(rows))
        command = [str(bin_dir / "snakemake"), "-n", "--cores", "2"]  # as a user types it (4,000+ jobs printed)
        first = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if first.returncode != 0:
            raise SystemExit(f"snakemake -n failed ({first.returncode}):\n{first.stdout[-3000:]}{first.stderr[-3000:]}")
        jobs = _job_count(first.stdout + first.stderr)
        dry_run = timed_command(command, repetitions, cwd=root, env=env)
    cli = timed_command([str(bin_dir / "steermoe"), "--help"], 3 if args.quick else 7)
    # what a train or evaluate job pays before its own work: torch, transformers and the engine
    engine = timed_command([sys.executable, "-c", "import steermoe.train, steermoe.evaluate"], 1 if args.quick else 3)
    seconds, cli_seconds, engine_seconds = median(dry_run), median(cli), median(engine)
    result = {"rows": rows, "jobs": jobs, "dry_run_seconds": dry_run, "median_dry_run_seconds": seconds,
              "target_seconds": TARGET_SECONDS, "cli_help_seconds": cli, "median_cli_help_seconds": cli_seconds,
              "engine_import_seconds": engine, "median_engine_import_seconds": engine_seconds,
              "verdict": verdict(seconds, TARGET_SECONDS, higher_is_better=False)}
    if rows != 1000:
        result["verdict"] = f"not judged ({rows} rows; the target is for 1,000)"
    table = [[f"snakemake -n, {rows}-row matrix ({jobs} jobs)", seconds, f"<= {TARGET_SECONDS:g}"],
             ["steermoe --help (the CLI's start-up)", cli_seconds, "reported"],
             ["import steermoe.train, steermoe.evaluate (a train/evaluate job's start-up)", engine_seconds,
              "reported"]]
    return report("orchestration", args, result, ["what", "s (median)", "target"], table)


def _job_count(output: str) -> int | None:
    """The total of Snakemake's job-stats table ('total  N')."""
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


if __name__ == "__main__":
    main()
