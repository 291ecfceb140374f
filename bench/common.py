"""What the benchmarks share: command-line options, the machine description, tables and JSON, interleaved timing,
the embedded models, the synth-en corpus, and a run config rendered from the catalog exactly as the workflow does.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("whisper-tiny.en", "smollm2-135m-instruct")
# the embedded default experiment: the catalog's synth-en settings (layer_wise, pooling 4, dynamic window, bf16), at
# the batch of 8 the benchmarks' targets are stated for (the catalog itself trains synth-en at batch 2)
DEFAULT_ROW = {"method": "layer_wise", "encoder": "whisper-tiny.en", "decoder": "smollm2", "dataset": "synth-en",
               "batch_size": "8"}
# built only where data/synth-en is not prepared (e.g. a fresh clone)
SMALL_SYNTH_SIZES = {"train": 40, "dev": 4, "test": 48}
QUICK_SYNTH_SIZES = {"train": 8, "dev": 2, "test": 4}


def arguments(doc: str, argv=None, extra=None) -> argparse.Namespace:
    """--quick (fewer repetitions, smaller sizes) and --out, plus a benchmark's own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (a fast check)")
    parser.add_argument("--out", type=Path, help="the JSON file (default: bench/results/NAME.json)")
    if extra:
        extra(parser)
    return parser.parse_args(argv)


def machine() -> dict:
    """The machine description BENCHMARKS.md shows."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(ram, 1), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_1min": load, "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def report(name: str, args, result: dict, headers: list[str], rows: list[list]) -> dict:
    """Print the table and write {machine, quick, result..., table} to bench/results/NAME.json."""
    from steermoe.fsutil import write_json

    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    out = args.out or RESULTS / f"{name}.json"
    payload = {"benchmark": name, "quick": args.quick, "machine": machine(), **result,
               "table": {"headers": headers, "rows": cells}}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, payload)
    print(f"written {out}")
    return payload


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    met = ratio >= target if higher_is_better else ratio <= target
    return "met" if met else f"missed ({ratio:.2f} vs {'>=' if higher_is_better else '<='} {target:g})"


# ---- timing --------------------------------------------------------------------------------------------------
def interleaved(cases: dict, repetitions: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each case, run in alternating order round by round (this machine is noisy: cases timed
    side by side see the same load). Each case is called with the round number; warm-up rounds are not kept."""
    times = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(warmup + repetitions):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            cases[name](round_)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed_command(command: list[str], repetitions: int, **kwargs) -> list[float]:
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, **kwargs)
        times.append(time.perf_counter() - start)
    return times


# ---- models, data, run configs -------------------------------------------------------------------------------
def models_dir() -> Path:
    """The embedded models, imported where the workflow keeps them (a no-op when they are up to date)."""
    from steermoe.embedded import import_models

    folder = Path(os.environ.get("STEERMOE_MODELS", REPO / "models"))
    import_models(folder, list(MODELS), log=lambda message: None)
    return folder


def synth_en(tmp: Path, quick: bool = False) -> Path:
    """The folder holding synth-en/: the workflow's prepared corpus if present, else a small one built in tmp."""
    if (REPO / "data" / "synth-en" / "train.parquet").is_file():
        return REPO / "data"
    from steermoe.data.synth_en import build_synth_en

    sizes = QUICK_SYNTH_SIZES if quick else SMALL_SYNTH_SIZES
    print(f"data/synth-en is not prepared: building a small synth-en corpus {sizes} in {tmp}", file=sys.stderr)
    build_synth_en(tmp / "synth-en", sizes, progress=False)
    return tmp


def catalog_run(tmp: Path, data: Path, mode: str = "train", **overrides):
    """The embedded default experiment's run config, rendered from experiments/catalog.yaml and templates/ as the
    workflow renders it (matrix-row overrides allowed), with its outputs in tmp."""
    from steermoe.declare.matrix import load_matrix
    from steermoe.declare.render import render
    from steermoe.declare.runconfig import load_run_config

    row = {**DEFAULT_ROW, **overrides}
    matrix = tmp / f"matrix-{len(list(tmp.glob('matrix-*.tsv')))}.tsv"
    matrix.write_text("\t".join(row) + "\n" + "\t".join(str(v) for v in row.values()) + "\n")
    # the first experiment: the row on its dataset's first test set (synth-en has a second)
    exp = load_matrix(matrix, REPO / "experiments" / "catalog.yaml", results=str(tmp / "results"), data=str(data),
                      models=str(models_dir()))[0]
    path = Path(exp.train_config if mode == "train" else exp.test_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(exp, REPO / "templates", mode))
    return load_run_config(path)
