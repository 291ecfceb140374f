"""Training throughput: samples/s of full training steps, our defaults versus the original approach. Target >= 3x.

Ours: the embedded default experiment as the catalog renders it (layer_wise, Whisper tiny.en + SmolLM2-135M,
pooling 4, dynamic encoder window, frozen LLM in bf16, bf16 autocast), batch 8 of 3-6 s synth-en utterances.
Original (bench/original.py): the same run with every input padded to 30 s, text padded to 448 tokens and no
attention masking. Both run the trainer's step (bench/training.py) on the same batches, interleaved round by round;
the median of the repetitions after a warm-up round.

    python -m bench throughput [--quick] [--repetitions N]
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import arguments, catalog_run, interleaved, median, report, synth_en, verdict
from bench.original import OriginalTrainer
from bench.training import batches, setup, step

TARGET = 3.0


def main(argv=None) -> dict:
    args = arguments(__doc__, argv, lambda p: p.add_argument("--repetitions", type=int))
    repetitions = args.repetitions or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synth_en(tmp)
        ours = setup(catalog_run(tmp, data))
        original = setup(catalog_run(tmp, data, encoder_window="30s"), OriginalTrainer)
        batch_size = 2 if args.quick else ours.args.per_device_train_batch_size
        plan = batches(ours.train_dataset, batch_size, 1 + repetitions)
        times = interleaved({"ours": lambda r: step(ours, plan[r]), "original": lambda r: step(original, plan[r])},
                            repetitions)
    seconds = {name: median(values) for name, values in times.items()}
    rate = {name: batch_size / s for name, s in seconds.items()}
    speedup = seconds["original"] / seconds["ours"]
    durations = [ours.train_dataset.durations[i] for b in plan for i in b]
    result = {"batch_size": batch_size, "repetitions": repetitions, "utterance_seconds": [min(durations),
              max(durations)], "step_seconds": times, "median_step_seconds": seconds, "samples_per_second": rate,
              "speedup": speedup, "target": TARGET, "verdict": verdict(speedup, TARGET)}
    rows = [["ours (dynamic window, masked, no text padding)", seconds["ours"], rate["ours"], speedup],
            ["original (30 s window, text to 448, no masking)", seconds["original"], rate["original"], 1.0]]
    return report("throughput", args, result, ["approach", "s/step (median)", "samples/s", "x faster"], rows)


if __name__ == "__main__":
    main()
