"""The model's configuration: one small object, the single place where model options live.

YAML loading (the original code's schema) maps onto this object; the model reads nothing else.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from steermoe.declare.checks import check_value
from steermoe.declare.settings import MODEL_OPTIONS, REFERENCE, TRAINED_METHODS
from steermoe.errors import ConfigError


# the trainable parameters by group, in the optimiser's groups with the setting that gives each its learning rate
OPTIMIZER_GROUPS = {"steering": (("steering_vectors", "layer_scales"), "steering_learning_rate"),
                    "router": (("router",), "router_learning_rate"),
                    "projection": (("projection", "lora"), "learning_rate"),
                    "llm_lora": (("llm_lora",), "llm_lora_learning_rate")}
PARAMETER_GROUPS = tuple(group for groups, _ in OPTIMIZER_GROUPS.values() for group in groups)
STEERING_GROUPS = ("steering_vectors", "router", "layer_scales")  # the steering module's own parameters


def encoder_frames(seconds: float, frames_per_second: float, window_frames: int | None = None) -> int:
    """The encoder frames of an utterance: its length at the encoder's frame rate, or the whole window where the
    input is padded to one (Whisper's 30 s window: `window_frames`)."""
    return window_frames if window_frames is not None else math.ceil(seconds * frames_per_second)


def audio_tokens(frames: int, pooling_kernel_size: int, max_prompt_tokens: int) -> tuple[int, int]:
    """(pooled frames, audio prompt tokens) of `frames` encoder frames: pooled by the kernel, at most max_prompt_tokens
    of them reach the LLM."""
    pooled = math.ceil(frames / pooling_kernel_size)
    return pooled, min(pooled, max_prompt_tokens)


def _default(option: str):
    return MODEL_OPTIONS[option].default


@dataclass
class SteerMoEConfig:
    """The model's options; their types, defaults and bounds are those of steermoe.declare.settings' table."""
    method: str = "layer_wise"
    # steering (layer_wise / post_encoder)
    num_experts: int = _default("num_experts")
    steering_scale: float = _default("steering_scale")
    use_layer_scales: bool = _default("use_layer_scales")
    # pooling: kernel 1 disables it; position = number of encoder layers run before pooling (None: after the last)
    pooling_type: str = _default("pooling_type")
    pooling_kernel_size: int = _default("pooling_kernel_size")
    pooling_position: int | None = _default("pooling_position")
    # projection into the LLM
    use_adapter: bool = _default("use_adapter")
    projector: str = _default("projector")
    projector_hidden: int = _default("projector_hidden")
    max_prompt_tokens: int = _default("max_prompt_tokens")
    # encoder input: pad to Whisper's 30 s window (original behaviour) or run on the batch's real length
    encoder_window: str = _default("encoder_window")
    # decoder prompt
    prompt_format: str = _default("prompt_format")
    textual_prompt: str = _default("textual_prompt")
    # LoRA: in the encoder's layers (method lora) or in the LLM's attention (method llm_lora)
    lora_r: int = _default("lora_r")
    lora_alpha: int = _default("lora_alpha")
    lora_dropout: float = _default("lora_dropout")
    lora_target_modules: list[str] = field(default_factory=list)  # empty: the method's default targets

    def __post_init__(self):
        if self.method is None:
            raise ConfigError(f"method: required; one of {', '.join(TRAINED_METHODS)}")
        if self.method == REFERENCE:  # the settings table allows it: a config may name it, a model may not
            raise ConfigError(f"method: {REFERENCE} builds no SteerMoE model (it decodes the encoder's own model, "
                              f"untrained); one of {', '.join(TRAINED_METHODS)}")
        for option, key in MODEL_OPTIONS.items():
            setattr(self, option, check_value(option, key, getattr(self, option)))
        if self.projector != "linear" and not self.use_adapter:
            raise ConfigError(f"projector: {self.projector} is the adapter that use_adapter: false leaves out; "
                              f"set use_adapter: true or remove projector")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json_string(self) -> str:  # what transformers' logging integrations expect of a model config
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "SteerMoEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)
