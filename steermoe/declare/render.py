"""Render an experiment's YAML configs from the Jinja2 templates (templates/train.yaml.j2, templates/test.yaml.j2).

Torch-free: the Snakefile renders every config at parse time to hash it (so an edited template or catalog entry
re-runs exactly the experiments whose config changed), and `steermoe render` writes the same bytes in the render
rule. Templates run in Jinja2's sandbox with StrictUndefined, loaded only from the templates folder; rendering is
deterministic (no clocks, no environment, ordered inputs).

Template context:
    exp        the experiment: id, name, method, encoder, decoder, dataset, variant, metric, train_dir, final_dir,
               eval_dir, parquet {train, dev, test: [files]}, train_config, test_config
    encoder    the catalog entry: name, type (whisper | conformer), path, feature_dim, num_layers
    decoder    the catalog entry: name, path
    dataset    the catalog entry: name, metric, prompt, language, task
    s          every setting (steermoe.declare.settings.SETTINGS), merged; its default where unset
    settings   settings.SECTION (training, steering, ..., top for the top level): the YAML lines of every setting of
               the section, in the table's order; a train config leaves out the evaluation-only ones, so that they
               never retrain
    mode       'train' or 'test'
Filter: `yaml` writes a value as a YAML scalar or flow list (strings quoted, None as null).
"""
from __future__ import annotations

import hashlib
import json
import math
import traceback
from functools import lru_cache
from pathlib import Path

from steermoe.declare.checks import shown
from steermoe.declare.experiments import Experiment
from steermoe.declare.settings import SAMPLE_RATE, SETTINGS, TRAINED_METHODS
from steermoe.errors import ConfigError
from steermoe.fsutil import write_atomic

TEMPLATES = {"train": "train.yaml.j2", "test": "test.yaml.j2"}
BY_SECTION: dict[str, list] = {}  # YAML section ('' = top level) -> its settings, in the table's order
for _name, _key in SETTINGS.items():
    BY_SECTION.setdefault(_key.section, []).append((_name, _key))


