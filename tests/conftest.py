import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def embedded_models():
    """The embedded model folders (imported once; later runs find them up to date)."""
    from steermoe.embedded import import_models

    return import_models(Path(os.environ.get("STEERMOE_MODELS", REPO / "models")))
