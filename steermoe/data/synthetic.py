"""The embedded default's synthetic corpora by name. Each is built by its own module, steermoe.data.NAME (the
corpus name with '_' for '-'), imported on first use so that checking a name stays cheap. A module has
DEFAULT_SIZES and build_NAME(out_dir, sizes, seed, workers, progress, only); the ASR corpora also have
targets(sizes, seed) -> {split: [target text]}, which planning reads before anything is built (synth-aqa's plan
has questions and durations of its own)."""
from __future__ import annotations

import importlib
from types import ModuleType

SYNTH_CORPORA = ("synth-en", "synth-aqa", "synth-zh", "speech-en", "speech-zh")


def corpus_module(name: str) -> ModuleType:
    return importlib.import_module(f"steermoe.data.{name.replace('-', '_')}")


def builder(name: str):
    return getattr(corpus_module(name), f"build_{name.replace('-', '_')}")
