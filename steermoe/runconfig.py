"""One experiment's YAML config (the seed document's schema plus this project's keys), loaded strictly.

Every key the seed document names means something here; a key that is unknown, misplaced or of the wrong type
is an error naming the file, the key and the closest valid key. YAML is read with a safe loader that follows
YAML 1.2 for numbers, so the seed's `learning_rate: 1e-4` is a float (PyYAML would make it a string).
"""
from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import yaml

from steermoe.config import ENCODER_WINDOWS, METHODS, POOLING_TYPES, PROMPT_FORMATS, ConfigError, SteerMoEConfig
from steermoe.protocols import PROTOCOLS

REQUIRED = object()
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: the precision policy (steermoe/precision.py)
METRICS = ("wer", "cer", "qa_accuracy")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "constant")
ENCODER_SECTIONS = ("whisper_encoder", "conformer_encoder")
DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"  # the shipped ZeRO-2 / ZeRO-3 JSONs


@dataclass(frozen=True)
class Key:
    type: type | tuple
    default: object = None
    choices: tuple | None = None
    minimum: float | None = None  # inclusive; None: any value
    positive: bool = False  # strictly > 0
    new: bool = False  # added by this project (not in the seed document)


def _pos(t, default, **kw):
    return Key(t, default, positive=True, **kw)


def _nonneg(t, default, **kw):
    return Key(t, default, minimum=0, **kw)


_ENCODER = {
    "model_path": Key(str, REQUIRED),
    "feature_dim": _pos(int, None),  # checked against the model folder when given
    "num_layers": _pos(int, None),
}

