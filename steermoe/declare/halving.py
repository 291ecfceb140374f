"""Successive halving of a group's cells, declared in a YAML matrix, and its decisions (torch-free: the Snakefile,
`steermoe decide`, `plan`, `status` and `aggregate` read it).

    # experiments/sweep.yaml
    halving:
      sweep:                        # a group of the matrix
        rungs: [0.11, 0.33, 1.0]    # fractions of each cell's max_steps, increasing; the last is 1.0
        keep: 0.33                  # each decision keeps this fraction of its candidates (rounded up, at least one)
        by: dev_loss                # the measure, lower is better: the dev loss at the rung's step
        stopped: evaluate           # stopped cells are evaluated with their last rung's weights (skip: not at all)

A cell is one training configuration of the group; its seeds (a replicate set) are one cell, ranked by the mean of
their measures. The group's baseline and reference rows are not cells: they are never pruned. Every cell trains to
the first rung's step; the decision after rung k ranks the cells that reached it, ties broken by the order of the
cells in the matrix (the earlier one ranks first), and the kept cells resume from their rung checkpoint. Their
learning-rate schedule is that of max_steps throughout, so a kept cell ends with the weights of an uninterrupted
run. Every decision is a file (outputs.decision_file), written once from the rung files (outputs.rung_dir) that
exist: a run killed between rungs redoes nothing decided, and edited halving settings re-decide from those files.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from steermoe.declare.checks import check_mapping, closest, listed, load_yaml, shown
from steermoe.declare.experiments import Experiment
from steermoe.declare.outputs import SUMMARY, decision_file, rung_dir
from steermoe.errors import ConfigError, DataError
from steermoe.fsutil import write_json

KEYS = ("rungs", "keep", "by", "stopped")
MEASURES = {"dev_loss": "the dev loss at the rung's step (lower is better)"}
STOPPED = ("evaluate", "skip")
TIE_RULE = "equal measures rank in matrix order (the earlier cell first)"
KEPT, STOPPED_AT, RUNNING = "kept", "stopped", "running"


@dataclass
class Halving:
    """One group's successive halving: its settings and its cells (name -> the trainings of its seeds)."""
    group: str
    rungs: list[float]
    keep: float
    by: str = "dev_loss"
    stopped: str = "evaluate"
    cells: dict[str, list[Experiment]] = field(default_factory=dict)

    @property
    def settings(self) -> dict:
        return {"rungs": self.rungs, "keep": self.keep, "by": self.by, "stopped": self.stopped}

    def step(self, exp: Experiment, rung: int) -> int:
        """The training step at which `exp` reaches rung `rung` (1 = the first)."""
        total = exp.settings["max_steps"]
        return max(1, round(self.rungs[rung - 1] * total))

    def kept_count(self, candidates: int) -> int:
        return max(1, math.ceil(candidates * self.keep - 1e-9))

    def schedule(self) -> list[int]:
        """How many cells train to each rung: [9, 3, 1] for 9 cells keeping a third."""
        counts = [len(self.cells)]
        for _ in self.rungs[1:]:
            counts.append(self.kept_count(counts[-1]))
        return counts

    def decision(self, results: str, rung: int) -> str:
        return decision_file(results, self.group, rung)


# ---- the declaration -------------------------------------------------------------------------------------------
def load_halving(matrix_path: str | Path, experiments: list[Experiment], quick: bool = False) -> dict[str, Halving]:
    """The halving of each group that declares one ({} for a TSV matrix or none declared). Raises ConfigError
    naming the file, the group and the key."""
    if Path(matrix_path).suffix not in (".yaml", ".yml"):
        return {}
    file = str(matrix_path)
    declared = (load_yaml(Path(matrix_path).read_text(encoding="utf-8"), file) or {}).get("halving")
    if declared is None:
        return {}
    if not isinstance(declared, dict) or not declared:
        raise ConfigError(f"{file}: 'halving' must map group names to their halving settings ({listed(KEYS)}), "
                          f"got {shown(declared)}")
    groups = list(dict.fromkeys(e.group for e in experiments if e.group))
    return {group: _halving(file, group, spec, experiments, groups, quick) for group, spec in declared.items()}


