"""On-the-fly encoder features: 16 kHz mono waveforms -> log-mel (Whisper), normalised log-mel fbank (Parakeet), or
Kaldi fbank (FireRedASR-AED; its global CMVN lives with the encoder, which applies it: steermoe/model/fireredasr.py).

Each utterance is featurised on its own and zero-padded to the batch maximum, so an utterance's features do not
depend on its batch mates. Whisper's 30 s window (original behaviour) pads the *audio* to 30 s first.
"""
from __future__ import annotations

import numpy as np
import torch

from steermoe.declare.settings import DYNAMIC_WINDOW, SAMPLE_RATE, WHISPER_WINDOW
from steermoe.errors import DataError

WHISPER_SECONDS = 30.0  # Whisper's window: 3000 mel frames, 1500 encoder positions


class AudioFeatures:
    def __init__(self, kind: str, num_mel_bins: int, window: str = DYNAMIC_WINDOW):
        from transformers import ParakeetFeatureExtractor, WhisperFeatureExtractor

        self.kind, self.window = kind, window
        if kind == "whisper":
            self.extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
        elif kind == "fireredasr":
            self.extractor = KaldiFbank(num_mel_bins)
        else:
            self.extractor = ParakeetFeatureExtractor(feature_size=num_mel_bins)

    def __call__(self, waveforms: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return features (B, n_mels, F) for Whisper or (B, F, n_mels) for Parakeet and FireRedASR, and frame counts
        (B,)."""
        if self.kind == "whisper":
            longest = max(len(w) for w in waveforms) / SAMPLE_RATE
            if longest > WHISPER_SECONDS + 0.01:  # the extractor would cut it to 30 s without a word
                raise DataError(f"Whisper hears at most {WHISPER_SECONDS:.0f} s of audio; an utterance of "
                                f"{longest:.1f} s reached it: lower max_audio_length (training) or keep "
                                f"filter_dataset on; evaluation decodes such utterances in windows")
            padding = "max_length" if self.window == WHISPER_WINDOW else "longest"
            per_utt = [self.extractor(w, sampling_rate=SAMPLE_RATE, padding=padding, truncation=False,
                                      return_tensors="pt").input_features[0] for w in waveforms]  # (n_mels, F_b)
            time_axis = 1
        elif self.kind == "fireredasr":
            per_utt, time_axis = [self.extractor(w) for w in waveforms], 0
        else:
            per_utt = []
            for w in waveforms:
                out = self.extractor(w, sampling_rate=SAMPLE_RATE, return_tensors="pt")
                per_utt.append(out.input_features[0, : int(out.attention_mask.sum())])  # (F_b, n_mels)
            time_axis = 0
        lengths = torch.tensor([f.shape[time_axis] for f in per_utt])
        longest = int(lengths.max())
        shape = (len(per_utt),) + ((per_utt[0].shape[0], longest) if time_axis else (longest, per_utt[0].shape[1]))
        batch = torch.zeros(shape)
        for b, f in enumerate(per_utt):
            if time_axis:
                batch[b, :, : f.shape[1]] = f
            else:
                batch[b, : f.shape[0]] = f
        return batch, lengths


class KaldiFbank:
    """FireRedASR's fbank, as its release computes it (fireredasr/data/asr_feat.py): kaldi-native-fbank, 25 ms
    windows every 10 ms, no dither, on int16-scaled samples (the release reads 16-bit WAV as integers)."""

    def __init__(self, num_mel_bins: int = 80):
        import kaldi_native_fbank as knf

        self.knf = knf
        self.options = knf.FbankOptions()
        self.options.frame_opts.dither = 0.0
        self.options.frame_opts.snip_edges = True
        self.options.mel_opts.num_bins = num_mel_bins

    def __call__(self, waveform: np.ndarray) -> torch.Tensor:
        """(samples,) float in [-1, 1] at 16 kHz -> (F, n_mels) log fbank."""
        fbank = self.knf.OnlineFbank(self.options)
        fbank.accept_waveform(SAMPLE_RATE, (np.asarray(waveform, dtype=np.float32) * 32768.0).tolist())
        frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
        if not frames:
            return torch.zeros(0, self.options.mel_opts.num_bins)
        return torch.from_numpy(np.stack(frames)).float()
