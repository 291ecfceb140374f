"""One experiment's YAML config (the original code's schema plus this project's keys), loaded strictly.

Every key the original code's configuration reference names means something here; a key that is unknown, misplaced or of
the wrong type is an error naming the file, the key and the closest valid key. YAML is read with a safe loader that
follows YAML 1.2 for numbers, so the original code's `learning_rate: 1e-4` is a float (PyYAML would make it a string).

A `reference` config (the Whisper encoder's own model decoded untrained) needs the whisper_encoder section, the test
data and where to write; it may leave out llm_decoder and training, and builds no SteerMoE model.
"""
from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from steermoe.declare.checks import check_value, load_yaml, shown
from steermoe.declare.model_config import SteerMoEConfig
from steermoe.declare.outputs import EVAL_DIR, FINAL
from steermoe.declare.settings import ENCODER_SECTIONS, METHODS, MODEL_OPTIONS, REFERENCE, REQUIRED, TABLE, Key
from steermoe.errors import ConfigError

# the shipped DeepSpeed JSONs, which `deepspeed_config` may name without a path: stage2_simple (ZeRO-2, the default:
# a few million trainable parameters' optimiser stays on the GPU), stage2_offload (ZeRO-2, optimiser in host memory,
# for a job whose GPU memory is short) and stage3 (ZeRO-3, optimiser and parameters offloaded)
DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"

# the table as the YAML nests it: top-level keys, and one mapping per section
NESTED: dict = {}
for _key in TABLE:
    if _key.section:
        NESTED.setdefault(_key.section, {})[_key.name] = _key
    else:
        NESTED[_key.name] = _key

# what a reference config (the encoder's own model, untrained) may leave out: it loads no LLM and trains nothing;
# the training section's precision and tracker keys still apply to its decoding
REFERENCE_OPTIONAL = ("llm_decoder", "training")

NAME_PATTERN = re.compile(r"^(?P<method>%s)_(?P<rest>.+)$" % "|".join(sorted(METHODS, key=len, reverse=True)))


def _all_keys() -> dict[str, str]:
    """Every valid dotted key -> its section ('' for top level)."""
    keys = {}
    for name, spec in NESTED.items():
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


def _section(file: str, name: str, spec: dict, values, required: bool = True) -> SimpleNamespace:
    """A section's keys checked, defaults filled in. required=False: a section the method ignores, whose required
    keys may be missing or empty (None); its other keys are still checked (a typo is still an error)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: '{name}' must be a mapping of keys, got {shown(values)}")
    out = {}
    for key, value in values.items():
        if key not in spec:
            raise ConfigError(f"{file}: unknown key '{name}.{key}'; {_suggest(f'{name}.{key}')}")
        out[key] = None if value is None and not required else check_value(f"{file}: {name}.{key}", spec[key], value)
    for key, k in spec.items():
        if out.get(key) is None:
            if k.default is REQUIRED and required:
                raise ConfigError(f"{file}: '{name}.{key}' is required")
            out[key] = None if k.default is REQUIRED else k.default
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
    decoder: SimpleNamespace  # method reference: ignored, its model_name may be None
    steering: SimpleNamespace
    lora: SimpleNamespace
    training: SimpleNamespace
    evaluation: SimpleNamespace
    top: SimpleNamespace  # every top-level scalar key
    clip_steering: bool
    sha256: str  # of the file's bytes

    def value(self, key: Key):
        """The config's value of a settings-table key (defaults filled in)."""
        if key.path == "method":
            return self.method
        section = {"llm_decoder": self.decoder, "": self.top}.get(key.section) or getattr(self, key.section)
        return getattr(section, key.name)

    def model_config(self) -> SteerMoEConfig:
        options = {option: self.value(key) for option, key in MODEL_OPTIONS.items()}
        return SteerMoEConfig(**{**options, "lora_target_modules": list(options["lora_target_modules"] or [])})

    def resolve(self, path: str) -> Path:
        """Relative paths in a config are relative to the working directory (as in the original code's scripts)."""
        return Path(path).expanduser()

    @property
    def checkpoint_dir(self) -> Path:
        return self.resolve(self.evaluation.checkpoint or str(Path(self.training.output_dir) / FINAL))

    @property
    def eval_dir(self) -> Path:
        return self.resolve(self.evaluation.output_dir or str(Path(self.training.output_dir) / EVAL_DIR))


