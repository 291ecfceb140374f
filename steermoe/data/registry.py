"""Where each corpus of steermoe.declare.corpora is built or read. A synthetic corpus NAME is built by its own module,
steermoe.data.NAME (the name with '_' for '-'), imported on first use. A module has DEFAULT_SIZES and
build_NAME(out_dir, sizes, seed, workers, progress, only); the ASR corpora also have targets(sizes, seed) -> {split:
[target text]}, which planning reads before anything is built (synth-aqa's plan has questions and durations of its
own). A real corpus is read by its reader in steermoe.data.corpora.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from steermoe.declare.corpora import REAL_CORPORA


def corpus_module(name: str) -> ModuleType:
    return importlib.import_module(f"steermoe.data.{name.replace('-', '_')}")


def builder(name: str):
    return getattr(corpus_module(name), f"build_{name.replace('-', '_')}")


def reader(name: str):
    """The reader of real corpus `name` (steermoe.data.corpora)."""
    return getattr(importlib.import_module("steermoe.data.corpora"), REAL_CORPORA[name].reader)
