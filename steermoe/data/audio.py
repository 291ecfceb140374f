"""Audio I/O for preparation: decode anything soundfile reads (or a Lhotse cut), down-mix to mono, resample to
16 kHz, encode FLAC."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from steermoe.declare.settings import SAMPLE_RATE


class AudioError(ValueError):
    """Audio that cannot be used. `reason` is a fixed category (counted in manifests); `detail` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class CutAudio:
    """A Lhotse cut's audio, as its to_dict() describes it, read by Lhotse itself: a segment of a recording, some of
    its channels, its transforms (speed, volume)."""
    cut: dict

    def files(self) -> list[str]:
        return [s["source"] for s in self.cut.get("recording", {}).get("sources", []) if s["type"] == "file"]

    def load(self) -> tuple[np.ndarray, int]:
        """(samples, channels) float32 at the cut's sampling rate."""
        from lhotse.serialization import deserialize_item

        try:
            cut = deserialize_item(self.cut)
            return np.asarray(cut.load_audio(), dtype=np.float32).T, int(cut.sampling_rate)
        except Exception as err:  # Lhotse raises what its audio backends raise
            raise AudioError("undecodable audio", f"{type(err).__name__}: {err}") from None


def decode(source, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Path, encoded bytes or a CutAudio -> float32 mono at target_rate. Deterministic (soxr, fixed quality)."""
    import soundfile as sf
    import soxr

    if isinstance(source, CutAudio):
        data, rate = source.load()
    else:
        try:
            with sf.SoundFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as handle:
                data, rate, cut = handle.read(dtype="float32", always_2d=True), handle.samplerate, _truncated(handle)
        except Exception as err:  # soundfile raises several types for bad data; all mean the same here
            raise AudioError("undecodable audio", f"{type(err).__name__}: {err}") from None
        if cut:
            raise AudioError("truncated audio", cut)
    if data.shape[0] == 0:
        raise AudioError("empty audio", "0 samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _truncated(handle) -> str | None:
    """A WAV file cut off before the end its header states (libsndfile decodes what is there without an error).
    Streaming writers' placeholder sizes are no sign of it: 0, and 0x7FFFF000 and above (espeak-ng --stdout writes
    0x7FFFF000, others 0xFFFFFFFF)."""
    import re

    found = re.search(r"^data : (\d+) \(should be (\d+)\)", handle.extra_info, re.M)
    if found and 0 < int(found[2]) < int(found[1]) < 0x7FFFF000:
        return f"the data chunk holds {found[2]} of the {found[1]} bytes its header states"
    return None


def encode_flac(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """float32 mono -> 16-bit FLAC bytes (lossless for 16-bit PCM, about half the size of WAV)."""
    import soundfile as sf

    buffer = io.BytesIO()
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(buffer, pcm, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