SCHEMA: dict = {
    "method": Key(str, None, choices=METHODS, new=True),  # default: the file name's prefix
    "seed": _nonneg(int, 0, new=True),
    "encoder_window": Key(str, "dynamic", choices=ENCODER_WINDOWS, new=True),
    "prompt_format": Key(str, "raw", choices=PROMPT_FORMATS, new=True),
    "whisper_encoder": _ENCODER,
    "conformer_encoder": _ENCODER,
    "llm_decoder": {
        "model_name": Key(str, REQUIRED),
        "max_length": _pos(int, 512),  # longest packed decoder sequence; longer training rows are dropped
        "use_cache": Key(bool, False),  # KV cache in training forward passes (generation always uses it)
        "dtype": Key(str, "auto", choices=DTYPES, new=True),  # frozen LLM weights
    },
    "steering": {
        "num_experts": _pos(int, 8),
        "steering_scale": Key(float, 0.1),
        "use_layer_scales": Key(bool, True),
        "use_gradient_clipping": Key(bool, None),  # same switch as clip_steering_gradients
        "steering_gradient_clip": _pos(float, 1.0),
    },
    "lora": {
        "r": _pos(int, 8, new=True),
        "alpha": _pos(int, 16, new=True),
        "dropout": _nonneg(float, 0.0, new=True),
        "target_modules": Key(list, None, new=True),
    },
    "training": {
        "output_dir": Key(str, REQUIRED),
        "logging_dir": Key(str, None),  # TensorBoard; default output_dir/logs
        "batch_size": _pos(int, 4),
        "epochs": _pos(float, 10),
        "max_steps": Key(int, -1, new=True),  # > 0 overrides epochs
        "learning_rate": _nonneg(float, 1e-4),  # projection / LoRA
        "steering_learning_rate": _nonneg(float, 1e-2),  # steering vectors + layer scales
        "router_learning_rate": _nonneg(float, 1e-3),
        "weight_decay": _nonneg(float, 0.01),
        "warmup_steps": _nonneg(int, 0),
        "lr_scheduler": Key(str, "linear", choices=SCHEDULERS, new=True),
        "gradient_clipping": _nonneg(float, 1.0),  # global max norm; 0 disables
        "gradient_accumulation_steps": _pos(int, 1, new=True),
        "fp16": Key(bool, False),
        "bf16": Key((bool, str), "auto", choices=(True, False, "auto"), new=True),  # auto: the precision policy
        "use_deepspeed": Key(bool, False),
        "deepspeed_config": Key(str, None),  # the DeepSpeed JSON path
    },
    "evaluation": {
        "checkpoint": Key(str, None, new=True),  # trained folder; default training.output_dir/final
        "output_dir": Key(str, None, new=True),  # default training.output_dir/eval
        "batch_size": _pos(int, 16, new=True),
        "num_beams": _pos(int, 1, new=True),
        "max_new_tokens": _pos(int, 128, new=True),
        # 1.0: none. Explicit because generate() would otherwise take the decoder's own (Qwen2.5's: 1.05)
        "repetition_penalty": _pos(float, 1.0, new=True),
        "protocol": Key(str, "honest", choices=PROTOCOLS, new=True),  # steermoe/protocols.py
        "sampling_seeds": _pos(int, 3, new=True),  # protocol seed: decoded once per seed 0..n-1
        "metric": Key(str, "wer", choices=METRICS, new=True),
        "bootstrap_resamples": _pos(int, 1000, new=True),
    },
    "parquet_dirs": Key(list, REQUIRED),  # train config: training data; eval config: the test data
    # dev data for eval_steps / early stopping; without it a fixed sample of the training rows is held out
    "eval_parquet_dirs": Key(list, None, new=True),
    "audio_column": Key(str, "audio"),
    "text_column": Key(str, "text"),
    "sample_rate": Key(int, 16000, choices=(16000,)),  # the encoders' feature extractors are 16 kHz
    "max_audio_length": _pos(float, 30.0),
    "max_text_length": _pos(int, 448),  # target tokens
    "filter_dataset": Key(bool, True),
    "textual_prompt": Key(str, "please transcribe the audio content into text: "),
    "max_prompt_tokens": _pos(int, 2048),
    "use_adapter": Key(bool, True),
    "save_total_limit": _pos(int, None),
    "logging_steps": _pos(int, 100),
    "eval_steps": _pos(int, None),  # None: no dev evaluation during training
    "save_steps": _pos(int, 1000),
    "log_steering_analysis": Key(bool, False),
    "steering_log_interval": _pos(int, 100),
    "clip_steering_gradients": Key(bool, None),
    "use_early_stopping": Key(bool, False),
    "early_stopping_patience": _pos(int, 3),
    "pooling_kernel_size": _pos(int, 1),
    "pooling_position": _nonneg(int, None),
    "pooling_type": Key(str, "avg", choices=POOLING_TYPES),
    "gradient_checkpointing": Key(bool, False),
    "dataloader_num_workers": _nonneg(int, 0),
}

