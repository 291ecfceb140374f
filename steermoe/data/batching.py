"""From a prepared split to model batches: lazy FLAC decoding, on-the-fly features, length-grouped batches."""
from __future__ import annotations

import random

import numpy as np
import torch

from steermoe.data.audio import decode
from steermoe.data.layout import read_split
from steermoe.features import AudioFeatures


class PreparedSplit(torch.utils.data.Dataset):
    """One prepared split; audio stays FLAC in memory and is decoded per item."""

    def __init__(self, corpus_dir, split: str):
        table = read_split(corpus_dir, split)
        self.columns = {name: table.column(name).to_pylist() for name in table.column_names}
        self.durations = self.columns["duration"]

    def __len__(self) -> int:
        return len(self.durations)

    def __getitem__(self, index: int) -> dict:
        row = {name: values[index] for name, values in self.columns.items() if name != "audio"}
        return {**row, "audio": decode(self.columns["audio"][index])}


class Collator:
    """Rows -> {features (B, ...), feature_lengths (B,), targets, prompts, ids}. Text is tokenised by the model
    and padded to the batch's longest sequence, never to a fixed length."""

    def __init__(self, features: AudioFeatures, textual_prompt: str):
        self.features, self.textual_prompt = features, textual_prompt

    def __call__(self, rows: list[dict]) -> dict:
        feats, lengths = self.features([np.asarray(r["audio"], dtype=np.float32) for r in rows])
        return {"features": feats, "feature_lengths": lengths, "targets": [r["text"] for r in rows],
                "prompts": [self.textual_prompt + (r.get("prompt") or "") for r in rows],
                "ids": [r["id"] for r in rows]}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar duration (less padding), in a seeded random order that changes per epoch.

    The split is shuffled, cut into windows of `window` batches, each window sorted by duration and cut into
    batches; then the batch order is shuffled. Every index appears exactly once per epoch.
    """

    def __init__(self, durations: list[float], batch_size: int, seed: int = 0, window: int = 50):
        self.durations, self.batch_size, self.seed, self.window = durations, batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.durations)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.durations.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return -(-len(self.durations) // self.batch_size)
