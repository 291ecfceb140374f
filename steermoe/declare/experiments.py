"""Experiments: one matrix row expanded, the files each one reads and writes (named by steermoe.declare.outputs), and
how experiments relate (shared trainings, comparison groups).

Torch-free (the Snakefile, `steermoe aggregate`, `plan` and `status` use it).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from steermoe.declare.checks import check_safe_path, closest, listed, parse_bool
from steermoe.declare.settings import EVALUATION_ONLY, REFERENCE, SETTINGS, WORKFLOW_CONFIG
from steermoe.errors import ConfigError

def master_port(name: str) -> int:
    """A stable distributed master port for a job (20000-39999): concurrent jobs on one node do not collide."""
    return 20000 + zlib.crc32(name.encode()) % 20000


# ---- the workflow config (experiments/config.yaml): where the matrix, catalog and experiments' files live -------
def check_workflow_config(config: dict, where: str) -> dict:
    """The workflow config with its defaults filled in: known keys only, folders as safe paths, quick a boolean
    (`--config quick=true` arrives as a string)."""
    unknown = sorted(set(config) - set(WORKFLOW_CONFIG))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'{closest(unknown[0], WORKFLOW_CONFIG)}; "
                          f"valid keys: {listed(WORKFLOW_CONFIG)}")
    checked = {**WORKFLOW_CONFIG, **config}
    for key, value in checked.items():
        if key == "quick":
            checked[key] = parse_bool(value, "config 'quick'")
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"config '{key}': must be a path, got {value!r}")
        else:
            check_safe_path(f"config '{key}'", value, relative=False)  # they reach shell commands
    return checked


# ---- one experiment --------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """One matrix row, expanded. Paths are relative to the workflow root (where snakemake runs)."""
    id: str  # {method}_{encoder}_{decoder}_{dataset}[_{variant}]
    method: str
    encoder: str  # catalog names
    decoder: str
    dataset: str
    overrides: dict = field(default_factory=dict)  # the row's override columns (typed), e.g. {"num_experts": 4}
    group: str | None = None  # ablation group; None when the row has none
    baseline: bool = False  # the group's baseline row
    metric: str = "wer"  # wer | cer | qa_accuracy
    train_config: str = ""  # results/{id}/{method}_{encoder}_{decoder}_{dataset}_train[_{variant}].yaml
    test_config: str = ""  # ... _test[_{variant}].yaml
    row: int = 0  # 1 = the first experiment row of the matrix (the header and comment lines do not count)
    line: int = 0  # the row's line in the file (the header is line 1 when nothing precedes it)
    variant: str | None = None
    recipe: str | None = None  # a named block of settings from the catalog's `recipes:`
    trained_by: str | None = None  # the experiment whose model this one evaluates (same training, other evaluation)
    replicate_of: str | None = None  # the replicate set (same settings, another seed) it belongs to, by name
    test_set: str = "test"  # the dataset's test set it is scored on (catalog `test_sets`; the first by default)
    tags: list = field(default_factory=list)
    language: str = ""
    task: str = ""
    settings: dict = field(default_factory=dict)  # the settings given (catalog, row, quick), merged in order of
    #                                               precedence (module docstring); unset ones take runconfig's default
    resources: dict = field(default_factory=dict)  # train job: gpus, mem_mb, runtime (minutes), threads, ...
    mem_mb_from: str | None = None  # the catalog key that states mem_mb; None: the plan's estimate (request_memory)
    train_dir: str = ""  # results/{id}/train (checkpoints; final/ is the trained artefact)
    final_dir: str = ""  # results/{id}/train/final (model.safetensors, steermoe.json, train_summary.json)
    eval_dir: str = ""  # results/{id}/eval (metrics.json, predictions.jsonl, steering.json, steering.png)
    data_dir: str = ""  # data/{dataset}
    test_data: str = ""  # the manifest of its test set's preparation: data/{dataset}[@{test set}]/manifest.json
    parquet: dict = field(default_factory=dict)  # {"train": [...], "dev": [...], "test": [...]} parquet files
    embedded_models: list = field(default_factory=list)  # embedded model names this experiment imports
    encoder_entry: dict = field(default_factory=dict)  # the catalog entries (validated)
    decoder_entry: dict = field(default_factory=dict)
    dataset_entry: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The original code's stem without mode: {method}_{encoder}_{decoder}_{dataset}."""
        return f"{self.method}_{self.encoder}_{self.decoder}_{self.dataset}"

    @property
    def metrics(self) -> str:
        return f"{self.eval_dir}/metrics.json"

    @property
    def model(self) -> str:
        return f"{self.final_dir}/model.safetensors"

    @property
    def trains(self) -> bool:
        """False for a reference row: the encoder's own model decodes, untrained."""
        return self.method != REFERENCE

    @property
    def configs(self) -> tuple[str, ...]:
        """The configs it has of its own: a train config only where it trains a model of its own (a reference
        row trains none; an evaluation variant is scored on another experiment's model)."""
        return ("train", "test") if self.trains and not self.trained_by else ("test",)

    @property
    def port(self) -> int:
        """The distributed master port of the experiment's training job (stable, spread over 20000-39999)."""
        return master_port(self.id)


