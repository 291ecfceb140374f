"""Audio streamed to a pipe: the WAV header's size is a placeholder, not a sign of truncation."""
import shutil
import subprocess

import pytest

from steermoe.data.audio import decode
from steermoe.declare.settings import SAMPLE_RATE


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (scripts/setup.sh)")
def test_espeak_stdout_wav_decodes():
    """espeak-ng --stdout (how synth-en and synth-zh get their espeak voices) states 0x7FFFF000 data bytes."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", "hello there"], capture_output=True,
                         check=True).stdout
    assert int.from_bytes(wav[40:44], "little") == 0x7FFFF000
    audio = decode(wav)
    assert 0.3 * SAMPLE_RATE < len(audio) < 3 * SAMPLE_RATE
