"""Parameter accounting without weights: the model is built on the meta device from config files only.

Shapes may come from a local model folder, a config.json file, or a shape shipped in steermoe/model/shapes/ (e.g.
whisper-large-v3 + qwen2.5-7b-instruct), so a user sees what a full-size setup trains before downloading it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from steermoe.declare.model_config import PARAMETER_GROUPS, SteerMoEConfig
from steermoe.declare.shapes import SHAPES, shipped_shapes
from steermoe.model import fireredasr
from steermoe.model.encoders import FIREREDASR_TYPES, ModelFolderError, encoder_from_config
from steermoe.model.modeling import SteerMoEModel

def load_shape(name_or_path: str | Path):
    """A transformers config (a FireRedConfig for FireRedASR-AED) from a model folder, a config.json file, or a shipped
    shape name."""
    from transformers import AutoConfig

    path = Path(name_or_path)
    if path.is_dir() and fireredasr.is_release_folder(path):
        return fireredasr.config_from_checkpoint(path)
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    if path.is_file():
        values = json.loads(path.read_text())
    elif (SHAPES / f"{name_or_path}.json").is_file():
        values = json.loads((SHAPES / f"{name_or_path}.json").read_text())
    else:
        raise ModelFolderError(f"{name_or_path!r} is neither a model folder, a config.json, nor a shipped shape "
                               f"({', '.join(shipped_shapes())})")
    values = {k: v for k, v in values.items() if not k.startswith("_")}  # _source, _parameters: notes of a shape
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ModelFolderError(f"{name_or_path}: the config has no model_type")
    if model_type in FIREREDASR_TYPES:
        return fireredasr.FireRedConfig(**values)
    return AutoConfig.for_model(model_type, **values)


def meta_model(config: SteerMoEConfig, encoder_shape, decoder_shape) -> SteerMoEModel:
    """Build the full model on the meta device: shapes and parameter counts, no memory, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        encoder = encoder_from_config(load_shape(encoder_shape), config.encoder_window)
        decoder = AutoModelForCausalLM.from_config(load_shape(decoder_shape))
        return SteerMoEModel(config, encoder, decoder)


def count_parameters(model: SteerMoEModel) -> dict[str, int]:
    """Trainable parameters per group and totals, plus the frozen encoder and decoder."""
    counts = {group: sum(p.numel() for p in params) for group, params in model.parameter_groups().items()}
    counts["trainable"] = sum(counts.values())
    counts["frozen_encoder"] = sum(p.numel() for p in model.encoder.parameters() if not p.requires_grad)
    counts["frozen_decoder"] = sum(p.numel() for p in model.decoder.parameters() if not p.requires_grad)
    return counts


def formula_counts(layers: int, experts: int, width: int, llm_width: int) -> dict[str, int]:
    """For layer_wise: E = L*N*D; router = D*N*L + N*L; scales = L; projection = D*H + H."""
    return {"steering_vectors": layers * experts * width, "router": width * experts * layers + experts * layers,
            "layer_scales": layers, "projection": width * llm_width + llm_width}


def format_counts(counts: dict[str, int]) -> str:
    rows = [(group, counts[group]) for group in (*PARAMETER_GROUPS, "trainable", "frozen_encoder", "frozen_decoder")]
    total = counts["trainable"] + counts["frozen_encoder"] + counts["frozen_decoder"]
    lines = [f"{'group':<18}{'parameters':>16}"]
    lines += [f"{group:<18}{value:>16,}" for group, value in rows]
    lines.append(f"{'trainable share':<18}{100 * counts['trainable'] / total:>15.3f}%")
    return "\n".join(lines)