# ---- experiments together ------------------------------------------------------------------------------------
def share_training(experiments: list[Experiment]) -> None:
    """Experiments that differ only in evaluation settings (protocol, beams, ...) train once: each later one is
    evaluated on the first one's model, so adding an evaluation variant never retrains."""
    first: dict[str, Experiment] = {}
    for exp in experiments:
        if not exp.trains:
            continue
        training = {k: v for k, v in exp.settings.items() if k not in EVALUATION_ONLY}
        key = repr((exp.method, exp.encoder, exp.decoder, exp.dataset, sorted(training.items())))
        owner = first.setdefault(key, exp)
        if owner is not exp:
            exp.trained_by, exp.train_config = owner.id, owner.train_config
            exp.train_dir, exp.final_dir = owner.train_dir, owner.final_dir


def name_replicates(experiments: list[Experiment]) -> None:
    """Experiments whose settings differ only in `seed` are replicates: each set of two or more gets one name (its
    first member's id without the seed), which the table's summary rows and the comparisons use."""
    sets: dict[str, list[Experiment]] = {}
    for exp in experiments:
        settings = {k: v for k, v in exp.settings.items() if k != "seed"}
        key = repr((exp.method, exp.encoder, exp.decoder, exp.dataset, exp.recipe, sorted(settings.items())))
        sets.setdefault(key, []).append(exp)
    for members in sets.values():
        name = members[0].replicate_of if len(members) > 1 else None
        for exp in members:
            exp.replicate_of = name


def check_groups(file: str, experiments: list[Experiment]) -> None:
    """A group compares on each test set with its one baseline row (the seeds of one baseline count once)."""
    groups: dict[tuple, list[Experiment]] = {}
    for exp in experiments:
        if exp.group:
            groups.setdefault((exp.group, exp.test_set), []).append(exp)
    for (name, test_set), members in groups.items():
        baselines = [e for e in members if e.baseline]
        if len({e.replicate_of or e.id for e in baselines}) != 1:
            rows = ", ".join(dict.fromkeys(f"row {e.row} (line {e.line})" for e in (baselines or members)))
            what = "no baseline row" if not baselines else f"{len(baselines)} baseline rows"
            # a baseline elsewhere in the group, but not scored on this test set
            on = f" on test set '{test_set}'" if not baselines and any(e.baseline and e.group == name
                                                                       for e in experiments) else ""
            raise ConfigError(f"{file}: group '{name}' has {what}{on} ({rows}); mark exactly one row of the group "
                              f"'baseline: true' (the row the others are compared with)"
                              + ("; the baseline row must be scored on every test set its group uses" if on else ""))
        base = baselines[0]
        for exp in members:
            if exp.dataset != base.dataset:
                raise ConfigError(f"{file}: row {exp.row} (line {exp.line}), column 'dataset': group '{name}' "
                                  f"compares on the test set of its baseline (row {base.row}: {base.dataset!r}), but "
                                  f"this row uses {exp.dataset!r}; use one group per dataset")


NOT_DIFFERENCES = ("seed", "test_set")  # replicates are paired by seed; a group compares per test set
SHOWN_CHARACTERS = 40


def differences(exp: Experiment, baseline: Experiment) -> str:
    """The settings by which `exp` differs from `baseline` (its group's), e.g. "num_experts=2,
    steering_learning_rate=0.001": the catalog entries it uses, then every merged setting (the rows' own cells
    first), with the default where one of them leaves a setting unset."""
    def shown(settings: dict, key: str) -> str:
        value = settings.get(key, SETTINGS[key].default if key in SETTINGS else None)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS - 3] + "..."

    parts = [f"{name}={getattr(exp, name)}" for name in ("method", "encoder", "decoder")
             if getattr(exp, name) != getattr(baseline, name)]
    ours, theirs = ({**e.settings, **e.overrides} for e in (exp, baseline))  # the row's own cells last, as merged
    for key in dict.fromkeys([*exp.overrides, *baseline.overrides, *theirs, *ours]):  # the matrix's columns first
        if key not in NOT_DIFFERENCES and shown(ours, key) != shown(theirs, key):
            parts.append(f"{key}={shown(ours, key)}")
    return ", ".join(parts)


def embedded_models_used(experiments: list[Experiment]) -> list[str]:
    return sorted({m for e in experiments for m in e.embedded_models})
