"""Evaluation protocols: which test rows a trained model decodes, how, and how they are scored.

honest  the whole test split; greedy (or beam) decoding with the config's settings; WER after Whisper's normaliser
        (the raw WER beside it), CER width- and case-folded, QA accuracy against the majority answer (metrics.py).
original  what the original code's evaluation did (forfrt/SteerMoE at c06a7a5; README, "The original code"), to
        read its numbers with: the 5 % subset that `datasets.Dataset.train_test_split(test_size=0.05, seed=42)` takes of
        the test split; sampling with the settings of Qwen2.5-Instruct's generation config (its generate() inherited
        them), once per sampling seed; raw WER/CER (no normalisation); QA with one row per annotator and the lenient
        substring match. Torch-free: the workflow reads PROTOCOLS at parse time.
"""
from __future__ import annotations

import math

PROTOCOLS = ("honest", "original")
ORIGINAL_SUBSET = {"test_size": 0.05, "seed": 42}
ORIGINAL_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def original_subset(rows: int) -> list[int]:
    """The row numbers, in their order, of `Dataset.train_test_split(test_size=0.05, seed=42)["test"]` on a split of
    `rows` rows: the first ceil(0.05 n) of NumPy's default generator's permutation (the datasets library's code)."""
    import numpy as np

    n_test = math.ceil(ORIGINAL_SUBSET["test_size"] * rows)
    return [int(i) for i in np.random.default_rng(ORIGINAL_SUBSET["seed"]).permutation(rows)[:n_test]]