def _halving(file: str, group, spec, experiments: list[Experiment], groups: list[str], quick: bool) -> Halving:
    where = f"{file}: halving.{group}"
    if group not in groups:
        raise ConfigError(f"{where}: no row of the matrix is in group {group!r}{closest(group, groups)}; "
                          f"groups: {listed(groups)}")
    spec = check_mapping(where, spec, KEYS, required=("rungs", "keep"))
    rungs = spec["rungs"]
    if (not isinstance(rungs, list) or len(rungs) < 2 or not all(isinstance(r, (int, float)) and
                                                                 not isinstance(r, bool) for r in rungs)
            or any(b <= a for a, b in zip(rungs, rungs[1:])) or rungs[0] <= 0 or rungs[-1] != 1):
        raise ConfigError(f"{where}.rungs: {shown(rungs)}: give two or more increasing fractions of max_steps, "
                          f"the last 1.0 (the full budget), e.g. [0.11, 0.33, 1.0]")
    keep = spec["keep"]
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise ConfigError(f"{where}.keep: {shown(keep)}: the fraction of the cells each decision keeps, between 0 "
                          f"and 1 (exclusive), e.g. 0.33")
    by, stopped = spec.get("by", "dev_loss"), spec.get("stopped", "evaluate")
    if by not in MEASURES:
        raise ConfigError(f"{where}.by: unknown measure {shown(by)}{closest(by, MEASURES)}; allowed: "
                          f"{listed(MEASURES)}")
    if stopped not in STOPPED:
        raise ConfigError(f"{where}.stopped: {shown(stopped)}{closest(stopped, STOPPED)}; allowed: evaluate "
                          f"(with the weights of the cell's last rung) or skip (not evaluated)")
    halving = Halving(group, [float(r) for r in rungs], float(keep), by, stopped)
    for exp in experiments:
        if exp.group == group and exp.trains and not exp.trained_by and not exp.baseline:
            halving.cells.setdefault(exp.replicate_of or exp.id, []).append(exp)
    if len(halving.cells) < 2:
        raise ConfigError(f"{where}: the group has {len(halving.cells)} trained cell(s) besides its baseline; "
                          f"halving ranks two or more")
    for trainings in halving.cells.values():
        for exp in trainings:
            _check_cell(where, halving, exp, quick)
    return halving


def _check_cell(where: str, halving: Halving, exp: Experiment, quick: bool) -> None:
    row = f"{where}: experiment {exp.id} (row {exp.row}, line {exp.line})"
    settings = exp.settings
    if settings.get("max_steps", -1) <= 0:
        raise ConfigError(f"{row} trains by epochs: halving's rungs are fractions of max_steps; set max_steps")
    if settings.get("eval_steps") is None:
        raise ConfigError(f"{row} has no dev evaluation (eval_steps is not set), so no dev loss to rank by; set "
                          f"eval_steps (dev data: the dataset's dev split, or rows held out of training)")
    if settings.get("use_early_stopping"):
        raise ConfigError(f"{row} uses early stopping, which could end a training before its rung; halving is "
                          f"the early stopping here: set use_early_stopping: false")
    steps = [halving.step(exp, k) for k in range(1, len(halving.rungs) + 1)]
    if not quick and any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"{row}: its rungs fall on steps {', '.join(map(str, steps))} of max_steps "
                          f"{settings['max_steps']}: each rung needs steps of its own; give fewer rungs or more "
                          f"steps")


# ---- decisions -------------------------------------------------------------------------------------------------
def rung_measure(exp: Experiment, rung: int, by: str) -> float:
    """A training's measure at rung `rung`, from its rung folder's train_summary.json."""
    path = Path(rung_dir(exp.train_dir, rung)) / SUMMARY
    try:
        value = json.loads(path.read_text(encoding="utf-8"))[by]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: cannot read the {by} of rung {rung} ({err}); run the workflow to train it") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}: {by} is {value!r}, not a finite number")
    return float(value)


def candidates(halving: Halving, results: str, rung: int) -> list[str]:
    """The cells that train to rung `rung`: all at the first, then those the previous decision kept."""
    if rung == 1:
        return list(halving.cells)
    return read_decision(halving.decision(results, rung - 1))["kept"]


def rank(halving: Halving, measures: dict[str, list[float]], rung: int) -> dict:
    """The decision after rung `rung` from each candidate cell's measures (one per seed): ranked by their mean,
    lower first, ties in matrix order; the first kept_count are kept."""
    order = {cell: i for i, cell in enumerate(halving.cells)}
    mean = {cell: sum(values) / len(values) for cell, values in measures.items()}
    ranked = sorted(measures, key=lambda cell: (mean[cell], order[cell]))
    keep = halving.kept_count(len(ranked))
    return {"group": halving.group, "rung": rung, "rungs": len(halving.rungs), "by": halving.by,
            "settings": halving.settings, "tie_rule": TIE_RULE, "kept": ranked[:keep], "stopped": ranked[keep:],
            "ranking": [{"cell": cell, "rank": i + 1, "of": len(ranked), halving.by: mean[cell],
                         "seeds": measures[cell], "kept": i < keep} for i, cell in enumerate(ranked)]}


def decide(halving: Halving, results: str, rung: int, out: str | Path | None = None) -> dict:
    """Rank the cells that reached rung `rung` and write the decision (atomically) to `out` (default: its place
    under `results`)."""
    if not 1 <= rung < len(halving.rungs):
        raise ConfigError(f"halving.{halving.group}: decisions follow rungs 1 to {len(halving.rungs) - 1}, not "
                          f"{rung}")
    measures = {cell: [rung_measure(exp, rung, halving.by) for exp in halving.cells[cell]]
                for cell in candidates(halving, results, rung)}
    decision = rank(halving, measures, rung)
    out = Path(out or halving.decision(results, rung))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, decision)
    return decision


