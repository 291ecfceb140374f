"""Memory: peak RSS of a training step, ours versus the original approach.

Each approach runs in its own child process (so peaks never mix): it builds the trainer for the embedded default
experiment (ours) or its original-approach variant (bench/original.py), runs a warm-up step, resets the kernel's
peak-RSS mark (/proc/self/clear_refs) and runs more steps. Reported per approach: RSS before the timed steps (the
models and data), the peak RSS during the steps (VmHWM), and the child's lifetime peak: the larger of the peak
before the reset (loading the models) and the step peak. Not ru_maxrss: Linux carries into it the peak of the
address space that exec replaced, which for a vforked child is the parent's.

    python -m bench memory [--quick]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, arguments, catalog_run, report, synth_en

APPROACHES = ("ours", "original")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(approach: str, quick: bool) -> dict:
    from bench.original import OriginalTrainer
    from bench.training import batches, setup, step

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synth_en(tmp)
        if approach == "ours":
            trainer = setup(catalog_run(tmp, data))
        else:
            trainer = setup(catalog_run(tmp, data, encoder_window="30s"), OriginalTrainer)
        batch_size = 2 if quick else trainer.args.per_device_train_batch_size
        plan = batches(trainer.train_dataset, batch_size, 3)
        step(trainer, plan[0])
        setup_peak = _status_kib("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        before = _status_kib("VmRSS")
        for indices in plan[1:]:
            step(trainer, indices)
        step_peak = _status_kib("VmHWM")
        return {"batch_size": batch_size, "rss_before_steps_mib": before / 1024, "step_peak_rss_mib": step_peak / 1024,
                "lifetime_peak_rss_mib": max(setup_peak, step_peak) / 1024}


def measure(approach: str, quick: bool) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", approach] + (["--quick"] if quick else [])
    proc = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory child for {approach} failed ({proc.returncode}): {proc.stdout[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    args = arguments(__doc__, argv, lambda p: p.add_argument("--child", choices=APPROACHES, help=argparse.SUPPRESS))
    if args.child:
        print(json.dumps(child(args.child, args.quick)))
        return {}
    found = {approach: measure(approach, args.quick) for approach in APPROACHES}
    ours, original = found["ours"], found["original"]
    result = {**found, "step_peak_ratio": original["step_peak_rss_mib"] / ours["step_peak_rss_mib"],
              "step_growth_ratio": (original["step_peak_rss_mib"] - original["rss_before_steps_mib"])
              / max(ours["step_peak_rss_mib"] - ours["rss_before_steps_mib"], 1e-9)}
    rows = [[name, f["rss_before_steps_mib"], f["step_peak_rss_mib"],
             f["step_peak_rss_mib"] - f["rss_before_steps_mib"], f["lifetime_peak_rss_mib"]]
            for name, f in found.items()]
    return report("memory", args, result, ["approach", "RSS before steps (MiB)", "step peak RSS (MiB)",
                                           "step adds (MiB)", "process peak (MiB)"], rows)


if __name__ == "__main__":
    main()
