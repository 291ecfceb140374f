"""The experiment matrix: `experiments/matrix.tsv` rows x `experiments/catalog.yaml` names -> experiments.

Torch-free (the Snakefile imports it at parse time, and `steermoe aggregate` / `steermoe plan` use it too).

    from steermoe.matrix import load_matrix
    for exp in load_matrix("experiments/matrix.tsv", "experiments/catalog.yaml"):
        print(exp.id, exp.method, exp.encoder, exp.decoder, exp.dataset, exp.overrides, exp.group, exp.baseline,
              exp.metric, exp.train_config, exp.test_config, exp.row)

The matrix is a tab-separated file. Columns:
    method, encoder, decoder, dataset   required; a method of steermoe.config.METHODS and names of the catalog
    recipe                              optional name of a catalog recipe (a block of settings: seed-code, paper)
    variant                             optional explicit suffix of the experiment id (default: the recipe, then
                                        the overrides)
    group, baseline                     optional ablation group; `baseline: true` on the one row of the group that
                                        the others are compared with (all rows of a group share the dataset)
    tags                                optional free text (comma-separated), carried into the table
    any name of SETTINGS                optional per-row override of a config setting (empty cell: no override)
Blank lines and lines starting with '#' are ignored (they still count in line numbers).

Every error names the file, the row (1 = the first experiment row) and its line in the file, the column, the bad
value and what is allowed, and is raised before any job runs.

Settings of one experiment, lowest to highest precedence: the settings' own defaults (runconfig.SCHEMA), catalog
`defaults.settings`, the encoder's, the decoder's and the dataset's `settings`, the row's recipe (catalog
`recipes.NAME.settings`, then its `encoders.TYPE` block for the row's encoder type), the matrix row's override
columns, and last, with `quick=True` (the CI-size variant), `defaults.quick.settings` and the dataset's
`quick.settings`.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from steermoe.config import METHODS
from steermoe.errors import ConfigError
from steermoe.launch import master_port
from steermoe.runconfig import METRICS, SCHEMA, Key, _check_value, _Loader, yaml_problem

# ---- settings: the config keys a catalog or a matrix column may set ---------------------------------------------
# name (catalog key and matrix column) -> dotted key of the run config (steermoe.runconfig.SCHEMA)
SETTINGS: dict[str, str] = {
    # training
    "batch_size": "training.batch_size",
    "epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "learning_rate": "training.learning_rate",
    "steering_learning_rate": "training.steering_learning_rate",
    "router_learning_rate": "training.router_learning_rate",
    "weight_decay": "training.weight_decay",
    "warmup_steps": "training.warmup_steps",
    "lr_scheduler": "training.lr_scheduler",
    "gradient_clipping": "training.gradient_clipping",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "fp16": "training.fp16",
    "bf16": "training.bf16",
    "use_deepspeed": "training.use_deepspeed",
    "deepspeed_config": "training.deepspeed_config",
    # steering
    "num_experts": "steering.num_experts",
    "steering_scale": "steering.steering_scale",
    "use_layer_scales": "steering.use_layer_scales",
    "steering_gradient_clip": "steering.steering_gradient_clip",
    # lora ablation
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    # decoder
    "max_length": "llm_decoder.max_length",
    "dtype": "llm_decoder.dtype",
    # evaluation
    "eval_batch_size": "evaluation.batch_size",
    "num_beams": "evaluation.num_beams",
    "max_new_tokens": "evaluation.max_new_tokens",
    "repetition_penalty": "evaluation.repetition_penalty",
    "protocol": "evaluation.protocol",
    "sampling_seeds": "evaluation.sampling_seeds",
    "bootstrap_resamples": "evaluation.bootstrap_resamples",
    # top level
    "seed": "seed",
    "encoder_window": "encoder_window",
    "prompt_format": "prompt_format",
    "textual_prompt": "textual_prompt",
    "max_audio_length": "max_audio_length",
    "max_text_length": "max_text_length",
    "filter_dataset": "filter_dataset",
    "max_prompt_tokens": "max_prompt_tokens",
    "use_adapter": "use_adapter",
    "save_total_limit": "save_total_limit",
    "logging_steps": "logging_steps",
    "eval_steps": "eval_steps",
    "save_steps": "save_steps",
    "log_steering_analysis": "log_steering_analysis",
    "steering_log_interval": "steering_log_interval",
    "clip_steering_gradients": "clip_steering_gradients",
    "use_early_stopping": "use_early_stopping",
    "early_stopping_patience": "early_stopping_patience",
    "pooling_kernel_size": "pooling_kernel_size",
    "pooling_position": "pooling_position",
    "pooling_type": "pooling_type",
    "gradient_checkpointing": "gradient_checkpointing",
    "dataloader_num_workers": "dataloader_num_workers",
}

# short names used in automatic variants: {method}_{encoder}_{decoder}_{dataset}_{variant}, e.g. experts4-window30s
ABBREVIATIONS = {
    "num_experts": "experts", "steering_scale": "scale", "use_layer_scales": "layerscales",
    "encoder_window": "window", "pooling_kernel_size": "pool", "pooling_type": "pooltype",
    "pooling_position": "poolpos", "prompt_format": "prompt", "max_steps": "steps", "batch_size": "bs",
    "learning_rate": "lr", "steering_learning_rate": "slr", "router_learning_rate": "rlr", "lora_r": "lorar",
    "num_beams": "beams", "repetition_penalty": "reppen", "max_prompt_tokens": "maxprompt",
    "textual_prompt": "textprompt",
}

SPECIAL_COLUMNS = ("method", "encoder", "decoder", "dataset", "recipe", "variant", "group", "baseline", "tags")
REQUIRED_COLUMNS = ("method", "encoder", "decoder", "dataset")
ENCODER_TYPES = ("whisper", "conformer")
SYNTH_CORPORA = ("synth-en", "synth-aqa", "synth-zh")
PREPARE_CORPORA = ("librispeech", "librispeech-parquet", "aishell1", "aishell2", "clotho-aqa", "parquet")
RESERVED_PARTS = ("train", "test", "eval")  # the name convention reads the mode from the last `_` parts

NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")  # catalog names and variants: no `_`, no `/`
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PATH_RE = re.compile(r"^[A-Za-z0-9._+/-]+$")  # paths that reach file names and shell commands
PATH_SETTINGS = ("deepspeed_config",)  # settings whose value is a path
MAX_ID_LENGTH = 200
TRUE, FALSE = ("true", "yes", "1", "y", "on"), ("false", "no", "0", "n", "off")

WORKFLOW_CONFIG_DEFAULTS = {"matrix": "experiments/matrix.tsv", "catalog": "experiments/catalog.yaml",
                            "results": "results", "models": "models", "data": "data",
                            "templates": "templates", "quick": False}


def setting_key(name: str) -> Key:
    section, _, key = SETTINGS[name].rpartition(".")
    return SCHEMA[section][key] if section else SCHEMA[key]


def is_safe_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and ".." not in name


def check_safe_path(where: str, value: str, relative: bool = True) -> str:
    """A path that reaches file names and shell commands: no spaces or shell characters; from the matrix also no
    absolute path and no '..' (the matrix names files inside the workflow; the catalog holds the machine's paths)."""
    parts = PurePosixPath(value).parts
    if not PATH_RE.match(value) or (relative and (value.startswith("/") or ".." in parts)):
        rules = "letters, digits, '.', '_', '-', '+' and '/' (no spaces or shell characters such as ; $ ` ( ) & | *)"
        if relative:
            rules += "; a path relative to the workflow folder, without '..' (machine paths go in the catalog)"
        raise ConfigError(f"{where}: {value!r} is not an allowed path: use {rules}")
    return value


def _closest(value: str, allowed) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _allowed(allowed) -> str:
    return ", ".join(str(a) for a in allowed) or "none"


# ---- the workflow config (experiments/config.yaml) -------------------------------------------------------------
def check_workflow_keys(config: dict, where: str) -> None:
    unknown = sorted(set(config) - set(WORKFLOW_CONFIG_DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'{_closest(unknown[0], WORKFLOW_CONFIG_DEFAULTS)}; "
                          f"valid keys: {_allowed(WORKFLOW_CONFIG_DEFAULTS)}")


def parse_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ConfigError(f"{where}: {value!r} is not true or false")


def read_yaml(path: str | Path):
    """A YAML file read with YAML 1.2 numbers (1e-2 is a float); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    try:
        return yaml.load(text, Loader=_Loader)  # YAML 1.2 numbers: 1e-2 is a float
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_problem(err)}") from err


# ---- the catalog ---------------------------------------------------------------------------------------------
@dataclass
class Catalog:
    path: str
    encoders: dict
    decoders: dict
    datasets: dict
    defaults: dict  # {"settings": {...}, "resources": {...}, "quick": {"settings": {...}}}
    recipes: dict = field(default_factory=dict)  # name -> {"settings": {...}, "encoders": {type: {...}}, ...}


def _check_mapping(where: str, value, allowed: dict | tuple, required=()) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping, got {value!r}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'{_closest(key, allowed)}; valid keys: {_allowed(allowed)}")
    for key in required:
        if value.get(key) in (None, ""):
            raise ConfigError(f"{where}: '{key}' is required")
    return value


def check_settings(where: str, values) -> dict:
    """Validate a mapping of settings (catalog `settings:` blocks); values are typed YAML."""
    values = _check_mapping(where, values, SETTINGS)
    return {name: _check_value(f"{where}.{name}", setting_key(name), value) for name, value in values.items()}


RESOURCE_KEYS = ("gpus", "mem_mb", "runtime", "threads", "eval_runtime", "eval_mem_mb")


def _check_resources(where: str, values) -> dict:
    values = _check_mapping(where, values, RESOURCE_KEYS)
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{key}: must be a non-negative integer, got {value!r}")
    return values


def _check_str(where: str, value, required=True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _check_splits(where: str, value) -> dict:
    value = _check_mapping(where, value, ("train", "dev", "test"), required=("train", "test"))
    out = {}
    for split in ("train", "dev", "test"):
        names = value.get(split)
        if names is None:
            out[split] = []
            continue
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and is_safe_name(n) for n in names):
            raise ConfigError(f"{where}.{split}: must be a split name or a list of split names ([A-Za-z0-9.-]), "
                              f"got {value.get(split)!r}")
        out[split] = names
    return out


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate the catalog; errors name the file and the dotted key."""
    file = str(path)
    data = read_yaml(Path(path))
    data = _check_mapping(file, data, ("defaults", "recipes", "encoders", "decoders", "datasets"),
                          required=("encoders", "decoders", "datasets"))
    defaults = _check_mapping(f"{file}: defaults", data.get("defaults"), ("settings", "resources", "quick"))
    quick = _check_mapping(f"{file}: defaults.quick", defaults.get("quick"), ("settings",))
    defaults = {"settings": check_settings(f"{file}: defaults.settings", defaults.get("settings")),
                "resources": _check_resources(f"{file}: defaults.resources", defaults.get("resources")),
                "quick": {"settings": check_settings(f"{file}: defaults.quick.settings", quick.get("settings"))}}

    def entries(kind: str) -> dict:
        section = data[kind]
        if not isinstance(section, dict) or not section:
            raise ConfigError(f"{file}: '{kind}' must be a mapping of names to entries")
        for name in section:
            if not isinstance(name, str) or not is_safe_name(name):
                raise ConfigError(f"{file}: {kind} name {name!r} is not allowed: names use letters, digits, '.' "
                                  f"and '-' (no '_', '/' or '..'), because they become parts of experiment ids and "
                                  f"config file names")
        return section

    encoders = {}
    for name, entry in entries("encoders").items():
        where = f"{file}: encoders.{name}"
        entry = _check_mapping(where, entry, ("type", "path", "embedded", "feature_dim", "num_layers", "settings",
                                              "description"), required=("type",))
        if entry["type"] not in ENCODER_TYPES:
            raise ConfigError(f"{where}.type: {entry['type']!r} is not one of {_allowed(ENCODER_TYPES)}")
        for key in ("feature_dim", "num_layers"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.{key}: must be a positive integer, got {value!r}")
        encoders[name] = {"name": name, "type": entry["type"], "path": _check_str(f"{where}.path", entry.get("path"),
                                                                                  required=False),
                          "embedded": _check_str(f"{where}.embedded", entry.get("embedded"), required=False),
                          "feature_dim": entry.get("feature_dim"), "num_layers": entry.get("num_layers"),
                          "settings": check_settings(f"{where}.settings", entry.get("settings")),
                          "description": entry.get("description", "")}
    decoders = {}
    for name, entry in entries("decoders").items():
        where = f"{file}: decoders.{name}"
        entry = _check_mapping(where, entry, ("path", "embedded", "dtype", "resources", "settings", "description"))
        settings = check_settings(f"{where}.settings", entry.get("settings"))
        if entry.get("dtype") is not None:
            settings = {"dtype": _check_value(f"{where}.dtype", setting_key("dtype"), entry["dtype"]), **settings}
        decoders[name] = {"name": name, "path": _check_str(f"{where}.path", entry.get("path"), required=False),
                          "embedded": _check_str(f"{where}.embedded", entry.get("embedded"), required=False),
                          "resources": _check_resources(f"{where}.resources", entry.get("resources")),
                          "settings": settings, "description": entry.get("description", "")}
    for kind, section in (("encoders", encoders), ("decoders", decoders)):
        for name, entry in section.items():
            if not entry["path"] and not entry["embedded"]:
                raise ConfigError(f"{file}: {kind}.{name}: give 'path' (a local model folder) or 'embedded' "
                                  f"(an embedded model name: see `steermoe models list`)")
            if entry["embedded"]:
                from steermoe.embedded import EMBEDDED_MODELS  # torch-free: the registry only

                if entry["embedded"] not in EMBEDDED_MODELS:
                    raise ConfigError(f"{file}: {kind}.{name}.embedded: {entry['embedded']!r} is not an embedded model"
                                      f"{_closest(entry['embedded'], EMBEDDED_MODELS)}; embedded models: "
                                      f"{_allowed(EMBEDDED_MODELS)}")

    datasets = {}
    for name, entry in entries("datasets").items():
        where = f"{file}: datasets.{name}"
        entry = _check_mapping(where, entry, ("synth", "sizes", "prepare", "splits", "metric", "prompt", "language",
                                              "task", "settings", "quick", "description"),
                               required=("metric", "prompt"))
        if ("synth" in entry) == ("prepare" in entry):
            raise ConfigError(f"{where}: give exactly one of 'synth' (a synthetic corpus: {_allowed(SYNTH_CORPORA)})"
                              f" or 'prepare' (a real corpus: corpus + root)")
        if entry["metric"] not in METRICS:
            raise ConfigError(f"{where}.metric: {entry['metric']!r} is not one of {_allowed(METRICS)}")
        _check_str(f"{where}.prompt", entry["prompt"])
        quick = _check_mapping(f"{where}.quick", entry.get("quick"), ("sizes", "settings"))
        out = {"name": name, "metric": entry["metric"], "prompt": entry["prompt"],
               "language": entry.get("language", ""), "task": entry.get("task", ""),
               "settings": check_settings(f"{where}.settings", entry.get("settings")),
               "quick": {"sizes": _check_sizes(f"{where}.quick.sizes", quick.get("sizes")),
                         "settings": check_settings(f"{where}.quick.settings", quick.get("settings"))},
               "description": entry.get("description", ""), "synth": None, "prepare": None}
        if "synth" in entry:
            if entry["synth"] not in SYNTH_CORPORA:
                raise ConfigError(f"{where}.synth: {entry['synth']!r} is not one of {_allowed(SYNTH_CORPORA)}"
                                  f"{_closest(entry['synth'], SYNTH_CORPORA)}")
            out["synth"] = entry["synth"]
            out["sizes"] = _check_sizes(f"{where}.sizes", entry.get("sizes"))
            out["splits"] = _check_splits(f"{where}.splits", entry.get("splits") or
                                          {"train": "train", "dev": "dev", "test": "test"})
        else:
            if entry.get("sizes") is not None or out["quick"]["sizes"]:
                raise ConfigError(f"{where}: 'sizes' is for synthetic corpora only")
            prep = _check_mapping(f"{where}.prepare", entry["prepare"],
                                  ("corpus", "root", "audio_column", "text_column", "split", "max_audio_length",
                                   "max_text_length", "filter_dataset"), required=("corpus", "root"))
            if prep["corpus"] not in PREPARE_CORPORA:
                raise ConfigError(f"{where}.prepare.corpus: {prep['corpus']!r} is not one of "
                                  f"{_allowed(PREPARE_CORPORA)}{_closest(prep['corpus'], PREPARE_CORPORA)}")
            roots = [prep["root"]] if isinstance(prep["root"], str) else prep["root"]
            if not isinstance(roots, list) or not roots or not all(isinstance(r, str) and r for r in roots):
                raise ConfigError(f"{where}.prepare.root: must be a folder or a list of folders, got {prep['root']!r}")
            out["prepare"] = {**prep, "root": roots}
            if "splits" not in entry:
                raise ConfigError(f"{where}: 'splits' is required for a real corpus (train, dev, test: the split "
                                  f"names its reader produces, e.g. train-clean-100 for LibriSpeech)")
            out["splits"] = _check_splits(f"{where}.splits", entry["splits"])
        datasets[name] = out
    recipes = {}
    section = data.get("recipes") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: 'recipes' must be a mapping of names to blocks of settings")
    for name, entry in section.items():
        where = f"{file}: recipes.{name}"
        if not isinstance(name, str) or not is_safe_name(name):
            raise ConfigError(f"{where}: a recipe name uses letters, digits, '.' and '-' (it becomes part of ids)")
        entry = _check_mapping(where, entry, ("settings", "encoders", "description"))
        by_type = _check_mapping(f"{where}.encoders", entry.get("encoders"), ENCODER_TYPES)
        recipes[name] = {"name": name, "description": entry.get("description", ""),
                         "settings": check_settings(f"{where}.settings", entry.get("settings")),
                         "encoders": {kind: check_settings(f"{where}.encoders.{kind}", values)
                                      for kind, values in by_type.items()}}
    return Catalog(file, encoders, decoders, datasets, defaults, recipes)


def _check_sizes(where: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and is_safe_name(k) and isinstance(v, int)
                                              and not isinstance(v, bool) and v > 0 for k, v in value.items()):
        raise ConfigError(f"{where}: must map split names to positive row counts, e.g. {{train: 1200, dev: 100}}; "
                          f"got {value!r}")
    return dict(value)


# ---- experiments -----------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """One matrix row, expanded. Paths are relative to the workflow root (where snakemake runs)."""
    id: str  # {method}_{encoder}_{decoder}_{dataset}[_{variant}]
    method: str
    encoder: str  # catalog names
    decoder: str
    dataset: str
    overrides: dict  # the row's override columns (typed), e.g. {"num_experts": 4}
    group: str | None  # ablation group; None when the row has none
    baseline: bool  # the group's baseline row
    metric: str  # wer | cer | qa_accuracy
    train_config: str  # results/{id}/{method}_{encoder}_{decoder}_{dataset}_train[_{variant}].yaml
    test_config: str  # ... _test[_{variant}].yaml
    row: int  # 1 = the first experiment row of the matrix (the header and comment lines do not count)
    line: int  # the row's line in the file (the header is line 1 when nothing precedes it)
    variant: str | None = None
    recipe: str | None = None  # a named block of settings from the catalog's `recipes:`
    trained_by: str | None = None  # the experiment whose model this one evaluates (same training, other evaluation)
    tags: list = field(default_factory=list)
    language: str = ""
    task: str = ""
    settings: dict = field(default_factory=dict)  # the settings given (catalog, row, quick), merged in order of
    #                                               precedence (module docstring); unset ones take runconfig's default
    resources: dict = field(default_factory=dict)  # train job: gpus, mem_mb, runtime (minutes), threads, ...
    train_dir: str = ""  # results/{id}/train (checkpoints; final/ is the trained artefact)
    final_dir: str = ""  # results/{id}/train/final (model.safetensors, steermoe.json, train_summary.json)
    eval_dir: str = ""  # results/{id}/eval (metrics.json, predictions.jsonl, steering.json, steering.png)
    data_dir: str = ""  # data/{dataset}
    parquet: dict = field(default_factory=dict)  # {"train": [...], "dev": [...], "test": [...]} parquet files
    embedded_models: list = field(default_factory=list)  # embedded model names this experiment imports
    encoder_entry: dict = field(default_factory=dict)  # the catalog entries (validated)
    decoder_entry: dict = field(default_factory=dict)
    dataset_entry: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The seed convention's stem without mode: {method}_{encoder}_{decoder}_{dataset}."""
        return f"{self.method}_{self.encoder}_{self.decoder}_{self.dataset}"

    @property
    def metrics(self) -> str:
        return f"{self.eval_dir}/metrics.json"

    @property
    def model(self) -> str:
        return f"{self.final_dir}/model.safetensors"

    @property
    def port(self) -> int:
        """The distributed master port of the experiment's training job (stable, spread over 20000-39999)."""
        return master_port(self.id)


class _Where:
    def __init__(self, file: str, row: int, line: int):
        self.file, self.row, self.line = file, row, line

    def __call__(self, column: str | None = None) -> str:
        where = f"{self.file}: row {self.row} (line {self.line})"
        return f"{where}, column '{column}'" if column else where


def _parse_cell(where: str, name: str, text: str):
    """A matrix cell -> the setting's type, validated like the config key it sets."""
    key = setting_key(name)
    wanted = key.type
    try:
        if wanted is bool:
            value = parse_bool(text, where)
        elif isinstance(wanted, tuple):  # true, false or one of the choices' words (bf16: auto)
            words = [c for c in key.choices if isinstance(c, str)]
            value = text.strip().lower() if text.strip().lower() in words else parse_bool(text, where)
        elif wanted is int:
            value = int(text)
        elif wanted is float:
            value = float(text)
        elif wanted is list:
            value = [v.strip() for v in text.split(",") if v.strip()]
        else:
            value = text
    except (ValueError, ConfigError):
        shown = " or ".join(str(c).lower() for c in key.choices) if isinstance(wanted, tuple) else \
            {bool: "true or false", int: "an integer", float: "a number"}[wanted]
        allowed = f"; allowed: {_allowed(key.choices)}" if key.choices else ""
        raise ConfigError(f"{where}: {text!r} is not {shown}{allowed}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {text!r} is not a finite number")
    if name in PATH_SETTINGS:
        check_safe_path(where, value)
    return _check_value(where, key, value)


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9.-]+", text) and ".." not in text and len(text) <= 24:
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def auto_variant(overrides: dict) -> str | None:
    """The id suffix for a row's overrides, in SETTINGS order: {'num_experts': 4, 'encoder_window': '30s'}
    -> 'window30s-experts4'... (order of SETTINGS, so the same overrides always give the same variant)."""
    parts = [f"{ABBREVIATIONS.get(name, name.replace('_', ''))}{_format_value(overrides[name])}"
             for name in SETTINGS if name in overrides]
    return "-".join(parts) or None


def read_matrix_rows(path: str | Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and the rows of a TSV as (line number, {column: cell}); cells are stripped strings."""
    file = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"{file}: cannot read the matrix ({err.strerror})") from err
    header, rows = None, []
    for number, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in text.split("\t")]
        if header is None:
            header = cells
            header_line = number
            continue
        if len(cells) > len(header):
            extra = [c for c in cells[len(header):] if c]
            if extra:
                raise ConfigError(f"{file}: line {number} has {len(cells)} tab-separated cells but the header "
                                  f"(line {header_line}) has {len(header)} columns; extra value {extra[0]!r}")
        cells += [""] * (len(header) - len(cells))
        rows.append((number, dict(zip(header, cells))))
    if header is None:
        raise ConfigError(f"{file}: empty matrix: the first line is the header (method, encoder, decoder, dataset, "
                          f"...), tab-separated")
    allowed = list(SPECIAL_COLUMNS) + list(SETTINGS)
    seen = set()
    for column in header:
        if column in seen:
            raise ConfigError(f"{file}: column '{column}' appears twice in the header (line {header_line})")
        seen.add(column)
        if column not in allowed:
            hint = " (the matrix must be tab-separated)" if " " in column or "," in column else ""
            raise ConfigError(f"{file}: unknown column '{column}' in the header (line {header_line}){hint}"
                              f"{_closest(column, allowed)}; allowed columns: {_allowed(allowed)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"{file}: the header (line {header_line}) lacks the column '{missing[0]}'; required: "
                          f"{_allowed(REQUIRED_COLUMNS)} (tab-separated)")
    return header, rows


def _merge_settings(*layers: dict) -> dict:
    merged = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _model_path(entry: dict, kind: str, name: str, models_dir: str, catalog: str) -> str:
    if entry["embedded"]:
        expected = f"{models_dir}/{entry['embedded']}"
        if entry["path"] and PurePosixPath(entry["path"]) != PurePosixPath(expected):
            raise ConfigError(f"{catalog}: {kind}.{name}: an embedded model lives at {expected} (the workflow imports "
                              f"it there), but 'path' says {entry['path']}; remove 'path' or 'embedded'")
        return expected
    return entry["path"]


def load_matrix(matrix_path: str | Path, catalog_path: str | Path, quick: bool = False, *,
                results: str = "results", data: str = "data", models: str = "models") -> list[Experiment]:
    """Expand and validate the matrix. Raises ConfigError (file, row, line, column, value, allowed values).

    `quick` selects the CI-size variant (catalog `quick:` blocks). `results`, `data` and `models` are the folders
    of the workflow config; the returned paths are relative to the workflow root.
    """
    catalog = load_catalog(catalog_path)
    file = str(matrix_path)
    header, rows = read_matrix_rows(matrix_path)
    results, data, models = (str(PurePosixPath(d)) for d in (results, data, models))
    experiments: list[Experiment] = []
    by_id: dict[str, Experiment] = {}
    names = {"method": METHODS, "encoder": catalog.encoders, "decoder": catalog.decoders,
             "dataset": catalog.datasets}
    for row, (line, cells) in enumerate(rows, 1):
        where = _Where(file, row, line)
        for column, allowed in names.items():
            value = cells[column]
            if not value:
                raise ConfigError(f"{where(column)}: empty; allowed: {_allowed(allowed)}")
            if value not in allowed:
                kind = "method" if column == "method" else f"{column} (not in {catalog.path})"
                raise ConfigError(f"{where(column)}: unknown {kind} {value!r}{_closest(value, allowed)}; "
                                  f"allowed: {_allowed(allowed)}")
        overrides = {}
        for column in header:
            if column in SETTINGS and cells[column] != "":
                overrides[column] = _parse_cell(where(column), column, cells[column])
        recipe = cells.get("recipe") or None
        if recipe is not None and recipe not in catalog.recipes:
            raise ConfigError(f"{where('recipe')}: unknown recipe {recipe!r} (not in {catalog.path})"
                              f"{_closest(recipe, catalog.recipes)}; allowed: {_allowed(catalog.recipes)}")
        variant = cells.get("variant") or None
        if variant is not None:
            if not is_safe_name(variant) or variant in RESERVED_PARTS:
                raise ConfigError(f"{where('variant')}: {variant!r} is not allowed: a variant uses letters, digits, "
                                  f"'.' and '-' (no '_', '/' or '..') and is not one of {_allowed(RESERVED_PARTS)}")
        else:
            variant = "-".join(part for part in (recipe, auto_variant(overrides)) if part) or None
        method, enc, dec, ds = cells["method"], cells["encoder"], cells["decoder"], cells["dataset"]
        exp_id = f"{method}_{enc}_{dec}_{ds}" + (f"_{variant}" if variant else "")
        if not ID_RE.match(exp_id) or ".." in exp_id or len(exp_id) > MAX_ID_LENGTH:
            raise ConfigError(f"{where()}: experiment id {exp_id!r} is not a safe id (letters, digits, '.', '-', '_';"
                              f" no '..'; at most {MAX_ID_LENGTH} characters); set a short 'variant'")
        if exp_id in by_id:
            first = by_id[exp_id]
            raise ConfigError(f"{where()}: duplicate of row {first.row} (line {first.line}): both are experiment "
                              f"'{exp_id}'; remove one, or tell them apart with an override or a 'variant'")
        group = cells.get("group") or None
        if group is not None and not is_safe_name(group):
            raise ConfigError(f"{where('group')}: {group!r} is not allowed: a group name uses letters, digits, '.' "
                              f"and '-'")
        baseline = parse_bool(cells.get("baseline") or "false", where("baseline"))
        if baseline and group is None:
            raise ConfigError(f"{where('baseline')}: a baseline row needs a 'group' (the rows it is compared with)")
        tags = [t.strip() for t in (cells.get("tags") or "").split(",") if t.strip()]

        encoder, decoder, dataset = catalog.encoders[enc], catalog.decoders[dec], catalog.datasets[ds]
        chosen = catalog.recipes[recipe] if recipe else {"settings": {}, "encoders": {}}
        settings = _merge_settings(
            catalog.defaults["settings"], encoder["settings"], decoder["settings"], dataset["settings"],
            {"textual_prompt": dataset["prompt"]} if "textual_prompt" not in dataset["settings"] else {},
            chosen["settings"], chosen["encoders"].get(encoder["type"], {}), overrides,
            catalog.defaults["quick"]["settings"] if quick else {}, dataset["quick"]["settings"] if quick else {})
        resources = {"gpus": 0, "mem_mb": 8000, "runtime": 240, "threads": 1,
                     **catalog.defaults["resources"], **decoder["resources"]}
        data_dir = f"{data}/{ds}"
        exp_dir = f"{results}/{exp_id}"
        suffix = f"_{variant}" if variant else ""
        exp = Experiment(
            id=exp_id, method=method, encoder=enc, decoder=dec, dataset=ds, overrides=overrides, group=group,
            baseline=baseline, metric=dataset["metric"],
            train_config=f"{exp_dir}/{method}_{enc}_{dec}_{ds}_train{suffix}.yaml",
            test_config=f"{exp_dir}/{method}_{enc}_{dec}_{ds}_test{suffix}.yaml",
            row=row, line=line, variant=variant, recipe=recipe, tags=tags, language=dataset["language"],
            task=dataset["task"],
            settings=settings, resources=resources, train_dir=f"{exp_dir}/train", final_dir=f"{exp_dir}/train/final",
            eval_dir=f"{exp_dir}/eval", data_dir=data_dir,
            parquet={split: [f"{data_dir}/{s}.parquet" for s in names_]
                     for split, names_ in dataset["splits"].items()},
            embedded_models=sorted({e["embedded"] for e in (encoder, decoder) if e["embedded"]}),
            encoder_entry={**encoder, "path": _model_path(encoder, "encoders", enc, models, catalog.path)},
            decoder_entry={**decoder, "path": _model_path(decoder, "decoders", dec, models, catalog.path)},
            dataset_entry=dataset)
        by_id[exp_id] = exp
        experiments.append(exp)
    if not experiments:
        raise ConfigError(f"{file}: no experiment rows (only a header)")
    _share_training(experiments)
    _check_groups(file, experiments)
    return experiments


# settings that change only how a trained model is evaluated (eval_batch_size also sizes training's dev batches)
EVALUATION_ONLY = frozenset(name for name, key in SETTINGS.items()
                            if key.startswith("evaluation.") and name != "eval_batch_size")


def _share_training(experiments: list[Experiment]) -> None:
    """Experiments that differ only in evaluation settings (protocol, beams, ...) train once: each later one is
    evaluated on the first one's model, so adding an evaluation variant never retrains."""
    first: dict[str, Experiment] = {}
    for exp in experiments:
        training = {k: v for k, v in exp.settings.items() if k not in EVALUATION_ONLY}
        key = repr((exp.method, exp.encoder, exp.decoder, exp.dataset, sorted(training.items())))
        owner = first.setdefault(key, exp)
        if owner is not exp:
            exp.trained_by, exp.train_config = owner.id, owner.train_config
            exp.train_dir, exp.final_dir = owner.train_dir, owner.final_dir


def _check_groups(file: str, experiments: list[Experiment]) -> None:
    groups: dict[str, list[Experiment]] = {}
    for exp in experiments:
        if exp.group:
            groups.setdefault(exp.group, []).append(exp)
    for name, members in groups.items():
        baselines = [e for e in members if e.baseline]
        if len(baselines) != 1:
            rows = ", ".join(f"row {e.row} (line {e.line})" for e in (baselines or members))
            what = "no baseline row" if not baselines else f"{len(baselines)} baseline rows"
            raise ConfigError(f"{file}: group '{name}' has {what} ({rows}); mark exactly one row of the group "
                              f"'baseline: true' (the row the others are compared with)")
        base = baselines[0]
        for exp in members:
            if exp.dataset != base.dataset:
                raise ConfigError(f"{file}: row {exp.row} (line {exp.line}), column 'dataset': group '{name}' "
                                  f"compares on the test set of its baseline (row {base.row}: {base.dataset!r}), but "
                                  f"this row uses {exp.dataset!r}; use one group per dataset")


# ---- jobs other than training: data preparation and model import ----------------------------------------------
def data_command(dataset: dict, out: str, quick: bool = False) -> str:
    """The `steermoe data ...` command (shell-quoted) that prepares a catalog dataset into `out`."""
    if dataset["synth"]:
        sizes = {**dataset.get("sizes", {}), **(dataset["quick"]["sizes"] if quick else {})}
        args = ["steermoe", "data", "synth", dataset["synth"], "--out", out]
        if sizes:
            args += ["--sizes", *(f"{k}={v}" for k, v in sizes.items())]
        return shlex.join(args)
    prep = dataset["prepare"]
    args = ["steermoe", "data", "prepare", "--corpus", prep["corpus"], "--root", *prep["root"], "--out", out]
    for key in ("audio_column", "text_column", "split", "max_audio_length", "max_text_length"):
        if prep.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(prep[key])]
    if prep.get("filter_dataset") is False:
        args.append("--no-filter")
    return shlex.join(args)


def embedded_models_used(experiments: list[Experiment]) -> list[str]:
    return sorted({m for e in experiments for m in e.embedded_models})
