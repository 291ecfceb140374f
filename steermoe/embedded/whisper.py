"""Build a transformers Whisper folder (weights, config, tokenizer, feature extractor, generation config)
from a CTranslate2 Whisper export."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import torch

from steermoe.embedded.ct2 import count_layers, read_ct2, whisper_state_dict

LANGUAGE_TOKEN = re.compile(r"^<\|[a-z]{2,3}\|>$|^<\|haw\|>$|^<\|yue\|>$")


def convert_whisper(sources: list[Path], out: Path) -> None:
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperTokenizer)
    from transformers.generation import GenerationConfig

    parts = [p for p in sources if p.name.startswith("model.bin")]
    tokenizer_file = next(p for p in sources if p.name == "tokenizer.json")
    ct2_config = json.loads(next(p for p in sources if p.name == "config.json").read_text())
    spec, v = read_ct2(io.BytesIO(b"".join(p.read_bytes() for p in parts)))
    if spec != "WhisperSpec":
        raise ValueError(f"{parts[0]} holds a CTranslate2 {spec}, not a Whisper model")

    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file))
    token = tokenizer.convert_tokens_to_ids
    eot, sot = token("<|endoftext|>"), token("<|startoftranscript|>")
    languages = {t: i for t, i in sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1])
                 if LANGUAGE_TOKEN.match(t) and sot < i}
    # an English-only (.en) checkpoint's tokenizer lists the language tokens too; its vocabulary is one token short
    # of the multilingual 51,865 (the test transformers' own OpenAI conversion uses)
    multilingual = v["decoder/embeddings/weight"].shape[0] >= 51865
    config = WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=v["encoder/conv1/weight"].shape[0],
        encoder_layers=count_layers(v, "encoder"), decoder_layers=count_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot,
        tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in whisper_state_dict(v).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:  # proj_out is tied to the token embedding
        raise ValueError(f"Whisper conversion mismatch: missing {missing}, unexpected {unexpected}")

    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, is_multilingual=multilingual,
        no_timestamps_token_id=token("<|notimestamps|>"),
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        alignment_heads=ct2_config.get("alignment_heads", []),
    )
    if multilingual:
        generation.lang_to_id = languages
        generation.task_to_id = {"transcribe": token("<|transcribe|>"), "translate": token("<|translate|>")}
    model.generation_config = generation
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def check_whisper(folder: Path) -> None:
    """Load the folder back as a plain Whisper model and decode one second of silence: finite, decodes.
    (Accuracy on real speech is tested separately: tests/test_embedded.py.)"""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    features = WhisperFeatureExtractor.from_pretrained(folder)(np.zeros(16000, np.float32), sampling_rate=16000,
                                                                 return_tensors="pt").input_features
    with torch.no_grad():
        hidden = model.model.encoder(features).last_hidden_state
        if not torch.isfinite(hidden).all():
            raise ValueError(f"{folder}: the converted encoder produces non-finite values")
        tokens = model.generate(features, max_new_tokens=8)
    if tokens.shape[1] < 1:
        raise ValueError(f"{folder}: the converted model produced no tokens")
