import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The suite computes in fp32 on every CPU, so that its numeric comparisons (DeepSpeed against plain training, two
# processes against one) mean the same on a CPU with fast bf16 as on one without; the precision policy's own tests
# inject the capabilities they test. Subprocesses (steermoe, snakemake, torchrun) inherit it.
os.environ.setdefault("STEERMOE_NATIVE_BF16", "0")


@pytest.fixture(scope="session")
def embedded_models():
    """The embedded model folders (imported once; later runs find them up to date)."""
    from steermoe.embedded import import_models

    return import_models(Path(os.environ.get("STEERMOE_MODELS", REPO / "models")))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny random Whisper and Qwen2 folders and a 32-utterance tone corpus (tests/tiny.py)."""
    from tests.tiny import save_tiny_models, tone_corpus

    root = tmp_path_factory.mktemp("tiny")
    encoder, decoder = save_tiny_models(root)
    return {"encoder": encoder, "decoder": decoder, "corpus": tone_corpus(root / "tones")}
