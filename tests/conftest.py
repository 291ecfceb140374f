import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
