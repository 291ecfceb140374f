"""The model's configuration: one small object, the single place where model options live.

YAML loading (the seed schema) maps onto this object; the model reads nothing else.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from steermoe.errors import ConfigError  # noqa: F401  (re-exported: the model options raise it)

METHODS = ("layer_wise", "linear", "post_encoder", "lora")
POOLING_TYPES = ("avg", "max")
ENCODER_WINDOWS = ("30s", "dynamic")
PROMPT_FORMATS = ("raw", "chat")


@dataclass
class SteerMoEConfig:
    method: str = "layer_wise"
    # steering (layer_wise / post_encoder)
    num_experts: int = 8
    steering_scale: float = 0.1
    use_layer_scales: bool = True
    # pooling: kernel 1 disables it; position = number of encoder layers run before pooling (None: after the last)
    pooling_type: str = "avg"
    pooling_kernel_size: int = 1
    pooling_position: int | None = None
    # projection into the LLM
    use_adapter: bool = True
    max_prompt_tokens: int = 2048
    # encoder input: pad to Whisper's 30 s window (original behaviour) or run on the batch's real length
    encoder_window: str = "dynamic"
    # decoder prompt
    prompt_format: str = "raw"
    textual_prompt: str = "please transcribe the audio content into text: "
    # lora ablation
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=list)  # empty: the encoder's attention + FFN projections

    def __post_init__(self):
        def choice(key, allowed):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")

        choice("method", METHODS)
        choice("pooling_type", POOLING_TYPES)
        choice("encoder_window", ENCODER_WINDOWS)
        choice("prompt_format", PROMPT_FORMATS)
        for key in ("num_experts", "pooling_kernel_size", "max_prompt_tokens", "lora_r"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
        if self.pooling_position is not None and (
            isinstance(self.pooling_position, bool) or not isinstance(self.pooling_position, int)
            or self.pooling_position < 0
        ):
            raise ConfigError(f"pooling_position: must be a non-negative integer, got {self.pooling_position!r}")
        for key in ("steering_scale", "lora_dropout"):
            if isinstance(getattr(self, key), bool) or not isinstance(getattr(self, key), (int, float)):
                raise ConfigError(f"{key}: must be a number, got {getattr(self, key)!r}")

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
