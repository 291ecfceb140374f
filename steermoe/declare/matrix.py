"""The experiment matrix: `experiments/matrix.tsv` rows x `experiments/catalog.yaml` names -> experiments.

Torch-free (the Snakefile imports it at parse time, and `steermoe aggregate` / `steermoe plan` use it too).

    from steermoe.declare.matrix import load_matrix
    for exp in load_matrix("experiments/matrix.tsv", "experiments/catalog.yaml"):
        print(exp.id, exp.method, exp.encoder, exp.decoder, exp.dataset, exp.overrides, exp.group, exp.baseline,
              exp.metric, exp.train_config, exp.test_config, exp.row)

The matrix is a tab-separated file. Columns:
    method, encoder, decoder, dataset   required; a method of steermoe.declare.settings.METHODS and names of the catalog
                                        (a `reference` row's decoder is `own`: the encoder model's own decoder)
    recipe                              optional name of a catalog recipe (a block of settings: original-code, paper)
    variant                             optional explicit suffix of the experiment id (default: the recipe, then
                                        the overrides)
    group, baseline                     optional ablation group; `baseline: true` on the one row of the group that
                                        the others are compared with (all rows of a group share the dataset)
    tags                                optional free text (comma-separated), carried into the table
    any setting name                    optional per-row override of a setting (declare/settings.py; empty cell: none)
Blank lines and lines starting with '#' are ignored (they still count in line numbers).

Every error names the file, the row (1 = the first experiment row) and its line in the file, the column, the bad
value and what is allowed, and is raised before any job runs.

Settings of one experiment, lowest to highest precedence: the settings' own defaults (steermoe.declare.settings),
catalog `defaults.settings`, the encoder's, the decoder's and the dataset's `settings`, the row's recipe (catalog
`recipes.NAME.settings`, then its `encoders.TYPE` block for the row's encoder type), the matrix row's override columns,
and last, with `quick=True` (the CI-size variant), `defaults.quick.settings` and the dataset's `quick.settings`.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from steermoe.declare.axes import Row, cell_text, read_axes
from steermoe.declare.catalog import RESOURCE_DEFAULTS, data_folder, load_catalog, model_path, separate_test_sets
from steermoe.declare.checks import check_safe_path, check_value, closest, expected, is_safe_name, listed, parse_bool
from steermoe.declare.experiments import Experiment, check_groups, name_replicates, share_training
from steermoe.declare.outputs import experiment_files
from steermoe.declare.settings import METHODS, OWN_DECODER, PATH_SETTINGS, REFERENCE, SETTINGS, abbreviation
from steermoe.errors import ConfigError

SPECIAL_COLUMNS = ("method", "encoder", "decoder", "dataset", "recipe", "variant", "group", "baseline", "tags",
                   "seeds")
REQUIRED_COLUMNS = ("method", "encoder", "decoder", "dataset")
RESERVED_PARTS = ("train", "test", "eval")  # the name convention reads the mode from the last `_` parts
# a reference row's decoder (the encoder model's own): nothing to load, no resources of its own
OWN_DECODER_ENTRY = {"name": OWN_DECODER, "description": "the encoder model's own decoder", "path": None,
                     "embedded": None, "resources": {}, "settings": {}}
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_ID_LENGTH = 200


class _Where:
    def __init__(self, file: str, row: int, line: int):
        self.file, self.row, self.line = file, row, line

    def __call__(self, column: str | None = None) -> str:
        where = f"{self.file}: row {self.row} (line {self.line})"
        return f"{where}, column '{column}'" if column else where


def _parse_cell(where: str, name: str, text: str):
    """A matrix cell -> the setting's type, validated like the config key it sets."""
    key = SETTINGS[name]
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
        allowed = f"; allowed: {listed(key.choices)}" if key.choices else ""
        raise ConfigError(f"{where}: {text!r} is not {expected(key)}{allowed}") from None
    if name in PATH_SETTINGS:
        check_safe_path(where, value)
    return check_value(where, key, value)