NAME_PATTERN = re.compile(r"^(?P<method>%s)_(?P<rest>.+)$" % "|".join(sorted(METHODS, key=len, reverse=True)))


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe loading with YAML 1.2 floats: 1e-4, 5E-3 and .5 are numbers, not strings. libyaml's parser where
    PyYAML has it: the workflow parses every rendered config at start-up (7x faster than the pure-Python one)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_problem(err: Exception) -> str:
    """What is wrong with a YAML text, in one line, for a message after the file's name."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = getattr(err, "problem", None) or str(err).replace("\n", " ")
    if isinstance(err, yaml.constructor.ConstructorError):  # e.g. !!python/object: only plain data is read
        return f"not valid YAML here{where}: tags that build Python objects are refused, plain values only ({what})"
    return f"not valid YAML{where}: {what}"


def _all_keys() -> dict[str, str]:
    """Every valid dotted key -> its section ('' for top level)."""
    keys = {}
    for name, spec in SCHEMA.items():
        if isinstance(spec, dict):
            keys[name] = ""
            keys.update({f"{name}.{k}": name for k in spec})
        else:
            keys[name] = ""
    return keys


def _suggest(dotted: str) -> str:
    valid = _all_keys()
    leaf = dotted.rsplit(".", 1)[-1]
    homes = [k for k in valid if k.rsplit(".", 1)[-1] == leaf]
    if homes:
        return f"it belongs at '{homes[0]}'" + (" (top level)" if "." not in homes[0] else "")
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.6) or \
        difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in valid], n=1, cutoff=0.6)
    if close:
        match = close[0] if close[0] in valid else next(k for k in valid if k.rsplit(".", 1)[-1] == close[0])
        return f"did you mean '{match}'?"
    return "see the configuration reference in the README"


def _check_value(where: str, key: Key, value):
    if value is None:
        if key.default is REQUIRED:
            raise ConfigError(f"{where}: required, but empty")
        return None
    wanted = key.type
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if wanted is list and isinstance(value, str):
        value = [value]
    ok = isinstance(value, wanted) and not (wanted in (int, float) and isinstance(value, bool))
    if not ok:
        shown = " or ".join(str(c).lower() for c in key.choices) if isinstance(wanted, tuple) else \
            {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}[wanted]
        raise ConfigError(f"{where}: must be {shown}, got {value!r} ({type(value).__name__})")
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, key.choices))}")
    if key.positive and value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value!r}")
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"{where}: must be at least {key.minimum}, got {value!r}")
    if wanted is list and not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a list of non-empty strings, got {value!r}")
    return value


def _section(file: str, name: str, spec: dict, values) -> SimpleNamespace:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: '{name}' must be a mapping of keys, got {values!r}")
    out = {}
    for key, value in values.items():
        if key not in spec:
            raise ConfigError(f"{file}: unknown key '{name}.{key}'; {_suggest(f'{name}.{key}')}")
        out[key] = _check_value(f"{file}: {name}.{key}", spec[key], value)
    for key, k in spec.items():
        if out.get(key) is None:
            if k.default is REQUIRED:
                raise ConfigError(f"{file}: '{name}.{key}' is required")
            out[key] = k.default
    return SimpleNamespace(**out)


@dataclass
class RunConfig:
    """A validated experiment config. Sections are namespaces with every key present (defaults filled in)."""
    path: Path
    name: str  # the file's stem, e.g. layer_wise_whisper_smollm2_synthen_train
    mode: str | None  # 'train' or 'eval' from the file name's convention, None if the name does not say
    method: str
    encoder_kind: str  # 'whisper' or 'conformer' (the section name used)
    encoder: SimpleNamespace
    decoder: SimpleNamespace
    steering: SimpleNamespace
    lora: SimpleNamespace
    training: SimpleNamespace
    evaluation: SimpleNamespace
    top: SimpleNamespace  # every top-level scalar key
    clip_steering: bool
    sha256: str  # of the file's bytes

    def model_config(self) -> SteerMoEConfig:
        t = self.top
        return SteerMoEConfig(
            method=self.method, num_experts=self.steering.num_experts, steering_scale=self.steering.steering_scale,
            use_layer_scales=self.steering.use_layer_scales, pooling_type=t.pooling_type,
            pooling_kernel_size=t.pooling_kernel_size, pooling_position=t.pooling_position,
            use_adapter=t.use_adapter, max_prompt_tokens=t.max_prompt_tokens, encoder_window=t.encoder_window,
            prompt_format=t.prompt_format, textual_prompt=t.textual_prompt, lora_r=self.lora.r,
            lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
            lora_target_modules=list(self.lora.target_modules or []))

    def resolve(self, path: str) -> Path:
        """Relative paths in a config are relative to the working directory (as in the seed's scripts)."""
        return Path(path).expanduser()

    @property
    def checkpoint_dir(self) -> Path:
        return self.resolve(self.evaluation.checkpoint or str(Path(self.training.output_dir) / "final"))

    @property
    def eval_dir(self) -> Path:
        return self.resolve(self.evaluation.output_dir or str(Path(self.training.output_dir) / "eval"))


def parse_name(stem: str) -> tuple[str | None, str | None]:
    """`{method}_{encoder}_{decoder}_{dataset}_{mode}[_{variant}]` -> (method, mode); None where it does not say."""
    match = NAME_PATTERN.match(stem)
    method = match.group("method") if match else None
    parts = stem.split("_")
    mode = None
    for part in parts[-2:]:
        if part == "train":
            mode = "train"
        elif part in ("eval", "test"):
            mode = "eval"
    return method, mode


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror})") from err
    return parse_run_config(text, path)


