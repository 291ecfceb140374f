"""FireRedASR-AED's Conformer encoder (the original code's `conformer`), read from the release folder as published.

The release (FireRedASR-AED-L) is a folder of
    model.pth.tar          torch.save({"args": argparse.Namespace, "model_state_dict": {...}}); encoder.* is ours
    cmvn.ark               Kaldi global CMVN statistics (2 x 81 binary matrix) for its 80-bin fbank
    dict.txt, train_bpe1000.model   the AED decoder's tokenizer (unused here, checked so a partial copy is caught)

The modules below are this project's own code with the release's parameter names, so its state dict loads as is.
They compute what the reference `fireredasr` package (PyPI, Apache-2.0: fireredasr/models/module/conformer_encoder.py)
computes; tests/test_fireredasr.py proves it against that package. Own code because the reference cannot be built on
the meta device (its positional table calls .item() at construction), which `steermoe params` and `plan` need.

The checkpoint is unpickled with torch.load(weights_only=True) allowing argparse.Namespace only, beside tensors.
"""
from __future__ import annotations

import argparse
import math
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from steermoe.declare.settings import DYNAMIC_WINDOW
from steermoe.errors import ModelFolderError

CHECKPOINT = "model.pth.tar"
CMVN = "cmvn.ark"
TOKENIZER_FILES = ("dict.txt", "train_bpe1000.model")
ARGS = ("idim", "n_layers_enc", "n_head", "d_model", "kernel_size")  # what the encoder's shape is read from
FORMAT = (f"the FireRedASR-AED release's {CHECKPOINT}: a torch.save'd dict with 'args' (an argparse.Namespace with "
          f"{', '.join(ARGS)}) and 'model_state_dict' (encoder.* and decoder.* weights)")


@dataclass
class FireRedConfig:
    """The encoder's shape, named as the release's `args` name it."""
    idim: int = 80  # fbank bins
    n_layers_enc: int = 16
    n_head: int = 20
    d_model: int = 1280
    kernel_size: int = 33  # depthwise convolution
    model_type: str = "fireredasr_aed"