def _parse_seeds(where: str, text: str) -> list[int]:
    """A `seeds` cell: a count N (seeds 0 .. N-1) or a comma-separated list of seeds; empty: none."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(int(text))) if text else []
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is neither a count nor a comma-separated list of seeds") from None
    if (text and not seeds) or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: {text!r}: give a positive count or distinct non-negative seeds")
    return seeds


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
    parts = [f"{abbreviation(name)}{_format_value(overrides[name])}"
             for name in SETTINGS if name in overrides]
    return "-".join(parts) or None


def read_tsv(path: str | Path) -> tuple[list[str], list[Row]]:
    """The header and the rows of a TSV matrix; cells are stripped strings."""
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
        rows.append(Row(file, number, dict(zip(header, cells))))
    if header is None:
        raise ConfigError(f"{file}: empty matrix: the first line is the header (method, encoder, decoder, dataset, "
                          f"...), tab-separated")
    seen = set()
    for column in header:
        if column in seen:
            raise ConfigError(f"{file}: column '{column}' appears twice in the header (line {header_line})")
        seen.add(column)
        hint = " (the matrix must be tab-separated)" if " " in column or "," in column else ""
        _check_column(f"{file}: unknown column '{column}' in the header (line {header_line}){hint}", column)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"{file}: the header (line {header_line}) lacks the column '{missing[0]}'; required: "
                          f"{listed(REQUIRED_COLUMNS)} (tab-separated)")
    return header, rows


def _check_column(message: str, column: str) -> None:
    allowed = list(SPECIAL_COLUMNS) + list(SETTINGS)
    if column not in allowed:
        raise ConfigError(f"{message}{closest(column, allowed)}; allowed columns: {listed(allowed)}")


def read_matrix(path: str | Path) -> tuple[list[str], list[Row]]:
    """The columns and rows of a matrix: a TSV file (one row per line) or a YAML file with axes (declare/axes.py)."""
    if Path(path).suffix not in (".yaml", ".yml"):
        return read_tsv(path)
    rows = read_axes(path, lambda tsv: read_tsv(tsv)[1], _check_column)
    columns = list(dict.fromkeys(column for row in rows for column in row.cells))
    for row in rows:
        missing = [c for c in REQUIRED_COLUMNS if not row.cells.get(c)]
        if missing:
            raise ConfigError(f"{row.file}: line {row.line}: the row has no '{missing[0]}'; every row needs "
                              f"{listed(REQUIRED_COLUMNS)} (in the block or in 'fixed')")
        row.cells = {column: row.cells.get(column, "") for column in columns}
    return columns, rows


def _merge_settings(*layers: dict) -> dict:
    merged = {}
    for layer in layers:
        merged.update(layer)
    return merged



def load_matrix(matrix_path: str | Path, catalog_path: str | Path, quick: bool = False, *,
                results: str = "results", data: str = "data", models: str = "models") -> list[Experiment]:
    """Expand and validate the matrix. Raises ConfigError (file, row, line, column, value, allowed values).

    `quick` selects the CI-size variant (catalog `quick:` blocks). `results`, `data` and `models` are the folders
    of the workflow config; the returned paths are relative to the workflow root.
    """
    catalog = load_catalog(catalog_path)
    file = str(matrix_path)
    header, rows = read_matrix(matrix_path)
    results, data, models = (str(PurePosixPath(d)) for d in (results, data, models))
    experiments: list[Experiment] = []
    by_id: dict[str, Experiment] = {}
    names = {"method": METHODS, "encoder": catalog.encoders, "decoder": catalog.decoders,
             "dataset": catalog.datasets}
    for row, declared in enumerate(rows, 1):
        cells, line = declared.cells, declared.line
        where = _Where(declared.file, row, line)
        reference = cells["method"] == REFERENCE
        if reference != (cells["decoder"] == OWN_DECODER):
            raise ConfigError(f"{where('decoder')}: {cells['decoder']!r} with method {cells['method']!r}: a "
                              f"'{REFERENCE}' row decodes with the encoder's own model, so its decoder is "
                              f"'{OWN_DECODER}', and only a '{REFERENCE}' row has decoder '{OWN_DECODER}'")
        for column, allowed in names.items():
            value = cells[column]
            if reference and column == "decoder":
                continue
            if not value:
                raise ConfigError(f"{where(column)}: empty; allowed: {listed(allowed)}")
            if value not in allowed:
                kind = "method" if column == "method" else f"{column} (not in {catalog.path})"
                raise ConfigError(f"{where(column)}: unknown {kind} {value!r}{closest(value, allowed)}; "
                                  f"allowed: {listed(allowed)}")
        overrides = {}
        for column in header:
            if column in SETTINGS and cells[column] != "":
                overrides[column] = _parse_cell(where(column), column, cells[column])
        seeds = _parse_seeds(where("seeds"), cells.get("seeds") or "")
        if seeds and "seed" in overrides:
            raise ConfigError(f"{where('seeds')}: the row gives both 'seed' and 'seeds'; keep one")
        recipe = cells.get("recipe") or None
        if recipe is not None and recipe not in catalog.recipes:
            raise ConfigError(f"{where('recipe')}: unknown recipe {recipe!r} (not in {catalog.path})"
                              f"{closest(recipe, catalog.recipes)}; allowed: {listed(catalog.recipes)}")
        explicit = cells.get("variant") or None
        if explicit is not None and (not is_safe_name(explicit) or explicit in RESERVED_PARTS):
            raise ConfigError(f"{where('variant')}: {explicit!r} is not allowed: a variant uses letters, digits, "
                              f"'.' and '-' (no '_', '/' or '..') and is not one of {listed(RESERVED_PARTS)}")
        group = cells.get("group") or None
        if group is not None and not is_safe_name(group):
            raise ConfigError(f"{where('group')}: {group!r} is not allowed: a group name uses letters, digits, '.' "
                              f"and '-'")
        baseline = parse_bool(cells.get("baseline") or "false", where("baseline"))
        if baseline and group is None:
            raise ConfigError(f"{where('baseline')}: a baseline row needs a 'group' (the rows it is compared with)")
        tags = [t.strip() for t in (cells.get("tags") or "").split(",") if t.strip()]
        method, enc, dec, ds = cells["method"], cells["encoder"], cells["decoder"], cells["dataset"]
        encoder, dataset = catalog.encoders[enc], catalog.datasets[ds]
        decoder = OWN_DECODER_ENTRY if reference else catalog.decoders[dec]
        if reference and encoder["type"] != "whisper":
            raise ConfigError(f"{where('encoder')}: a '{REFERENCE}' row decodes with the encoder's own model; that "
                              f"is wired for Whisper encoders only, and {enc!r} is a {encoder['type']}")
        chosen = catalog.recipes[recipe] if recipe else {"settings": {}, "encoders": {}}
        resources = {**RESOURCE_DEFAULTS, **catalog.defaults["resources"], **decoder["resources"]}
        mem_mb_from = f"{catalog.path}: " + (f"decoders.{dec}.resources.mem_mb" if "mem_mb" in decoder["resources"]
                                             else "defaults.resources.mem_mb")  # mem_mb, if either states it

        test_sets = list(dataset["test_sets"])
        if "test_set" in overrides and overrides["test_set"] not in test_sets:
            raise ConfigError(f"{where('test_set')}: {overrides['test_set']!r} is not a test set of dataset {ds!r}"
                              f"{closest(overrides['test_set'], test_sets)}; its test sets (catalog "
                              f"datasets.{ds}.test_sets): {listed(test_sets)}")
        # one experiment per seed x test set (a test_set cell picks one); the first test set's ids carry no suffix
        chosen_sets = [overrides["test_set"]] if "test_set" in overrides else test_sets
        if overrides.get("test_set") == test_sets[0]:
            del overrides["test_set"]  # the default test set: the same experiment as a row without the cell
        trained = {k: v for k, v in overrides.items() if k != "test_set"}
        for seed, test_set in [(seed, test_set) for seed in seeds or [None] for test_set in chosen_sets]:
            seeded = trained if seed is None else {**trained, "seed": seed}
            on = {"test_set": test_set} if test_set != test_sets[0] else {}  # the first test set adds nothing
            replicate = {**seeded, **on}
            # the id's variant: explicit (and the seed), else the recipe and the overrides; the test set last
            if explicit is None:
                variant = "-".join(p for p in (recipe, auto_variant(seeded), auto_variant(on)) if p) or None
            else:
                variant = "-".join(p for p in (explicit, seed is not None and f"seed{seed}", auto_variant(on)) if p)
            name = f"{method}_{enc}_{dec}_{ds}"
            exp_id = name + (f"_{variant}" if variant else "")
            if not ID_RE.match(exp_id) or ".." in exp_id or len(exp_id) > MAX_ID_LENGTH:
                raise ConfigError(f"{where()}: experiment id {exp_id!r} is not a safe id (letters, digits, '.', '-', "
                                  f"'_'; no '..'; at most {MAX_ID_LENGTH} characters); set a short 'variant'")
            if exp_id in by_id:
                first = by_id[exp_id]
                raise ConfigError(f"{where()}: duplicate of row {first.row} (line {first.line}): both are experiment "
                                  f"'{exp_id}'; remove one, or tell them apart with an override or a 'variant'")
            test_folder = data_folder(data, ds, test_set if test_set in separate_test_sets(dataset) else None)
            settings = _merge_settings(
                catalog.defaults["settings"], encoder["settings"], decoder["settings"], dataset["settings"],
                {"textual_prompt": dataset["prompt"]} if "textual_prompt" not in dataset["settings"] else {},
                chosen["settings"], chosen["encoders"].get(encoder["type"], {}), replicate,
                catalog.defaults["quick"]["settings"] if quick else {}, dataset["quick"]["settings"] if quick else {},
                {"test_set": test_set})
            exp = Experiment(
                id=exp_id, method=method, encoder=enc, decoder=dec, dataset=ds, overrides=replicate, group=group,
                baseline=baseline, metric=dataset["metric"], row=row, line=line, variant=variant, recipe=recipe,
                tags=tags, language=dataset["language"], task=dataset["task"], settings=settings,
                resources=dict(resources), **experiment_files(results, name, variant),
                data_dir=data_folder(data, ds),
                test_set=test_set, test_data=f"{test_folder}/manifest.json",
                parquet={**{split: [f"{data}/{ds}/{s}.parquet" for s in names_]
                            for split, names_ in dataset["splits"].items()},
                         "test": [f"{test_folder}/{s}.parquet" for s in dataset["test_sets"][test_set]]},
                embedded_models=sorted({e["embedded"] for e in (encoder, decoder) if e["embedded"]}),
                encoder_entry={**encoder, "path": model_path(encoder, "encoders", enc, models, catalog.path)},
                decoder_entry=decoder if reference else
                {**decoder, "path": model_path(decoder, "decoders", dec, models, catalog.path)},
                dataset_entry=dataset)
            exp.mem_mb_from = mem_mb_from if "mem_mb" in resources else None
            # a replicate set is named by the id without its seed (name_replicates keeps it for sets of 2 or more)
            unseeded = "-".join(p for p in (explicit or recipe, explicit is None and auto_variant(trained),
                                            auto_variant(on)) if p)
            exp.replicate_of = name + (f"_{unseeded}" if unseeded else "")
            by_id[exp_id] = exp
            experiments.append(exp)
    if not experiments:
        raise ConfigError(f"{file}: no experiment rows (only a header)")
    share_training(experiments)
    name_replicates(experiments)
    check_groups(file, experiments)
    return experiments




def explicit_rows(experiments: list[Experiment]) -> str:
    """The experiments as an explicit TSV matrix (one row each) that expands to the same ids and configs. A row of
    a dataset with several test sets names its test set (else it would expand to all of them)."""
    several = any(len(exp.dataset_entry["test_sets"]) > 1 for exp in experiments)
    settings = [name for name in SETTINGS
                if any(name in exp.overrides for exp in experiments) or (name == "test_set" and several)]
    lines = ["\t".join([*SPECIAL_COLUMNS, *settings])]
    for exp in experiments:
        variant = exp.variant  # without its test-set part: the test_set column gives that
        if "test_set" in exp.overrides:
            on = auto_variant({"test_set": exp.test_set})
            variant = None if variant == on else variant.removesuffix(f"-{on}")
        cells = {**exp.overrides, "test_set": exp.test_set}
        special = [exp.method, exp.encoder, exp.decoder, exp.dataset, exp.recipe, variant, exp.group,
                   exp.baseline, ",".join(exp.tags), None]  # seeds: each replicate is its own row
        lines.append("\t".join(cell_text(v) for v in [*special, *(cells.get(s) for s in settings)]))
    return "\n".join(lines) + "\n"
