"""Run the benchmarks: `python -m bench [--quick] [NAME ...]` (all of them by default, in this order).

Each benchmark runs in its own Python process (no shared memory peaks, caches or threads), prints its table and
writes bench/results/NAME.json; the run goes on past a failed benchmark and exits non-zero at the end if any failed.
A benchmark's own options: `python -m bench.NAME --help`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import REPO

BENCHMARKS = ["precision", "devices", "throughput", "overhead", "evaluation", "orchestration", "storage", "memory",
              "data", "gpu"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (a fast check)")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or BENCHMARKS:
        print(f"\n== {name} ==", flush=True)
        start = time.time()
        code = subprocess.run([sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else []),
                              cwd=REPO).returncode
        print(f"({name}: {time.time() - start:.0f} s{'' if code == 0 else f', FAILED with exit code {code}'})",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