# ---- modules (names follow the release's state dict) --------------------------------------------------------------
class Conv2dSubsampling(nn.Module):
    """Two stride-2 3x3 convolutions over (time, frequency): 4x fewer frames, then a linear map to d_model."""

    def __init__(self, idim: int, d_model: int, channels: int = 32):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2),
                                  nn.ReLU())
        self.out = nn.Linear(channels * (((idim - 1) // 2 - 1) // 2), d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x[:, None])  # (B, F, idim) -> (B, C, T, idim')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T, D)


class FeedForward(nn.Module):
    """Pre-LN Swish feed-forward, 4x wide; returns the residual branch only (the block weighs it by a half)."""

    def __init__(self, d: int):
        super().__init__()
        # indices 0, 1, 4 as in the release (its dropouts sit at 3 and 5; frozen, they would do nothing)
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Identity(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RelPosSelfAttention(nn.Module):
    """Transformer-XL relative-position attention (pos_bias_u / pos_bias_v), pre-LN on q, k, v separately."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head, self.d_k = n_head, d // n_head
        self.layer_norm_q, self.layer_norm_k, self.layer_norm_v = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.w_qs, self.w_ks, self.w_vs = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.fc = nn.Linear(d, d, bias=False)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_head, self.d_k))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # x (B, T, D); pos (1, 2T-1, D) for relative positions T-1 .. -(T-1); key_mask (B, 1, 1, T) additive
        b, t, _ = x.shape
        heads = lambda y: y.view(b, -1, self.n_head, self.d_k).transpose(1, 2)  # (B, H, T, d_k)
        q = heads(self.w_qs(self.layer_norm_q(x)))
        k = heads(self.w_ks(self.layer_norm_k(x)))
        v = heads(self.w_vs(self.layer_norm_v(x)))
        p = self.linear_pos(pos).view(1, -1, self.n_head, self.d_k).transpose(1, 2)  # (1, H, 2T-1, d_k)
        position_scores = rel_shift((q + self.pos_bias_v[:, None]) @ p.transpose(-2, -1))  # (B, H, T, T)
        bias = position_scores / math.sqrt(self.d_k) + key_mask
        out = F.scaled_dot_product_attention(q + self.pos_bias_u[:, None], k, v, attn_mask=bias)  # (B, H, T, d_k)
        return x + self.fc(out.transpose(1, 2).reshape(b, t, -1))


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores against positions T-1 .. -(T-1) -> (B, H, T, T) with [i, j] at position i - j."""
    b, h, t, n = scores.shape
    padded = F.pad(scores, (1, 0)).view(b, h, n + 1, t)  # the reference's zero-pad-and-reshape shift
    return padded[:, :, 1:].reshape(b, h, t, n)[..., : t]


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm (named batch_norm in the release) + Swish, pointwise conv."""

    def __init__(self, d: int, kernel_size: int):
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(d)
        self.pointwise_conv1 = nn.Conv1d(d, 4 * d, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(2 * d, 2 * d, kernel_size, padding=(kernel_size - 1) // 2, groups=2 * d,
                                        bias=False)
        self.batch_norm = nn.LayerNorm(2 * d)
        self.pointwise_conv2 = nn.Conv1d(2 * d, d, 1, bias=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # x (B, T, D); pad (B, T, 1) True on padding, zeroed so the depthwise conv never reads it
        y = self.pre_layer_norm(x).masked_fill(pad, 0.0).transpose(1, 2)  # (B, D, T)
        y = self.depthwise_conv(F.glu(self.pointwise_conv1(y), dim=1))  # (B, 2D, T)
        y = F.silu(self.batch_norm(y.transpose(1, 2))).transpose(1, 2)
        return x + self.pointwise_conv2(y).transpose(1, 2).masked_fill(pad, 0.0)


class ConformerBlock(nn.Module):
    """Macaron Conformer block: half FFN, attention, convolution, half FFN, LayerNorm."""

    def __init__(self, d: int, n_head: int, kernel_size: int):
        super().__init__()
        self.ffn1, self.ffn2 = FeedForward(d), FeedForward(d)
        self.mhsa = RelPosSelfAttention(d, n_head)
        self.conv = ConvModule(d, kernel_size)
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        key_mask, pad, pos = ctx
        x = x + 0.5 * self.ffn1(x)  # the release writes 0.5 x + 0.5 (x + net(x))
        x = self.conv(self.mhsa(x, pos, key_mask), pad)
        x = x + 0.5 * self.ffn2(x)
        return self.layer_norm(x)


def relative_positions(t: int, d: int, device=None) -> torch.Tensor:
    """(1, 2T-1, D) sinusoids of relative positions T-1 .. -(T-1), the rows of the release's 9999-row table."""
    position = torch.arange(t - 1, -t, -1, device=device, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d, 2, device=device).float() * -(math.log(10000.0) / d))
    pe = torch.zeros(2 * t - 1, d, device=device)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq)
    return pe[None]


class ConformerEncoder(nn.Module):
    def __init__(self, config: FireRedConfig):
        super().__init__()
        self.config = config
        self.input_preprocessor = Conv2dSubsampling(config.idim, config.d_model)
        self.layer_stack = nn.ModuleList(ConformerBlock(config.d_model, config.n_head, config.kernel_size)
                                         for _ in range(config.n_layers_enc))
        # global CMVN from cmvn.ark (x - mean) * inv_std; filled by load_encoder
        self.register_buffer("cmvn_mean", torch.zeros(config.idim), persistent=False)
        self.register_buffer("cmvn_inv_std", torch.ones(config.idim), persistent=False)


class FireRedStack(nn.Module):
    """The layer-stack interface of steermoe/model/encoders.py over FireRedASR-AED's Conformer (no final norm)."""

    kind = "fireredasr"
    lora_targets = ["w_qs", "w_ks", "w_vs", "fc", "net.1", "net.4"]
    context_frames = 7  # the subsampling's receptive field: the release pads 6 zero frames after the batch

    def __init__(self, encoder: ConformerEncoder, window: str):
        super().__init__()
        if window != DYNAMIC_WINDOW:
            raise ValueError("encoder_window: '30s' is Whisper's fixed window; Conformer encoders take 'dynamic'")
        self.encoder, self.window = encoder, window
        self.hidden_size = encoder.config.d_model
        self.num_layers = encoder.config.n_layers_enc
        self.num_mel_bins = encoder.config.idim
        self.frames_per_second = 100.0 / 4  # 10 ms fbank hop, 4x subsampling
        self.max_seconds = None  # relative positions of any length
        self.layers = encoder.layer_stack

    def embed(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        # features: (B, F, idim) raw log fbank (steermoe/model/features.py), zero beyond each utterance's F_b frames
        enc = self.encoder
        valid = torch.arange(features.shape[1], device=features.device)[None, :, None] < feature_lengths[:, None, None]
        # CMVN in fp32 (its statistics are fp32 buffers, which DeepSpeed leaves), padding back to zero as the release
        # pads; then the features' own dtype (the weights', bf16 under DeepSpeed)
        x = (((features.float() - enc.cmvn_mean) * enc.cmvn_inv_std) * valid).to(features.dtype)
        x = F.pad(x, (0, 0, 0, self.context_frames - 1))
        lengths = ((feature_lengths + 1) // 2 + 1) // 2  # the release's mask[:, :-2:2] twice
        return enc.input_preprocessor(x), lengths  # (B, T, D), (B,)

    def context(self, x: torch.Tensor, lengths: torch.Tensor):
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        key_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
        pos = relative_positions(x.shape[1], self.hidden_size, x.device).to(x.dtype)
        return key_mask[:, None, None, :], ~valid[:, :, None], pos

    def run_layer(self, index: int, x: torch.Tensor, ctx) -> torch.Tensor:
        return self.layers[index](x, ctx)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x  # every block ends in its own LayerNorm


# ---- the release's files ------------------------------------------------------------------------------------------
def is_release_folder(path: str | Path) -> bool:
    return (Path(path) / CHECKPOINT).is_file()


def check_folder(path: str | Path) -> None:
    """The release's files are all there and the checkpoint is a whole zip archive (cheap: only its directory is
    read)."""
    path = Path(path)
    for name, what in ((CMVN, "the global CMVN statistics of its fbank features (Kaldi matrix)"),
                       *((n, "the release's tokenizer file") for n in TOKENIZER_FILES)):
        if not (path / name).is_file():
            raise ModelFolderError(f"{path / name} is missing: a FireRedASR-AED folder holds {CHECKPOINT}, {CMVN}, "
                                   f"{', '.join(TOKENIZER_FILES)} as released; expected here: {what}")
    if not zipfile.is_zipfile(path / CHECKPOINT):  # a truncated download loses the archive's closing directory
        raise ModelFolderError(f"{path / CHECKPOINT}: not a readable PyTorch checkpoint (not the whole zip archive "
                               f"torch.save writes); expected {FORMAT}")


def read_checkpoint(path: str | Path) -> dict:
    """The release's checkpoint dict, unpickled with only tensors and argparse.Namespace allowed; memory-mapped, so
    reading `args` alone costs nothing."""
    check_folder(path)
    file = Path(path) / CHECKPOINT
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            package = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for corrupt, foreign or unsafe files
        text = str(err)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        # torch's own message opens with advice to load with weights_only=False, which would run the file's code
        unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        lines = text.strip().splitlines()
        reason = unpickler[1].strip() if unpickler else "its pickle holds what the safe loader does not read" \
            if text.startswith("Weights only load failed") else lines[0] if lines else repr(err)
        problem = (f"refused to unpickle it: it holds {refused[1]}, and only tensors and argparse.Namespace are "
                   f"allowed" if refused else f"not a readable PyTorch checkpoint ({reason})")
        raise ModelFolderError(f"{file}: {problem}; expected {FORMAT}") from None
    if not isinstance(package, dict) or "args" not in package or "model_state_dict" not in package:
        keys = sorted(package) if isinstance(package, dict) else type(package).__name__
        raise ModelFolderError(f"{file} holds {keys}, not {FORMAT}")
    return package


def config_from_checkpoint(path: str | Path, package: dict | None = None) -> FireRedConfig:
    package = package or read_checkpoint(path)
    args = vars(package["args"]) if isinstance(package["args"], argparse.Namespace) else package["args"]
    missing = [a for a in ARGS if not isinstance(args, dict) or a not in args]
    if missing:
        raise ModelFolderError(f"{Path(path) / CHECKPOINT}: its args lack {', '.join(missing)}: it is not a "
                               f"FireRedASR-AED checkpoint; expected {FORMAT}")
    return FireRedConfig(**{a: int(args[a]) for a in ARGS})


def read_kaldi_cmvn(file: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi global CMVN statistics (2 x (dim+1): sums, sums of squares, count) -> mean, 1/std (dim,), computed as
    the release computes them (float64, variance floored at 1e-20)."""
    file = Path(file)
    data = file.read_bytes()
    expected = "a Kaldi matrix of 2 rows (sums and squared sums of the features, then the frame count)"
    try:
        if data.startswith(b"\0B"):  # binary: "\0B" "FM "/"DM " then rows and cols as (size byte, int32)
            kind = data[2:5]
            dtype = {b"FM ": "<f4", b"DM ": "<f8"}[kind]
            rows, cols = struct.unpack("<xixi", data[5:15])
            stats = np.frombuffer(data, dtype=dtype, count=rows * cols, offset=15).reshape(rows, cols)
        else:  # text: [ a b c \n d e f ]
            text = data.decode("ascii").strip()
            if not (text.startswith("[") and text.endswith("]")):
                raise ValueError("no [ ... ] matrix")
            stats = np.array([[float(v) for v in row.split()] for row in text[1:-1].strip().splitlines()])
    except (KeyError, struct.error, ValueError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{file} is not {expected} ({err or 'unknown matrix type'})") from None
    if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2 or stats[0, -1] < 1:
        raise ModelFolderError(f"{file} holds a {'x'.join(map(str, stats.shape))} matrix, not {expected}")
    stats = stats.astype(np.float64)
    count = stats[0, -1]
    mean = stats[0, :-1] / count
    variance = np.maximum(stats[1, :-1] / count - mean * mean, 1e-20)
    return torch.from_numpy(mean).float(), torch.from_numpy(1.0 / np.sqrt(variance)).float()


def load_stack(path: str | Path, window: str) -> FireRedStack:
    """The frozen encoder (fp32) of a FireRedASR-AED folder: shape from its args, weights from encoder.*, CMVN."""
    path = Path(path)
    package = read_checkpoint(path)
    config = config_from_checkpoint(path, package)
    mean, inv_std = read_kaldi_cmvn(path / CMVN)
    if mean.numel() != config.idim:
        raise ModelFolderError(f"{path / CMVN} has statistics for {mean.numel()} features, but the encoder in "
                               f"{path / CHECKPOINT} takes {config.idim}-bin fbank")
    stack = FireRedStack(ConformerEncoder(config), window)
    state = package["model_state_dict"]
    weights = {k.removeprefix("encoder."): v for k, v in state.items()
               if isinstance(k, str) and k.startswith("encoder.")}
    wanted = {k: v.shape for k, v in stack.encoder.state_dict().items()}
    missing = sorted(set(wanted) - set(weights))
    wrong = [k for k in wanted if k in weights and tuple(weights[k].shape) != tuple(wanted[k])]
    if missing or wrong:
        raise ModelFolderError(f"{path / CHECKPOINT}: its encoder.* weights do not match its args "
                               f"({len(missing)} missing, e.g. {missing[:2]}; wrong shapes: {wrong[:2]}); "
                               f"expected {FORMAT}")
    stack.encoder.load_state_dict({k: weights[k].float() for k in wanted})
    stack.encoder.cmvn_mean.copy_(mean)
    stack.encoder.cmvn_inv_std.copy_(inv_std)
    return stack.float().eval().requires_grad_(False)
