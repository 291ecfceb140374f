"""Storage: bytes per hour of audio in the common layout vs the original approach (log-mel padded to 30 s, fp32,
stored per utterance; target >= 10x smaller), and the final checkpoint's bytes vs 4 bytes x trainable parameters
(target <= 1.05x). Prints a table and writes bench/results/storage.json.

The checkpoint: the real trainer (`steermoe.run.train.train`) runs the embedded default experiment as the catalog
renders it for a few steps into a temporary folder; its `final/` folder (weights, steermoe.json,
train_summary.json) is measured whole.

    python -m bench storage [--quick] [--corpus DIR]   (default corpus: data/synth-en if prepared, else a small one)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import arguments, catalog_run, report, synth_en, verdict

PADDED_FRAMES = 3000  # Whisper's 30 s window: 3000 log-mel frames of 10 ms
AUDIO_TARGET = 10.0
CHECKPOINT_TARGET = 1.05


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


def checkpoint(tmp: Path, data: Path, steps: int) -> dict:
    from steermoe.run.train import train

    run = catalog_run(tmp, data, max_steps=steps, batch_size=2)
    summary = train(run, log=lambda message: None)
    final = Path(run.training.output_dir) / "final"
    trainable = sum(summary["trainable_parameters"].values())
    files = {p.name: p.stat().st_size for p in sorted(final.iterdir())}
    return {"final_files": files, "final_bytes": sum(files.values()), "trainable_parameters": trainable,
            "fp32_bytes": 4 * trainable, "checkpoint_ratio": sum(files.values()) / (4 * trainable)}


def main(argv=None) -> dict:
    args = arguments(__doc__, argv, lambda p: p.add_argument("--corpus", type=Path, help="a prepared corpus folder"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synth_en(tmp, quick=args.quick)
        result = measure(args.corpus or data / "synth-en")
        result.update(checkpoint(tmp, data, steps=1 if args.quick else 2))
    result["verdict_audio"] = verdict(result["ratio_mel80"], AUDIO_TARGET)
    result["verdict_checkpoint"] = verdict(result["checkpoint_ratio"], CHECKPOINT_TARGET, higher_is_better=False)
    rows = [["ours: FLAC 16 kHz in parquet (MB per hour)", result["ours_bytes_per_hour"] / 1e6, 1.0, ""]]
    for mels in (80, 128):
        rows.append([f"original: {mels}-mel fp32 padded to 30 s (MB per hour)",
                     result[f"padded_mel{mels}_bytes_per_hour"] / 1e6, result[f"ratio_mel{mels}"],
                     f">= {AUDIO_TARGET:g}x smaller" if mels == 80 else ""])
    rows.append([f"final checkpoint (MB; {result['trainable_parameters']:,} trainable parameters)",
                 result["final_bytes"] / 1e6, result["checkpoint_ratio"], f"<= {CHECKPOINT_TARGET:g}x fp32 bytes"])
    print(f"({result['utterances']} utterances, {result['hours']:.2f} h of audio in {result['corpus']})")
    return report("storage", args, result, ["what", "size", "ratio", "target"], rows)


if __name__ == "__main__":
    main()