def read_decision(path: str | Path) -> dict:
    try:
        decision = json.loads(Path(path).read_text(encoding="utf-8"))
        problem = None if isinstance(decision, dict) and {"by", "kept", "ranking"} <= set(decision) else \
            "its keys by, kept and ranking are missing"
    except (OSError, ValueError) as err:
        problem = str(err)
    if problem:
        raise DataError(f"{path}: not a halving decision ({problem}); delete it and run the workflow to decide again")
    return decision


def fate(halving: Halving, cell: str, decisions) -> dict:
    """Where a cell stands: {"status": kept|stopped|running, "rung": the last rung it reached (or trains to),
    "rank", "of", "measure" at its last decision}. `decisions(rung)` gives the decision after rung `rung`, or None
    when not made yet."""
    state = {"status": RUNNING, "rung": 1, "rank": None, "of": None, "measure": None}
    for rung in range(1, len(halving.rungs)):
        decision = decisions(rung)
        if decision is None:
            return state
        entry = next((e for e in decision["ranking"] if e["cell"] == cell), None)
        if entry is None:  # not a candidate: an earlier decision stopped it (read from other settings' files)
            return state
        state.update(rank=entry["rank"], of=entry["of"], measure=entry[decision["by"]])
        if not entry["kept"]:
            return {**state, "status": STOPPED_AT}
        state["rung"] = rung + 1
    return {**state, "status": KEPT}


def decisions_on_disk(halving: Halving, results: str):
    """fate()'s `decisions` from the decision files that exist."""
    def read(rung: int) -> dict | None:
        path = Path(halving.decision(results, rung))
        return read_decision(path) if path.is_file() else None
    return read


def cell_of(halvings: dict[str, Halving], experiments: list[Experiment]) -> dict[str, tuple[Halving, str]]:
    """Each experiment of a halving cell (its seeds, and its evaluations on other test sets) -> (halving, cell)."""
    owner = {exp.id: (h, cell) for h in halvings.values() for cell, exps in h.cells.items() for exp in exps}
    return {exp.id: owner[exp.trained_by or exp.id] for exp in experiments if (exp.trained_by or exp.id) in owner}


def halving_states(halvings: dict[str, Halving], experiments: list[Experiment], results: str) -> dict[str, dict]:
    """Each halving cell's experiment -> its fate from the decision files that exist, with "trained": its last
    rung's folder where a decision stopped it (else None: its final folder) and "text", a sentence for the table."""
    states, cells = {}, cell_of(halvings, experiments)
    decisions = {group: functools.cache(decisions_on_disk(h, results)) for group, h in halvings.items()}  # read once
    for exp in experiments:
        if exp.id not in cells:
            continue
        halving, cell = cells[exp.id]
        state = fate(halving, cell, decisions[halving.group])
        rung = f"rung {state['rung']} of {len(halving.rungs)}"
        measure = "" if state["measure"] is None else \
            f", {halving.by} {state['measure']:.4f}, rank {state['rank']}/{state['of']}"
        stopped = state["status"] == STOPPED_AT
        text = {KEPT: f"kept to the end by successive halving{measure}",
                RUNNING: f"successive halving: training to {rung}{measure}",
                STOPPED_AT: f"stopped by successive halving at {rung} (step {halving.step(exp, state['rung'])})"
                            f"{measure}" + ("; not evaluated (stopped: skip)" if halving.stopped == "skip" else
                                            "; evaluated with that rung's weights")}[state["status"]]
        states[exp.id] = {**state, "trained": rung_dir(exp.train_dir, state["rung"]) if stopped else None,
                          "step": halving.step(exp, state["rung"]),
                          "text": text, "evaluated": not stopped or halving.stopped == "evaluate"}
    return states


def halving_hours(halving: Halving, hours: dict[str, float]) -> dict:
    """GPU-hours of the halving schedule from each training's full-budget hours: the full grid; the worst case
    (every decision keeps the costliest cells); the expected one (cells kept regardless of cost: each rung's share
    of the mean cell)."""
    cost = {cell: sum(hours[e.id] for e in exps) for cell, exps in halving.cells.items()}
    counts, fractions = halving.schedule(), [0.0, *halving.rungs]
    spans = [b - a for a, b in zip(fractions, fractions[1:])]
    costliest = sorted(cost.values(), reverse=True)
    mean = sum(cost.values()) / len(cost)
    return {"full_grid": sum(cost.values()),
            "worst": sum(span * sum(costliest[:n]) for span, n in zip(spans, counts)),
            "expected": sum(span * n * mean for span, n in zip(spans, counts)), "cells_per_rung": counts}
