"""Read a CTranslate2 `model.bin` (binary format version 6) and map a Whisper model onto transformers' layout.

The container, as CTranslate2's ModelSpec writes it (little endian):
    u32 version (6) | str spec name | u32 spec revision | u32 n_variables
    n_variables x (str name | u8 rank | rank x u32 dim | u8 dtype | u32 nbytes | bytes)
    u32 n_aliases | n_aliases x (str alias | str target)
where str = u16 length (incl. NUL) + UTF-8 bytes + NUL.
"""
from __future__ import annotations

import re
import struct
from typing import BinaryIO

import numpy as np

# CTranslate2's DataType enum
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class CT2FormatError(ValueError):
    pass


def _read(handle: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise CT2FormatError("model.bin ends early: the file is truncated")
    return struct.unpack("<" + fmt, data)


def _read_str(handle: BinaryIO) -> str:
    (length,) = _read(handle, "H")
    return handle.read(length)[:-1].decode("utf-8")


def read_ct2(handle: BinaryIO) -> tuple[str, dict[str, np.ndarray]]:
    """Return (spec name, variables by name); aliases resolve to the variable they name."""
    (version,) = _read(handle, "I")
    if version != 6:
        raise CT2FormatError(f"CTranslate2 binary version {version} is not supported (expected 6)")
    spec = _read_str(handle)
    _read(handle, "I")  # spec revision
    (count,) = _read(handle, "I")
    variables = {}
    for _ in range(count):
        name = _read_str(handle)
        (rank,) = _read(handle, "B")
        shape = _read(handle, "I" * rank)
        (dtype_id,) = _read(handle, "B")
        (nbytes,) = _read(handle, "I")
        if dtype_id not in DTYPES:
            raise CT2FormatError(f"{name}: unsupported CTranslate2 dtype id {dtype_id} (quantised model?)")
        data = handle.read(nbytes)
        if len(data) != nbytes:
            raise CT2FormatError("model.bin ends early: the file is truncated")
        variables[name] = np.frombuffer(data, dtype=DTYPES[dtype_id]).reshape(shape)
    (n_aliases,) = _read(handle, "I")
    for _ in range(n_aliases):
        alias, target = _read_str(handle), _read_str(handle)
        variables[alias] = variables[target]
    return spec, variables


def _linear(v: dict, src: str, dst: str, out: dict, bias: bool = True):
    out[f"{dst}.weight"] = v[f"{src}/weight"]
    if bias:
        out[f"{dst}.bias"] = v[f"{src}/bias"]


def _norm(v: dict, src: str, dst: str, out: dict):
    out[f"{dst}.weight"] = v[f"{src}/gamma"]
    out[f"{dst}.bias"] = v[f"{src}/beta"]


def _split_linear(v: dict, src: str, dsts: list[str], out: dict):
    """CTranslate2 fuses q/k/v (or k/v) along the output dimension; Whisper's k_proj has no bias."""
    weights = np.split(v[f"{src}/weight"], len(dsts))
    biases = np.split(v[f"{src}/bias"], len(dsts))
    for dst, weight, bias in zip(dsts, weights, biases):
        out[f"{dst}.weight"] = weight
        if dst.endswith("k_proj"):
            if np.any(bias != 0):
                raise CT2FormatError(f"{src}: non-zero key bias, but Whisper's k_proj has none")
        else:
            out[f"{dst}.bias"] = bias


def _attention(v: dict, src: str, dst: str, out: dict):
    _split_linear(v, f"{src}/linear_0", [f"{dst}.q_proj", f"{dst}.k_proj", f"{dst}.v_proj"], out)
    _linear(v, f"{src}/linear_1", f"{dst}.out_proj", out)


def _ffn(v: dict, src: str, dst: str, out: dict):
    _norm(v, f"{src}/layer_norm", f"{dst}.final_layer_norm", out)
    _linear(v, f"{src}/linear_0", f"{dst}.fc1", out)
    _linear(v, f"{src}/linear_1", f"{dst}.fc2", out)


def count_layers(variables: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    return len({m.group(1) for m in map(pattern.match, variables) if m})


def whisper_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """Map CTranslate2 WhisperSpec variables onto WhisperForConditionalGeneration's state dict."""
    v, out = variables, {}
    out["model.encoder.conv1.weight"], out["model.encoder.conv1.bias"] = v["encoder/conv1/weight"], v["encoder/conv1/bias"]
    out["model.encoder.conv2.weight"], out["model.encoder.conv2.bias"] = v["encoder/conv2/weight"], v["encoder/conv2/bias"]
    out["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(count_layers(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _attention(v, f"{src}/self_attention", f"{dst}.self_attn", out)
        _ffn(v, f"{src}/ffn", dst, out)
    _norm(v, "encoder/layer_norm", "model.encoder.layer_norm", out)

    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(count_layers(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _attention(v, f"{src}/self_attention", f"{dst}.self_attn", out)
        _norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
        _linear(v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", out)
        _split_linear(v, f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], out)
        _linear(v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", out)
        _ffn(v, f"{src}/ffn", dst, out)
    _norm(v, "decoder/layer_norm", "model.decoder.layer_norm", out)
    return out
