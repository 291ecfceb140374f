"""The catalog (`experiments/catalog.yaml`): what each encoder, decoder, dataset and recipe name of the matrix means.

Torch-free (the Snakefile reads it at parse time). Every error names the file and the dotted key, says what is
allowed and, where a name is close to a valid one, suggests it.

    from steermoe.declare.catalog import load_catalog
    catalog = load_catalog("experiments/catalog.yaml")
    catalog.encoders["whisper-tiny.en"]  # {"name", "type", "path", "embedded", "feature_dim", "num_layers", ...}
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from steermoe.declare.checks import check_mapping, check_value, closest, is_safe_name, listed, read_yaml, shown
from steermoe.declare.corpora import PREPARE_CORPORA, SYNTH_CORPORA
from steermoe.declare.embedded_models import EMBEDDED_MODELS
from steermoe.declare.settings import METRICS, OWN_DECODER, SETTINGS
from steermoe.errors import ConfigError

ENCODER_TYPES = ("whisper", "conformer")
# a job's resources where neither the decoder's `resources` nor the catalog's `defaults.resources` give them (the one
# layer of defaults); mem_mb, where neither gives it, is the job's host memory estimate with its margin
# (steermoe.report.plan.request_memory); an evaluation job takes eval_runtime and eval_mem_mb where given, else the
# training's
RESOURCE_DEFAULTS = {"gpus": 0, "runtime": 240, "threads": 1}  # runtime in minutes
RESOURCE_KEYS = (*RESOURCE_DEFAULTS, "mem_mb", "eval_runtime", "eval_mem_mb")


@dataclass
class Catalog:
    path: str
    encoders: dict
    decoders: dict
    datasets: dict
    defaults: dict  # {"settings": {...}, "resources": {...}, "quick": {"settings": {...}}}
    recipes: dict = field(default_factory=dict)  # name -> {"settings": {...}, "encoders": {type: {...}}, ...}


def check_settings(where: str, values) -> dict:
    """Validate a mapping of settings (catalog `settings:` blocks); values are typed YAML."""
    values = check_mapping(where, values, SETTINGS)
    return {name: check_value(f"{where}.{name}", SETTINGS[name], value) for name, value in values.items()}


def _check_resources(where: str, values) -> dict:
    values = check_mapping(where, values, RESOURCE_KEYS)
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{key}: must be a non-negative integer, got {value!r}")
    return values


def _check_str(where: str, value, required=True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, got {shown(value)}")
    return value


def _split_names(where: str, value) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and is_safe_name(n) for n in names):
        raise ConfigError(f"{where}: must be a split name or a list of split names ([A-Za-z0-9.-]), got {shown(value)}")
    return names


def _check_splits(where: str, value, test_sets) -> tuple[dict, dict]:
    """(train and dev split names, {test set name: split names}). The test sets are `test_sets`, one per prepared
    split named there, or else the one set `test` that `splits.test` makes."""
    where_sets = f"{where.rpartition('.')[0]}.test_sets"
    required = ("train",) if test_sets is not None else ("train", "test")
    value = check_mapping(where, value, ("train", "dev", "test"), required=required)
    if test_sets is not None and "test" in value:
        raise ConfigError(f"{where}.test: give the test splits in one place: 'test_sets' lists them ({where_sets})")
    splits = {split: _split_names(f"{where}.{split}", value[split]) if value.get(split) is not None else []
              for split in ("train", "dev")}
    if test_sets is None:
        return splits, {"test": _split_names(f"{where}.test", value["test"])}
    names = _split_names(where_sets, test_sets)
    if len(set(names)) != len(names):
        raise ConfigError(f"{where_sets}: {names} names a split twice")
    return splits, {name: [name] for name in names}


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate the catalog; errors name the file and the dotted key."""
    file = str(path)
    data = read_yaml(Path(path))
    data = check_mapping(file, data, ("defaults", "recipes", "encoders", "decoders", "datasets"),
                          required=("encoders", "decoders", "datasets"))
    defaults = check_mapping(f"{file}: defaults", data.get("defaults"), ("settings", "resources", "quick"))
    quick = check_mapping(f"{file}: defaults.quick", defaults.get("quick"), ("settings",))
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
        entry = check_mapping(where, entry, ("type", "path", "embedded", "feature_dim", "num_layers", "settings",
                                              "description"), required=("type",))
        if entry["type"] not in ENCODER_TYPES:
            raise ConfigError(f"{where}.type: {entry['type']!r} is not one of {listed(ENCODER_TYPES)}")
        for key in ("feature_dim", "num_layers"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.{key}: must be a positive integer, got {value!r}")
        encoders[name] = {"name": name, "type": entry["type"], "path": _check_str(f"{where}.path", entry.get("path"),
                                                                                  required=False),
                          "embedded": _check_str(f"{where}.embedded", entry.get("embedded"), required=False),
                          "feature_dim": entry.get("feature_dim"), "num_layers": entry.get("num_layers"),
                          "settings": check_settings(f"{where}.settings", entry.get("settings")),
                          "description": _check_str(f"{where}.description", entry.get("description"), False) or ""}
    decoders = {}
    for name, entry in entries("decoders").items():
        where = f"{file}: decoders.{name}"
        if name == OWN_DECODER:
            raise ConfigError(f"{where}: '{OWN_DECODER}' is reserved (a reference row's decoder: the encoder model's "
                              f"own); choose another name")
        entry = check_mapping(where, entry, ("path", "embedded", "dtype", "resources", "settings", "description"))
        settings = check_settings(f"{where}.settings", entry.get("settings"))
        if entry.get("dtype") is not None:
            settings = {"dtype": check_value(f"{where}.dtype", SETTINGS["dtype"], entry["dtype"]), **settings}
        decoders[name] = {"name": name, "path": _check_str(f"{where}.path", entry.get("path"), required=False),
                          "embedded": _check_str(f"{where}.embedded", entry.get("embedded"), required=False),
                          "resources": _check_resources(f"{where}.resources", entry.get("resources")),
                          "settings": settings,
                          "description": _check_str(f"{where}.description", entry.get("description"), False) or ""}
    for kind, section in (("encoders", encoders), ("decoders", decoders)):
        for name, entry in section.items():
            if not entry["path"] and not entry["embedded"]:
                raise ConfigError(f"{file}: {kind}.{name}: give 'path' (a local model folder) or 'embedded' "
                                  f"(an embedded model name: see `steermoe models list`)")
            if entry["embedded"]:

                if entry["embedded"] not in EMBEDDED_MODELS:
                    raise ConfigError(f"{file}: {kind}.{name}.embedded: {entry['embedded']!r} is not an embedded model"
                                      f"{closest(entry['embedded'], EMBEDDED_MODELS)}; embedded models: "
                                      f"{listed(EMBEDDED_MODELS)}")

    datasets = {}
    for name, entry in entries("datasets").items():
        where = f"{file}: datasets.{name}"
        entry = check_mapping(where, entry, ("synth", "sizes", "prepare", "splits", "test_sets", "metric", "prompt",
                                              "language", "task", "settings", "quick", "description"),
                               required=("metric", "prompt"))
        if ("synth" in entry) == ("prepare" in entry):
            raise ConfigError(f"{where}: give exactly one of 'synth' (a synthetic corpus: {listed(SYNTH_CORPORA)})"
                              f" or 'prepare' (a real corpus: corpus + root)")
        if entry["metric"] not in METRICS:
            raise ConfigError(f"{where}.metric: {entry['metric']!r} is not one of {listed(METRICS)}")
        _check_str(f"{where}.prompt", entry["prompt"])
        quick = check_mapping(f"{where}.quick", entry.get("quick"), ("sizes", "settings"))
        out = {"name": name, "metric": entry["metric"], "prompt": entry["prompt"],
               "language": entry.get("language", ""), "task": entry.get("task", ""),
               "settings": check_settings(f"{where}.settings", entry.get("settings")),
               "quick": {"sizes": _check_sizes(f"{where}.quick.sizes", quick.get("sizes")),
                         "settings": check_settings(f"{where}.quick.settings", quick.get("settings"))},
               "description": _check_str(f"{where}.description", entry.get("description"), False) or "",
               "synth": None, "prepare": None}
        if "synth" in entry:
            if entry["synth"] not in SYNTH_CORPORA:
                raise ConfigError(f"{where}.synth: {entry['synth']!r} is not one of {listed(SYNTH_CORPORA)}"
                                  f"{closest(entry['synth'], SYNTH_CORPORA)}")
            out["synth"] = entry["synth"]
            out["sizes"] = _check_sizes(f"{where}.sizes", entry.get("sizes"))
            named = {"train": "train", "dev": "dev", **({} if "test_sets" in entry else {"test": "test"})}
            out["splits"], out["test_sets"] = _check_splits(f"{where}.splits", entry.get("splits") or named,
                                                            entry.get("test_sets"))
            for size_key, sizes in (("sizes", out["sizes"]), ("quick.sizes", out["quick"]["sizes"])):
                missing = [s for parts in out["test_sets"].values() for s in parts if sizes and s not in sizes]
                if missing:
                    raise ConfigError(f"{where}.{size_key}: test split {missing[0]!r} has no size; give it one "
                                      f"(e.g. {missing[0]}: 200) or leave it out of test_sets")
        else:
            if entry.get("sizes") is not None or out["quick"]["sizes"]:
                raise ConfigError(f"{where}: 'sizes' is for synthetic corpora only")
            if isinstance(entry["prepare"], dict) and "max_text_length" in entry["prepare"]:
                raise ConfigError(f"{where}.prepare: 'max_text_length' is now 'max_text_characters' (data preparation "
                                  f"counts characters; the max_text_length setting counts the LLM's tokens)")
            prep = check_mapping(f"{where}.prepare", entry["prepare"],
                                 ("corpus", "root", "audio_column", "text_column", "split", "max_audio_length",
                                  "max_text_characters", "filter_dataset"), required=("corpus", "root"))
            if prep["corpus"] not in PREPARE_CORPORA:
                raise ConfigError(f"{where}.prepare.corpus: {prep['corpus']!r} is not one of "
                                  f"{listed(PREPARE_CORPORA)}{closest(prep['corpus'], PREPARE_CORPORA)}")
            roots = [prep["root"]] if isinstance(prep["root"], str) else prep["root"]
            if not isinstance(roots, list) or not roots or not all(isinstance(r, str) and r for r in roots):
                raise ConfigError(f"{where}.prepare.root: must be a folder or a list of folders, got "
                                  f"{shown(prep['root'])}")
            out["prepare"] = {**prep, "root": roots}
            if "splits" not in entry:
                raise ConfigError(f"{where}: 'splits' is required for a real corpus (train, dev, test: the split "
                                  f"names its reader produces, e.g. train-clean-100 for LibriSpeech)")
            out["splits"], out["test_sets"] = _check_splits(f"{where}.splits", entry["splits"],
                                                            entry.get("test_sets"))
        datasets[name] = out
    recipes = {}
    section = data.get("recipes") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: 'recipes' must be a mapping of names to blocks of settings")
    for name, entry in section.items():
        where = f"{file}: recipes.{name}"
        if not isinstance(name, str) or not is_safe_name(name):
            raise ConfigError(f"{where}: a recipe name uses letters, digits, '.' and '-' (it becomes part of ids)")
        entry = check_mapping(where, entry, ("settings", "encoders", "description"))
        by_type = check_mapping(f"{where}.encoders", entry.get("encoders"), ENCODER_TYPES)
        recipes[name] = {"name": name,
                         "description": _check_str(f"{where}.description", entry.get("description"), False) or "",
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
                          f"got {shown(value)}")
    return dict(value)



def model_path(entry: dict, kind: str, name: str, models_dir: str, catalog: str) -> str:
    if entry["embedded"]:
        expected = f"{models_dir}/{entry['embedded']}"
        if entry["path"] and PurePosixPath(entry["path"]) != PurePosixPath(expected):
            raise ConfigError(f"{catalog}: {kind}.{name}: an embedded model lives at {expected} (the workflow imports "
                              f"it there), but 'path' says {entry['path']}; remove 'path' or 'embedded'")
        return expected
    return entry["path"]



# ---- data preparation ----------------------------------------------------------------------------------------
def separate_test_sets(dataset: dict) -> list[str]:
    """The test sets prepared by a job of their own: a synthetic corpus's test sets after the first. Adding one
    then synthesises only it, and the corpus that training reads stays as it was (a real corpus's preparation
    reads every split of the release at once, so its test sets are all there already)."""
    return list(dataset["test_sets"])[1:] if dataset["synth"] else []


def data_folder(data: str, name: str, test_set: str | None = None) -> str:
    """Where a dataset is prepared: {data}/{name}, and a separately prepared test set in {data}/{name}@{test_set}."""
    return f"{data}/{name}" + (f"@{test_set}" if test_set else "")


def data_command(dataset: dict, out: str, quick: bool = False, test_set: str | None = None) -> str:
    """The `steermoe data ...` command (shell-quoted) that prepares a catalog dataset into `out`: all of it but
    its separately prepared test sets, or (`test_set`) only that one."""
    if dataset["synth"]:
        sizes = {**dataset.get("sizes", {}), **(dataset["quick"]["sizes"] if quick else {})}
        if test_set is None:
            separate = {split for name in separate_test_sets(dataset) for split in dataset["test_sets"][name]}
            sizes = {k: v for k, v in sizes.items() if k not in separate}
        args = ["steermoe", "data", "synth", dataset["synth"], "--out", out]
        if sizes:
            args += ["--sizes", *(f"{k}={v}" for k, v in sizes.items())]
        if test_set is not None:  # the other splits' sizes stay: the builder draws the test set's sentences apart
            args += ["--only", *dataset["test_sets"][test_set]]
        return shlex.join(args)
    prep = dataset["prepare"]
    args = ["steermoe", "data", "prepare", "--corpus", prep["corpus"], "--root", *prep["root"], "--out", out]
    for key in ("audio_column", "text_column", "split", "max_audio_length", "max_text_characters"):
        if prep.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(prep[key])]
    if prep.get("filter_dataset") is False:
        args.append("--no-filter")
    return shlex.join(args)