def yaml_value(value) -> str:
    """A YAML scalar (or flow list) that steermoe.declare.runconfig reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value!r} into a config")
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write a {type(value).__name__} into a config: {shown(value)}")


def environment(templates: str | Path):
    """The sandboxed, strict Jinja2 environment; templates load only from `templates`."""
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=FileSystemLoader(str(templates)), undefined=StrictUndefined,
                               keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["yaml"] = yaml_value
    return env


def context(exp: Experiment, mode: str) -> dict:
    # unset settings render as their runconfig default, so a rendered config shows every value it runs with
    settings = {name: key.default if exp.settings.get(name) is None else exp.settings[name]
                for name, key in SETTINGS.items()}

    blocks = {section or "top": "\n".join(f"{'  ' if section else ''}{key.name}: {yaml_value(settings[name])}"
                                         for name, key in keys if not (mode == "train" and key.evaluation_only))
              for section, keys in BY_SECTION.items()}
    enc, dec, ds = exp.encoder_entry, exp.decoder_entry, exp.dataset_entry
    return {
        "mode": mode,
        # only what defines the run: the matrix row number, group, baseline and tags are left out on purpose,
        # so that reordering or regrouping rows re-runs nothing
        "exp": {"id": exp.id, "name": exp.name, "method": exp.method, "encoder": exp.encoder,
                "uses_lora": exp.method in TRAINED_METHODS and TRAINED_METHODS[exp.method].uses_lora,
                "decoder": exp.decoder, "dataset": exp.dataset, "variant": exp.variant, "metric": exp.metric,
                "train_dir": exp.train_dir, "final_dir": exp.final_dir, "eval_dir": exp.eval_dir,
                "parquet": exp.parquet, "train_config": exp.train_config, "test_config": exp.test_config},
        "encoder": {"name": exp.encoder, "type": enc["type"], "path": enc["path"],
                    "feature_dim": enc["feature_dim"], "num_layers": enc["num_layers"]},
        "decoder": {"name": exp.decoder, "path": dec["path"]},
        "dataset": {"name": exp.dataset, "metric": ds["metric"], "prompt": ds["prompt"],
                    "language": ds["language"], "task": ds["task"]},
        "s": settings,
        "settings": blocks,
        "sample_rate": SAMPLE_RATE,
    }


def _template_error(err: Exception, templates: Path, name: str) -> ConfigError:
    """A one-line error naming the template file, its line and what went wrong."""
    from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError

    line, file = getattr(err, "lineno", None), getattr(err, "filename", None) or str(templates / name)
    if not isinstance(err, TemplateSyntaxError):
        for frame in reversed(traceback.extract_tb(err.__traceback__)):
            if frame.filename.startswith(str(templates)) or frame.filename.endswith(".j2"):
                file, line = frame.filename, frame.lineno
                break
    where = f"{file}" + (f", line {line}" if line else "")
    if isinstance(err, UndefinedError):
        return ConfigError(f"{where}: undefined variable: {err.message} (variables: exp, encoder, decoder, dataset, "
                           f"s (settings), mode); settings.SECTION writes a section's settings")
    if isinstance(err, SecurityError):
        return ConfigError(f"{where}: blocked by the template sandbox: {err}")
    if isinstance(err, TemplateSyntaxError):
        return ConfigError(f"{where}: template syntax error: {err.message}")
    if isinstance(err, TemplateNotFound):
        return ConfigError(f"{where}: TemplateNotFound: {err.name!r}: templates include only files of the templates "
                           f"folder {templates} (no absolute paths, no '..')")
    return ConfigError(f"{where}: {type(err).__name__}: {err}")


def render(exp: Experiment, templates: str | Path, mode: str, env=None, validated: set | None = None) -> str:
    """The text of the experiment's `mode` config ('train' or 'test'), validated by steermoe.declare.runconfig. A text
    whose key is in `validated` (see validation_key) passed the same validator before and is not parsed again; a text
    that passes now is added to it."""
    from jinja2 import TemplateError

    from steermoe.declare.runconfig import parse_run_config

    templates = Path(templates)
    env = env or environment(templates)
    name = TEMPLATES[mode]
    try:
        text = env.get_template(name).render(context(exp, mode))
    except TemplateError as err:
        raise _template_error(err, templates, name) from None
    except ConfigError as err:
        raise ConfigError(f"{templates / name}: {err}") from None
    path = exp.train_config if mode == "train" else exp.test_config
    key = validation_key(text, path)
    if validated is not None and key in validated:
        return text
    try:
        parse_run_config(text.encode("utf-8"), path)
    except ConfigError as err:
        raise ConfigError(f"experiment {exp.id} (matrix row {exp.row}, line {exp.line}): the config rendered from "
                          f"{templates / name} is invalid: {err}") from None
    if validated is not None:
        validated.add(key)
    return text


@lru_cache(maxsize=1)
def _validator_version() -> str:
    """The source of the declaring package, which holds every module the config validator runs: a change to any of
    them validates everything again."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()


def validation_key(text: str, path: str) -> str:
    """What a validation depends on: the config's text, its file name (which gives method and mode), the validator."""
    return hashlib.sha256(f"{_validator_version()}\0{path}\0{text}".encode("utf-8")).hexdigest()


def render_all(experiments: list[Experiment], templates: str | Path,
               memo: Path | None = None) -> dict[str, dict[str, str]]:
    """{experiment id: {'train': text, 'test': text}} for every experiment (one environment, one pass; only 'test'
    for one that trains no model of its own: Experiment.configs). `memo`: a file
    of the validation keys of configs validated before (the workflow keeps it under .snakemake/): a repeated run
    parses only the configs that changed."""
    env = environment(templates)
    before = set(memo.read_text().split()) if memo is not None and memo.is_file() else set()
    validated = set(before)
    texts = {exp.id: {mode: render(exp, templates, mode, env, validated) for mode in exp.configs}
             for exp in experiments}
    if memo is not None:
        current = {validation_key(text, exp.train_config if mode == "train" else exp.test_config)
                   for exp in experiments for mode, text in texts[exp.id].items()}  # today's configs only
        if current != before:
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(memo, "".join(f"{key}\n" for key in sorted(current)))
    return texts


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def store_configs(by_sha256: dict[str, str], folder: Path) -> None:
    """Each rendered config ({sha256: text}) as `folder`/{sha256}.yaml, written once (a stored file never changes, so
    runs and dry runs of other matrices may share the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = {path.stem for path in folder.iterdir()}
    for digest, text in by_sha256.items():
        if digest not in stored:
            write_atomic(folder / f"{digest}.yaml", text)
