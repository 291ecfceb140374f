"""Markdown tables of the latest results (bench/results/*.json), for BENCHMARKS.md: `python -m bench.summary`."""
from __future__ import annotations

import json

from bench.__main__ import BENCHMARKS
from bench.common import RESULTS


def main() -> None:
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            print(f"### {name}\n\nnot run (no {path.name})\n")
            continue
        result = json.loads(path.read_text())
        if "table" not in result:
            print(f"### {name}\n\n{path.name} is from an older version of the benchmark: run it again\n")
            continue
        table = result["table"]
        m = result["machine"]
        print(f"### {name}\n")
        print(f"{m['date']}, {m['nproc']} x {m['cpu']}, load {m['load_average_1min']:.1f}"
              + (", --quick" if result["quick"] else "") + "\n")
        print("| " + " | ".join(table["headers"]) + " |")
        print("|" + "|".join("---" for _ in table["headers"]) + "|")
        for row in table["rows"]:
            print("| " + " | ".join(row) + " |")
        verdicts = {k: v for k, v in result.items() if k.startswith("verdict")}
        for key, value in verdicts.items():
            print(f"\n{key.replace('_', ' ')}: **{value}**")
        print()


if __name__ == "__main__":
    main()