def parse_run_config(text: bytes, path: str | Path) -> RunConfig:
    """Validate a config's bytes as if they were the file `path` (the name gives method and mode)."""
    path = Path(path)
    file = str(path)
    try:
        data = yaml.load(text.decode("utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: {yaml_problem(err)}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a config is a YAML mapping of keys; got {type(data).__name__}")
    sections, top = {}, {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in SCHEMA:
            raise ConfigError(f"{file}: unknown key '{key}'; {_suggest(str(key))}")
        spec = SCHEMA[key]
        if isinstance(spec, dict):
            sections[key] = _section(file, key, spec, value)
        else:
            top[key] = _check_value(f"{file}: {key}", spec, value)
    for key, spec in SCHEMA.items():
        if not isinstance(spec, dict) and top.get(key) is None:
            if spec.default is REQUIRED:
                raise ConfigError(f"{file}: '{key}' is required")
            top[key] = spec.default

    encoders = [s for s in ENCODER_SECTIONS if s in sections]
    if len(encoders) != 1:
        raise ConfigError(f"{file}: give exactly one of 'whisper_encoder' or 'conformer_encoder' "
                          f"(found {', '.join(encoders) or 'neither'})")
    for name in ("llm_decoder", "training"):
        if name not in sections:
            raise ConfigError(f"{file}: the '{name}' section is missing")
    for name in ("steering", "lora", "evaluation"):
        sections.setdefault(name, _section(file, name, SCHEMA[name], {}))

    name_method, mode = parse_name(path.stem)
    method = top["method"] or name_method
    if method is None:
        raise ConfigError(f"{file}: no method: set 'method' ({', '.join(METHODS)}) or name the file "
                          f"{{method}}_{{encoder}}_{{decoder}}_{{dataset}}_{{mode}}.yaml")
    if name_method and top["method"] and name_method != top["method"]:
        raise ConfigError(f"{file}: 'method: {top['method']}' contradicts the file name's method '{name_method}'")

    flags = [v for v in (sections["steering"].use_gradient_clipping, top["clip_steering_gradients"]) if v is not None]
    if len(set(flags)) > 1:
        raise ConfigError(f"{file}: 'steering.use_gradient_clipping' and 'clip_steering_gradients' disagree; they are "
                          f"the same switch, set both alike (or only one)")
    t = sections["training"]
    if t.fp16 and t.bf16 is True:
        raise ConfigError(f"{file}: 'training.fp16' and 'training.bf16' are both true; choose one")
    if t.use_deepspeed and not t.deepspeed_config:
        t.deepspeed_config = str(DEEPSPEED_DIR / "stage2_simple.json")  # the seed's recommended configuration
    if not t.logging_dir:
        t.logging_dir = str(Path(t.output_dir) / "logs")
    if top["use_early_stopping"] and top["eval_steps"] is None:
        raise ConfigError(f"{file}: 'use_early_stopping' needs dev evaluation: set 'eval_steps'")

    config = RunConfig(
        path=path, name=path.stem, mode=mode, method=method, encoder_kind=encoders[0].split("_")[0],
        encoder=sections[encoders[0]], decoder=sections["llm_decoder"], steering=sections["steering"],
        lora=sections["lora"], training=t, evaluation=sections["evaluation"], top=SimpleNamespace(**top),
        clip_steering=bool(flags and flags[0]), sha256=hashlib.sha256(text).hexdigest())
    try:
        config.model_config()
    except ConfigError as err:
        raise ConfigError(f"{file}: {err}") from err
    return config
