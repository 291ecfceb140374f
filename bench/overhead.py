"""Overhead versus the model itself: a full training step versus the bare forward/backward. Target <= 1.15x.

Full step: the real SteerMoETrainer training the embedded default experiment (the catalog's synth-en settings,
batch 8, 3-6 s utterances), timed from the end of one step to the end of the next: FLAC decoding of the parquet
rows, the Collator's features, forward/backward, gradient clipping, the optimiser step, scheduler and callbacks.
Bare: the model's forward and backward alone on the tensors that step's Collator built. The two alternate step by
step (a callback runs the bare pass after each real step, outside the step's timing); medians after a warm-up step.

    python -m bench overhead [--quick] [--repetitions N]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from bench.common import arguments, catalog_run, median, report, synth_en, verdict
from bench.training import MIN_SECONDS, forward_backward, setup

TARGET = 1.15


class RememberingCollator:
    """The Trainer's collator, keeping the last batch it built (and how long building it took)."""

    def __init__(self, collate):
        self.collate, self.last, self.seconds = collate, None, []

    def __call__(self, rows):
        start = time.perf_counter()
        self.last = self.collate(rows)
        self.seconds.append(time.perf_counter() - start)
        return self.last


class BareAfterEachStep(TrainerCallback):
    def __init__(self, trainer, collator: RememberingCollator):
        self.trainer, self.collator = trainer, collator
        self.full, self.bare, self.resumed = [], [], None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.resumed is not None:  # the first step is the warm-up
            self.full.append(now - self.resumed)
        start = time.perf_counter()
        forward_backward(self.trainer, self.collator.last)
        if self.resumed is not None:
            self.bare.append(time.perf_counter() - start)
        self.resumed = time.perf_counter()


def main(argv=None) -> dict:
    args = arguments(__doc__, argv, lambda p: p.add_argument("--repetitions", type=int))
    repetitions = args.repetitions or (2 if args.quick else 8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trainer = setup(catalog_run(tmp, synth_en(tmp)))
        rows = trainer.train_dataset
        trainer.train_dataset = rows.subset([i for i, s in enumerate(rows.durations) if s >= MIN_SECONDS])
        if args.quick:
            trainer.args.per_device_train_batch_size = 2
        trainer.args.max_steps = 1 + repetitions
        trainer.data_collator = collator = RememberingCollator(trainer.data_collator)
        timer = BareAfterEachStep(trainer, collator)
        trainer.add_callback(timer)
        trainer.train()
    full, bare = median(timer.full), median(timer.bare)
    collate = median(collator.seconds[1:])
    ratio = full / bare
    result = {"batch_size": trainer.args.per_device_train_batch_size, "repetitions": repetitions,
              "full_step_seconds": timer.full, "bare_seconds": timer.bare, "collate_seconds": collator.seconds,
              "median_full": full, "median_bare": bare, "median_collate": collate, "ratio": ratio,
              "target": TARGET, "verdict": verdict(ratio, TARGET, higher_is_better=False)}
    rows = [["full step (Trainer: parquet rows -> collate -> fwd/bwd -> optimiser)", full, ratio],
            ["  of which Collator (FLAC already decoded; log-mel features)", collate, collate / bare],
            ["bare forward/backward on the collated tensors", bare, 1.0]]
    return report("overhead", args, result, ["what", "s (median)", "x bare"], rows)


if __name__ == "__main__":
    main()
