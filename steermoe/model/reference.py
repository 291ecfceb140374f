"""Reference rows (method `reference`): the frozen encoder's own model decoded with no training, as the SteerMoE paper's
"Whisper-large-v3 (frozen)" row: Whisper's own decoder on the test split. Whisper only: FireRedASR's own decoder is
not wired.

Whisper's decoder was trained on 30-s windows, so its features are always padded to 30 s, whatever the config's
encoder_window (a setting of SteerMoE's encoder). An English-only checkpoint (.en) takes no language or task token;
a multilingual one transcribes each row in its language (the prepared data's `language` column), or in the
language it detects itself where the rows carry none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from steermoe.declare.settings import WHISPER_WINDOW
from steermoe.errors import DataError, ModelFolderError
from steermoe.model.encoders import read_model_config
from steermoe.model.features import AudioFeatures

DECODER = "whisper's own"  # the decoder's name in metrics.json
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # a fast or a slow tokenizer's vocabulary: either will do


def check_folder(path: Path) -> None:
    """That a folder holds a whole Whisper model (its decoder's generation config, tokenizer and weights included),
    from its files alone."""
    model_type = read_model_config(path).get("model_type")
    if model_type != "whisper":
        raise ModelFolderError(f"{path} holds a {model_type!r} model; reference decoding needs a Whisper model "
                               f"folder (it decodes with Whisper's own decoder)")
    missing = [what for what, present in (
        ("generation_config.json", (path / "generation_config.json").is_file()),
        (" or ".join(TOKENIZER_FILES), any((path / name).is_file() for name in TOKENIZER_FILES)),
        ("*.safetensors weights", any(path.glob("*.safetensors")))) if not present]
    if missing:
        raise ModelFolderError(f"{path} has no {', no '.join(missing)}: reference decoding needs the whole Whisper "
                               f"model's folder (decoder, tokenizer, generation config)")


def language_plan(multilingual: bool, languages: list[str | None], source: str) -> tuple[bool, str]:
    """Whether a model decodes the test rows in their own `languages` (one per row), and how metrics.json says which
    language was decoded. A multilingual model told nothing detects the language itself."""
    if not multilingual:
        return False, "en (an English-only model: no language token)"
    given = [language for language in languages if language]
    if not given:
        return False, "detected by the model (the test rows carry no language)"
    if len(given) < len(languages):
        raise DataError(f"{source}: {len(languages) - len(given)} of {len(languages)} rows carry no language; a "
                        f"multilingual reference model is told each row's language: prepare the data with "
                        f"`steermoe data prepare`, which writes it")
    return True, ", ".join(sorted(set(given)))


class WhisperReference:
    """Whisper's own model from a local folder (never a hub), frozen, decoding batches of test rows."""

    def __init__(self, folder: Path, dtype: torch.dtype, device: torch.device):
        from transformers import WhisperForConditionalGeneration, WhisperTokenizer

        check_folder(folder)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = WhisperTokenizer.from_pretrained(folder, local_files_only=True)
        self.features = AudioFeatures("whisper", self.model.config.num_mel_bins, WHISPER_WINDOW)
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        self.device = device

    def collate(self, rows: list[dict]) -> dict:
        """Rows -> {features (B, n_mels, 3000): 30-s windows, languages (B,): the rows' own, None where unknown}."""
        features, _ = self.features([np.asarray(r["audio"], dtype=np.float32) for r in rows])
        return {"features": features, "languages": [r.get("language") for r in rows]}

    def transcribe(self, batch: dict, in_their_languages: bool, max_new_tokens: int, num_beams: int,
                   repetition_penalty: float) -> list[str]:
        """One hypothesis per row of a collated batch: greedy (num_beams 1) or beam search, no sampling."""
        options = {}
        if self.multilingual:
            options["task"] = "transcribe"
            if in_their_languages:
                options["language"] = batch["languages"]
        tokens = self.model.generate(batch["features"].to(self.device, self.model.dtype),
                                     max_new_tokens=max_new_tokens, num_beams=num_beams,
                                     repetition_penalty=repetition_penalty, do_sample=False,
                                     **options)  # (B, start tokens + generated)
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
