"""The matrix declared with axes (a YAML file) instead of one TSV row per experiment.

    # experiments/ablation-experts.yaml
    fixed: {encoder: whisper-tiny.en, decoder: smollm2, dataset: synth-en, group: experts}  # every block's
    include: [experiments/matrix.tsv]      # explicit TSV rows, read as they are (optional)
    blocks:
      - {method: layer_wise, num_experts: [2, 4, 8, 16]}      # a list is an axis: one row per value
      - {method: linear, baseline: true}
    exclude:
      - {method: layer_wise, num_experts: 16, encoder_window: 30s}

A block's rows are the cartesian product of its lists (the first axis outermost; `seeds: 3` or `seeds: [0, 1, 2]`
is not an axis but the replicates of each row), with the shared `fixed` values
under the block's own. A row matching every key of an `exclude` entry is dropped; an entry matching no row is an
error (a typo would otherwise exclude nothing). Keys are the TSV's columns, and each value becomes the cell text the
TSV would hold, so a declaration expands to exactly the experiments (ids, configs, hashes) of the equivalent rows.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from steermoe.declare.checks import YamlLoader, check_mapping, load_yaml, shown
from steermoe.errors import ConfigError

KEYS = ("fixed", "include", "blocks", "exclude", "halving")  # halving: steermoe/declare/halving.py
# rows one axes file may declare: a few short lists multiply to millions; the largest sweeps run thousands
MAX_ROWS = 20_000


@dataclass
class Row:
    """One matrix row: its cells as TSV text, and where it was declared."""
    file: str
    line: int
    cells: dict


def cell_text(value) -> str:
    """A YAML value as the TSV cell that means the same."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _lines(text: str) -> dict:
    """{(section, index): line} of each block and exclude entry, and {('', key): line} of the top-level keys."""
    node = yaml.compose(text, Loader=YamlLoader)
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[("", key.value)] = key.start_mark.line + 1
            if isinstance(value, yaml.SequenceNode):
                for i, item in enumerate(value.value):
                    lines[(key.value, i)] = item.start_mark.line + 1
    return lines


def _mapping(where: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: must be a mapping of matrix columns to values, got {shown(value)}")
    for key, cell in value.items():
        values = cell if isinstance(cell, list) else [cell]
        if not values or any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(f"{where}, key '{key}': must be a value or a non-empty list of values (an axis), "
                              f"got {shown(cell)}")
    return value


def read_axes(path: str | Path, read_tsv, check_column) -> list[Row]:
    """The rows a YAML matrix declares, in order: the included TSV files' (read by `read_tsv`), then each block's.
    `check_column(message, column)` rejects a key that is not a matrix column."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{file}: cannot read the matrix ({err.strerror})") from err
    data = check_mapping(file, load_yaml(text, file), KEYS)
    lines = _lines(text)
    fixed = _mapping(f"{file}: line {lines.get(('', 'fixed'))}, 'fixed'", data.get("fixed") or {})
    rows: list[Row] = []
    include = data.get("include") or []
    if not isinstance(include, list) or not all(isinstance(p, str) and p for p in include):
        raise ConfigError(f"{file}: line {lines.get(('', 'include'))}, 'include': must be a list of TSV matrix files")
    for tsv in include:
        rows += read_tsv(tsv)
    blocks = data.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{file}: 'blocks' must be a non-empty list of blocks (mappings of columns to values)")
    for i, block in enumerate(blocks):
        line = lines[("blocks", i)]
        block = {**fixed, **_mapping(f"{file}: line {line}, block {i + 1}", block)}
        for column in block:
            check_column(f"{file}: line {line}: unknown column '{column}'", column)
        # a list is an axis, except under `seeds`, whose list is the one row's seeds
        axes = [[cell_text(v) for v in value] if isinstance(value, list) and key != "seeds" else
                [",".join(map(cell_text, value)) if isinstance(value, list) else cell_text(value)]
                for key, value in block.items()]
        count = math.prod(len(axis) for axis in axes)
        if len(rows) + count > MAX_ROWS:
            sizes = " x ".join(f"{len(axis)} {key}" for key, axis in zip(block, axes) if len(axis) > 1)
            raise ConfigError(f"{file}: line {line}, block {i + 1}: its axes ({sizes}) expand to {count:,} rows, "
                              f"{len(rows) + count:,} with the rows before it; a matrix declares at most "
                              f"{MAX_ROWS:,}: narrow the axes or split the sweep into several matrices")
        rows += [Row(file, line, dict(zip(block, combination))) for combination in itertools.product(*axes)]
    for i, entry in enumerate(data.get("exclude") or []):
        where = f"{file}: line {lines[('exclude', i)]}, exclude entry {i + 1}"
        if any(isinstance(v, list) for v in _mapping(where, entry).values()):
            raise ConfigError(f"{where}: an exclusion matches single values, not lists")
        for column in entry:
            check_column(f"{where}: unknown column '{column}'", column)
        entry = {key: cell_text(value) for key, value in entry.items()}
        kept = [row for row in rows if any(row.cells.get(k, "") != v for k, v in entry.items())]
        if len(kept) == len(rows):
            raise ConfigError(f"{where}: matches no row ({entry}); check its keys and values")
        rows = kept
    return rows
