"""Storage: bytes per hour of audio in the common layout vs the original approach (log-mel padded to 30 s, fp32,
stored per utterance). Prints a table and writes bench/results/storage.json.

    python -m bench.storage [--corpus DIR]   (default: builds a small synth-en corpus in a temporary folder)
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

PADDED_FRAMES = 3000  # Whisper's 30 s window: 3000 log-mel frames of 10 ms


def measure(corpus: Path) -> dict:
    files = sorted(corpus.glob("*.parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    hours = sum(sum(pq.read_table(f, columns=["duration"]).column(0).to_pylist()) for f in files) / 3600
    ours = sum(f.stat().st_size for f in files)
    result = {"corpus": str(corpus), "utterances": rows, "hours": hours, "ours_bytes_per_hour": ours / hours}
    for mels in (80, 128):
        padded = rows * mels * PADDED_FRAMES * 4
        result[f"padded_mel{mels}_bytes_per_hour"] = padded / hours
        result[f"ratio_mel{mels}"] = padded / ours
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a prepared corpus folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "storage.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from steermoe.data.synth_en import build_synth_en
            corpus = Path(tmp) / "synth-en"
            build_synth_en(corpus, {"train": 120, "dev": 10, "test": 20}, progress=False)
        result = measure(corpus)
    print(f"{'layout':<34}{'MB per hour':>14}{'x smaller':>12}")
    print(f"{'ours: FLAC 16 kHz in parquet':<34}{result['ours_bytes_per_hour'] / 1e6:>14.1f}{'1.0':>12}")
    for mels in (80, 128):
        print(f"{f'original: {mels}-mel fp32 padded to 30 s':<34}"
              f"{result[f'padded_mel{mels}_bytes_per_hour'] / 1e6:>14.1f}{result[f'ratio_mel{mels}']:>12.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"({result['utterances']} utterances, {result['hours']:.2f} h; written {args.out})")


if __name__ == "__main__":
    main()
