"""Orchestration: `snakemake -n` on a generated 1,000-experiment matrix declared with axes (target <= 5 s), and the
start-up cost every job pays: the `steermoe` command (`steermoe --help`) and, for train/evaluate jobs, importing the
engine (medians).

The workflow (Snakefile, workflow/, templates/, profiles/, experiments/) is copied into a temporary folder beside a
generated YAML matrix of N distinct experiments over the catalog's embedded models (method x encoder x num_experts
x seeds, on synth-aqa, which has one test set). Reading the workflow expands the axes, validates the matrix and
renders every experiment's two configs, so the dry run covers parsing, validation, rendering and the DAG of N x 2
jobs (train, evaluate) plus data, model and aggregate jobs. Snakemake imports `steermoe` from the tree it measures
(PYTHONPATH); a --compare-ref commit from before YAML matrices gets the same experiments as explicit TSV rows.

--compare-ref GIT_REF also dry-runs the workflow and code of that commit (`git archive`, e.g. the commit before a
change) on the same matrix, the two timed in alternating order round by round, so that both see the same load.
Each dry run's CPU time (user + system) is reported beside its wall time: on a shared machine it says what the
dry run itself costs.

    python -m bench orchestration [--quick] [--rows N] [--compare-ref GIT_REF]
"""
from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from steermoe.declare.matrix import load_matrix

from bench.common import REPO, arguments, interleaved, median, report, timed_command, verdict

TARGET_SECONDS = 5.0
WORKFLOW = ["Snakefile", "workflow", "templates", "profiles", "experiments"]
METHODS = ["layer_wise", "linear", "post_encoder", "lora"]
ENCODERS = ["whisper-tiny.en", "whisper-base"]
EXPERTS = [2, 4, 8, 16, 32]
MATRIX = "experiments/bench"  # .yaml, or .tsv for a tree from before YAML matrices