def shipped_deepspeed(value: str | None) -> str | None:
    """A shipped DeepSpeed JSON named without its path ('stage3', 'stage3.json') -> its path; any other value as
    it is (a path of the user's)."""
    if value and "/" not in value and (DEEPSPEED_DIR / f"{value.removesuffix('.json')}.json").is_file():
        return str(DEEPSPEED_DIR / f"{value.removesuffix('.json')}.json")
    return value


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
        data = load_yaml(text.decode("utf-8"), file)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a config is a YAML mapping of keys; got {type(data).__name__}")
    name_method, mode = parse_name(path.stem)
    # the method decides which sections a config needs: read before them
    declared = check_value(f"{file}: method", NESTED["method"], data.get("method"))
    method = declared or name_method
    reference = method == REFERENCE
    optional = REFERENCE_OPTIONAL if reference else ()
    sections, top = {}, {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in NESTED:
            raise ConfigError(f"{file}: unknown key '{key}'; {_suggest(str(key))}")
        spec = NESTED[key]
        if isinstance(spec, dict):
            sections[key] = _section(file, key, spec, value, required=key not in optional)
        else:
            top[key] = check_value(f"{file}: {key}", spec, value)
    for key, spec in NESTED.items():
        if not isinstance(spec, dict) and top.get(key) is None:
            if spec.default is REQUIRED:
                raise ConfigError(f"{file}: '{key}' is required")
            top[key] = spec.default

    encoders = [s for s in ENCODER_SECTIONS if s in sections]
    if len(encoders) != 1:
        raise ConfigError(f"{file}: give exactly one of 'whisper_encoder' or 'conformer_encoder' "
                          f"(found {', '.join(encoders) or 'neither'})")
    if reference and encoders[0] != "whisper_encoder":
        raise ConfigError(f"{file}: '{encoders[0]}' with method {REFERENCE}: reference decoding is available for "
                          f"Whisper encoders only (FireRedASR's own decoder is not wired); give a 'whisper_encoder'")
    for name in ("llm_decoder", "training"):
        if name not in sections:
            if name not in optional:
                raise ConfigError(f"{file}: the '{name}' section is missing")
            sections[name] = _section(file, name, NESTED[name], {}, required=False)
    for name in ("steering", "lora", "evaluation"):
        sections.setdefault(name, _section(file, name, NESTED[name], {}))

    if method is None:
        raise ConfigError(f"{file}: no method: set 'method' ({', '.join(METHODS)}) or name the file "
                          f"{{method}}_{{encoder}}_{{decoder}}_{{dataset}}_{{mode}}.yaml")
    if name_method and declared and name_method != declared:
        raise ConfigError(f"{file}: 'method: {declared}' contradicts the file name's method '{name_method}'")

    flags = [v for v in (sections["steering"].use_gradient_clipping, top["clip_steering_gradients"]) if v is not None]
    if len(set(flags)) > 1:
        raise ConfigError(f"{file}: 'steering.use_gradient_clipping' and 'clip_steering_gradients' disagree; they are "
                          f"the same switch, set both alike (or only one)")
    t, ev = sections["training"], sections["evaluation"]
    if t.fp16 and t.bf16 is True:
        raise ConfigError(f"{file}: 'training.fp16' and 'training.bf16' are both true; choose one")
    if t.use_deepspeed and not t.deepspeed_config:
        t.deepspeed_config = "stage2_simple"  # the original code's recommended configuration
    t.deepspeed_config = shipped_deepspeed(t.deepspeed_config)
    if not t.logging_dir and t.output_dir:
        t.logging_dir = str(Path(t.output_dir) / "logs")
    if top["use_early_stopping"] and top["eval_steps"] is None:
        raise ConfigError(f"{file}: 'use_early_stopping' needs dev evaluation: set 'eval_steps'")
    if reference and not (ev.output_dir or t.output_dir):
        raise ConfigError(f"{file}: 'evaluation.output_dir' is required: method {REFERENCE} trains nothing, so there "
                          f"is no training.output_dir to evaluate into")
    if reference and ev.protocol == "original":
        raise ConfigError(f"{file}: 'evaluation.protocol: original' repeats the original code's sampling from its LLM, "
                          f"which method {REFERENCE} does not have; evaluate it with protocol honest")

    config = RunConfig(
        path=path, name=path.stem, mode=mode, method=method, encoder_kind=encoders[0].split("_")[0],
        encoder=sections[encoders[0]], decoder=sections["llm_decoder"], steering=sections["steering"],
        lora=sections["lora"], training=t, evaluation=ev, top=SimpleNamespace(**top),
        clip_steering=bool(flags and flags[0]), sha256=hashlib.sha256(text).hexdigest())
    if not reference:  # a reference row builds no SteerMoE model
        try:
            config.model_config()
        except ConfigError as err:
            raise ConfigError(f"{file}: {err}") from err
    return config
