"""Tiny random models for unit tests: real transformers classes, seconds to build, no files needed."""
from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import (LlamaConfig, LlamaForCausalLM, ParakeetEncoderConfig, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM, WhisperConfig)

from steermoe.declare.model_config import SteerMoEConfig
from steermoe.model.encoders import encoder_from_config
from steermoe.model.modeling import SteerMoEModel

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<|im_end|>", "<|im_start|>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def whisper_config(n_mels=80, layers=2, d=32) -> WhisperConfig:
    return WhisperConfig(num_mel_bins=n_mels, d_model=d, encoder_layers=layers, encoder_attention_heads=4,
                         encoder_ffn_dim=2 * d, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=2 * d,
                         max_source_positions=1500, vocab_size=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=1, decoder_start_token_id=1)


def parakeet_config(layers=2, d=32) -> ParakeetEncoderConfig:
    return ParakeetEncoderConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=4,
                                 intermediate_size=2 * d, subsampling_conv_channels=8, num_mel_bins=80)


def fireredasr_config(layers=2, d=32):
    from steermoe.model.fireredasr import FireRedConfig

    return FireRedConfig(idim=80, n_layers_enc=layers, n_head=4, d_model=d, kernel_size=5)


def decoder(kind="qwen2", hidden=48, vocab=128):
    if kind == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
        return Qwen2ForCausalLM(cfg)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg)


def tiny_model(method="layer_wise", encoder="whisper", decoder_kind="qwen2", seed=0, decoder_generation=None,
               decoder_dtype=torch.float32, **options) -> SteerMoEModel:
    """decoder_generation: a GenerationConfig the decoder comes with, as a released LLM's folder has one;
    decoder_dtype: the frozen LLM's weights (training's llm_decoder.dtype)."""
    torch.manual_seed(seed)
    enc_cfg = {"whisper": whisper_config, "parakeet": parakeet_config, "fireredasr": fireredasr_config}[encoder]()
    window = options.pop("encoder_window", "dynamic")
    stack = encoder_from_config(enc_cfg, window).eval()
    if encoder == "fireredasr":  # its pos_bias_u/v start at zero: random, so relative positions matter here
        for name, param in stack.named_parameters():
            if "pos_bias" in name:
                param.data.normal_()
    config = SteerMoEConfig(method=method, encoder_window=window, num_experts=4, **options)
    llm = decoder(decoder_kind).to(decoder_dtype).eval()
    if decoder_generation is not None:
        llm.generation_config = decoder_generation
    return SteerMoEModel(config, stack, llm, char_tokenizer()).eval()


