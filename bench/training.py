"""Training steps for the benchmarks, built from the trainer's own parts.

`setup` builds what `steermoe.run.train.train` builds for a run config (model with its frozen parts in the catalog's
dtypes, the prepared rows, the Collator with on-the-fly features, SteerMoETrainer with its three optimiser groups
and the steering-clip hook); `step` does what the Trainer's loop does for one batch: decode the rows' FLAC, collate
(features), forward and backward under the Trainer's autocast, the global gradient clip, the optimiser step (the
steering clip runs in its pre-hook) and zero_grad.

The original approach (bench/original.py) swaps in its own loss; everything else is the same.
"""
from __future__ import annotations

import torch

MIN_SECONDS = 3.0  # the benchmarks' utterances: 3-6 s (synth-en's longest are 4.4 s)


def setup(run, trainer_class=None):
    from steermoe.model.features import AudioFeatures
    from steermoe.run.batching import Collator
    from transformers import PrinterCallback

    from steermoe.run import precision
    from steermoe.run.loading import load_model, load_rows
    from steermoe.run.train import training_arguments
    from steermoe.run.trainer import SteerMoETrainer

    torch.manual_seed(run.top.seed)
    quiet = lambda message: None
    decision = precision.for_run(run, quiet)
    model = load_model(run, decision.weights)
    rows = load_rows(run, run.top.parquet_dirs, "parquet_dirs")
    collator = Collator(AudioFeatures(model.encoder.kind, model.encoder.num_mel_bins, run.top.encoder_window),
                        run.top.textual_prompt)
    trainer = (trainer_class or SteerMoETrainer)(
        model=model, args=training_arguments(run, decision.precision, False), train_dataset=rows,
        data_collator=collator, run=run, log=quiet)
    trainer.remove_callback(PrinterCallback)  # as `train` does: no per-log printing
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's own loop, read by training_step
    trainer.state.global_step = 1  # steering analysis (every steering_log_interval steps) off: a timed step
    return trainer


def batches(rows, batch_size: int, count: int, min_seconds: float = MIN_SECONDS) -> list[list[int]]:
    """`count` batches of utterances of at least min_seconds, in corpus order (the same for every approach)."""
    long = [i for i, seconds in enumerate(rows.durations) if seconds >= min_seconds]
    if len(long) < batch_size:
        raise SystemExit(f"only {len(long)} utterances of >= {min_seconds} s in the corpus; need {batch_size}")
    return [[long[(k * batch_size + j) % len(long)] for j in range(batch_size)] for k in range(count)]


def step(trainer, indices: list[int]) -> float:
    """One full training step on these rows; returns the loss."""
    model = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in indices])
    with trainer.accelerator.autocast():
        loss = trainer.training_step(model, batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, trainer.args.max_grad_norm)
    trainer.optimizer.step()
    model.zero_grad(set_to_none=True)
    return float(loss)


def forward_backward(trainer, batch: dict) -> float:
    """The model alone: forward and backward on a collated batch, under the same autocast; gradients dropped."""
    model = trainer.model
    with trainer.accelerator.autocast():
        loss = model(batch["features"], batch["feature_lengths"], batch["targets"], batch["prompts"]).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()