def _seeds(rows: int) -> int:
    return -(-rows // (len(METHODS) * len(ENCODERS) * len(EXPERTS)))


def matrix(rows: int) -> str:
    """About `rows` experiments (a multiple of 40, rounded up) as axes: 4 methods x 2 encoders x 5 expert counts x
    rows / 40 seeds."""
    return (f"fixed: {{decoder: smollm2, dataset: synth-aqa, seeds: {_seeds(rows)}}}\n"
            f"blocks:\n  - {{method: {METHODS}, encoder: {ENCODERS}, num_experts: {EXPERTS}}}\n")


def explicit_matrix(rows: int) -> str:
    """The same experiments as `matrix`, one TSV row each, in its order (the ids come out alike)."""
    lines = ["method\tencoder\tdecoder\tdataset\tnum_experts\tseed"]
    lines += [f"{m}\t{e}\tsmollm2\tsynth-aqa\t{n}\t{s}"
              for m in METHODS for e in ENCODERS for n in EXPERTS for s in range(_seeds(rows))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    def options(parser):
        parser.add_argument("--rows", type=int, help="experiments, rounded up to a multiple of 40 (default 1000)")
        parser.add_argument("--compare-ref", metavar="GIT_REF", help="also time the workflow of this commit")

    args = arguments(__doc__, argv, options)
    rows = args.rows or (100 if args.quick else 1000)
    repetitions = 1 if args.quick else 3
    bin_dir = Path(sys.executable).parent
    # as a user types it (2,000+ jobs printed)
    command = [str(bin_dir / "snakemake"), "-n", "--cores", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"working tree": REPO}
        if args.compare_ref:
            ref = _commit(args.compare_ref)
            trees = {ref: _archive(ref, Path(tmp) / "ref"), **trees}
        workflows = {label: _workflow(tree, Path(tmp) / f"wf{i}", rows)
                     for i, (label, tree) in enumerate(trees.items())}
        envs = {label: {**os.environ, "PYTHONPATH": str(tree),
                        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
                for label, tree in trees.items()}
        commands = {label: [*command, "--config", f"matrix={_matrix_file(root).relative_to(root)}"]
                    for label, root in workflows.items()}
        jobs = {label: _first_dry_run(commands[label], root, envs[label]) for label, root in workflows.items()}
        root = workflows["working tree"]
        experiments = len(load_matrix(_matrix_file(root), root / "experiments" / "catalog.yaml"))
        cpu = {label: [] for label in workflows}

        def dry_run(label):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(commands[label], cwd=workflows[label], env=envs[label], check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

        dry_runs = interleaved({label: lambda _, label=label: dry_run(label) for label in workflows}, repetitions,
                               warmup=0)
    cli = timed_command([str(bin_dir / "steermoe"), "--help"], 3 if args.quick else 7)
    # what a train or evaluate job pays before its own work: torch, transformers and the engine
    engine = timed_command([sys.executable, "-c", "import steermoe.run.train, steermoe.run.evaluate"],
                           1 if args.quick else 3)
    current = dry_runs["working tree"]
    seconds, cli_seconds, engine_seconds = median(current), median(cli), median(engine)
    result = {"experiments": experiments, "jobs": jobs["working tree"], "dry_run_seconds": current,
              "median_dry_run_seconds": seconds, "dry_run_cpu_seconds": cpu["working tree"],
              "median_dry_run_cpu_seconds": median(cpu["working tree"]), "target_seconds": TARGET_SECONDS,
              "cli_help_seconds": cli,
              "median_cli_help_seconds": cli_seconds, "engine_import_seconds": engine,
              "median_engine_import_seconds": engine_seconds,
              "verdict": verdict(seconds, TARGET_SECONDS, higher_is_better=False)}
    if experiments != 1000:
        result["verdict"] = f"not judged ({experiments} experiments; the target is for 1,000)"
    table = [[f"snakemake -n, {experiments} experiments as axes ({jobs['working tree']} jobs)", seconds,
              median(cpu["working tree"]), f"<= {TARGET_SECONDS:g}"]]
    if args.compare_ref:
        result["compare"] = {"ref": args.compare_ref, "commit": ref, "jobs": jobs[ref],
                             "dry_run_seconds": dry_runs[ref], "median_dry_run_seconds": median(dry_runs[ref]),
                             "dry_run_cpu_seconds": cpu[ref], "median_dry_run_cpu_seconds": median(cpu[ref])}
        table.append([f"snakemake -n, the same, workflow of {ref} ({jobs[ref]} jobs)", median(dry_runs[ref]),
                      median(cpu[ref]), "reported"])
    table += [["steermoe --help (the CLI's start-up)", cli_seconds, "", "reported"],
              ["import steermoe.run.train, steermoe.run.evaluate (a train/evaluate job's start-up)", engine_seconds, "",
               "reported"]]
    return report("orchestration", args, result, ["what", "s (median)", "CPU s (median)", "target"], table)


def _commit(ref: str) -> str:
    """The short commit id of a git ref of this repository."""
    return subprocess.run(["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def _archive(commit: str, dest: Path) -> Path:
    """The files of `commit` (code and workflow) in `dest`."""
    tar = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def _workflow(tree: Path, dest: Path, rows: int) -> Path:
    """A copy of the workflow of `tree` in `dest`, with a generated matrix of about `rows` experiments."""
    dest.mkdir()
    for name in WORKFLOW:
        (shutil.copytree if (tree / name).is_dir() else shutil.copy2)(tree / name, dest / name)
    if any((tree / "steermoe").rglob("axes.py")):  # a tree with matrix axes (either layout)
        (dest / f"{MATRIX}.yaml").write_text(matrix(rows))
    else:
        (dest / f"{MATRIX}.tsv").write_text(explicit_matrix(rows))
    return dest


def _matrix_file(root: Path) -> Path:
    return next(root.glob(f"{MATRIX}.*"))


def _first_dry_run(command: list[str], root: Path, env: dict) -> int | None:
    """Run the dry run once (Snakemake creates .snakemake/, Python its caches) and count its jobs."""
    first = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if first.returncode != 0:
        raise SystemExit(f"snakemake -n in {root} failed ({first.returncode}):\n{first.stdout[-3000:]}"
                         f"{first.stderr[-3000:]}")
    return _job_count(first.stdout + first.stderr)


def _job_count(output: str) -> int | None:
    """The total of Snakemake's job-stats table ('total  N')."""
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


if __name__ == "__main__":
    main()