def features(encoder: str, frames: list[int], n_mels=80, seed=0):
    """Random log-mel-like features, zero beyond each length, in the encoder's layout."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(frames)
    feats = torch.zeros(len(frames), n_mels, max(frames))
    for i, n in enumerate(frames):
        feats[i, :, :n] = torch.randn(n_mels, n, generator=g)
    if encoder != "whisper":
        feats = feats.transpose(1, 2).contiguous()  # Parakeet and FireRedASR take (B, F, n_mels)
    return feats, lengths


def save_tiny_models(root) -> tuple[str, str]:
    """Tiny random Whisper and Qwen2 (with the char tokenizer) as Hugging Face folders, as a user would have them."""
    from pathlib import Path

    from transformers import WhisperForConditionalGeneration

    root = Path(root)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(whisper_config()).save_pretrained(root / "whisper-tiny-random")
    decoder().save_pretrained(root / "qwen2-tiny-random")
    char_tokenizer().save_pretrained(root / "qwen2-tiny-random")
    return str(root / "whisper-tiny-random"), str(root / "qwen2-tiny-random")


def kaldi_matrix(stats) -> bytes:
    """A Kaldi binary double matrix ("\\0B", "DM ", rows, cols), as compute-cmvn-stats writes cmvn.ark."""
    import struct

    import numpy as np

    stats = np.asarray(stats, dtype="<f8")
    return b"\0BDM " + struct.pack("<bibi", 4, stats.shape[0], 4, stats.shape[1]) + stats.tobytes()


def save_fireredasr_folder(out, layers=2, d=32, heads=4, kernel_size=5, seed=0):
    """A FireRedASR-AED release folder with random weights, written as the release is: model.pth.tar (args +
    model_state_dict of the reference package's ConformerEncoder, plus a stand-in decoder weight), cmvn.ark, and
    the tokenizer files. Every parameter is random (LayerNorms included), so parity tests compare everything."""
    import argparse
    from pathlib import Path

    from fireredasr.models.module.conformer_encoder import ConformerEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    reference = ConformerEncoder(80, layers, heads, d, kernel_size=kernel_size)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            fan_in = param[0].numel() if param.dim() > 1 else 1
            base = 1.0 if "layer_norm" in name or "batch_norm" in name else 0.0
            param.copy_(base + torch.randn(param.shape, generator=g) / fan_in ** 0.5)
    args = argparse.Namespace(idim=80, n_layers_enc=layers, n_layers_dec=layers, n_head=heads, d_model=d,
                              residual_dropout=0.1, dropout_rate=0.1, kernel_size=kernel_size, pe_maxlen=5000,
                              odim=16, sos_id=3, eos_id=4, pad_id=2)
    state = {f"encoder.{k}": v for k, v in reference.state_dict().items()}
    state["decoder.tgt_word_emb.weight"] = torch.randn(16, d, generator=g)
    torch.save({"args": args, "model_state_dict": state}, out / "model.pth.tar")
    # fbank statistics of 1000 frames: means around 10, variances around 4 (log-mel energies of speech)
    mean = 10 + torch.randn(80, generator=g, dtype=torch.float64)
    var = 4 + torch.rand(80, generator=g, dtype=torch.float64)
    count = 1000.0
    stats = [[*(mean * count).tolist(), count], [*((var + mean ** 2) * count).tolist(), 0.0]]
    (out / "cmvn.ark").write_bytes(kaldi_matrix(stats))
    (out / "dict.txt").write_text("<blank> 0\n<unk> 1\n<pad> 2\n<sos> 3\n<eos> 4\n")
    (out / "train_bpe1000.model").write_bytes(b"stand-in sentencepiece model")
    return str(out), reference


def tiny_catalog(encoder: str, decoder: str, corpus: str, **settings) -> dict:
    """A workflow catalog of the tiny models (tiny-whisper, tiny-qwen) and a tone corpus (tones); `settings`
    override the defaults' settings."""
    base = {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "num_experts": 4, "logging_steps": 1,
            "eval_steps": 2, "max_new_tokens": 8, "bootstrap_resamples": 50}
    return {
        "defaults": {"settings": {**base, **settings},
                     "resources": {"gpus": 0, "mem_mb": 2000, "runtime": 10, "threads": 1}},
        "encoders": {"tiny-whisper": {"type": "whisper", "path": encoder}},
        "decoders": {"tiny-qwen": {"path": decoder}},
        "datasets": {"tones": {"prepare": {"corpus": "parquet",
                                           "root": [f"{corpus}/{s}.parquet" for s in ("train", "dev", "test")]},
                               "splits": {"train": "train", "dev": "dev", "test": "test"},
                               "metric": "wer", "prompt": "say: "}},
    }


WORDS = ["one", "two", "three", "four", "five", "six"]


def tone_corpus(out, sizes=None, seed=0) -> str:
    """A prepared corpus of short tone sequences, each labelled with the words of its tones (0.2-0.6 s)."""
    import numpy as np

    from steermoe.data.audio import encode_flac
    from steermoe.data.layout import RawItem, prepare_corpus

    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 32, "dev": 4, "test": 8}
    splits = {}
    for split, n in sizes.items():
        items = []
        for i in range(n):
            tones = rng.integers(0, len(WORDS), size=int(rng.integers(1, 4)))
            t = np.arange(int(0.2 * 16000)) / 16000
            audio = np.concatenate([0.3 * np.sin(2 * np.pi * (300 + 150 * k) * t) for k in tones]).astype(np.float32)
            items.append(RawItem(id=f"{split}-{i:03d}", audio=encode_flac(audio), text=" ".join(WORDS[k] for k in tones),
                                 source=f"tone {split} {i}", speaker="tone"))
        splits[split] = items
    prepare_corpus("tones", splits, out, workers=1, progress=False)
    return str(out)
