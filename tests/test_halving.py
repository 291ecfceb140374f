"""Successive halving: the declaration's checks, the decisions from the rung files, rung trainings that stop with a
checkpoint and a dev loss and resume to the weights of an uninterrupted run, and the workflow that drives it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from steermoe.declare.halving import decide, halving_hours, load_halving
from steermoe.declare.matrix import load_matrix
from steermoe.declare.outputs import rung_dir
from steermoe.errors import ConfigError
from steermoe.report.plan import halving_plan
from tests.test_train import write_config
from tests.test_workflow import calls, copy_workflow, planned, snakemake

REPO = Path(__file__).resolve().parent.parent
SWEEP = "experiments/sweep.yaml"
CELL = "layer_wise_whisper-tiny.en_smollm2_synth-en_"  # a sweep cell's id: CELL + its variant
LINEAR = "linear_whisper-tiny.en_smollm2_synth-en"


def sweep(tmp_path: Path, halving: dict | None = None, **fixed) -> Path:
    """experiments/sweep.yaml with its halving settings and fixed values replaced; returns its path."""
    declared = yaml.safe_load((REPO / SWEEP).read_text())
    declared["halving"]["sweep"].update(halving or {})
    declared["fixed"].update(fixed)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(declared))
    return path


def write_rung(exp, rung: int, dev_loss: float) -> None:
    folder = Path(rung_dir(exp.train_dir, rung))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_summary.json").write_text(json.dumps({"steps": 1, "dev_loss": dev_loss}))


# ---- the declaration and the decisions -----------------------------------------------------------------------
@pytest.mark.parametrize("halving, fixed, message", [
    ({"rungs": [0.5, 0.3, 1.0]}, {}, "increasing fractions"),
    ({"rungs": [0.5, 0.9]}, {}, "the last 1.0"),
    ({"keep": 1.5}, {}, "between 0 and 1"),
    ({"by": "dev_los"}, {}, "did you mean 'dev_loss'"),
    ({"stopped": "drop"}, {}, "allowed: evaluate"),
    ({"rung": [0.5, 1.0]}, {}, "rung"),
    ({}, {"max_steps": -1}, "trains by epochs"),
    ({}, {"use_early_stopping": True}, "early stopping"),
    ({"rungs": [0.0001, 0.0002, 1.0]}, {}, "fall on steps 1, 1, 1120"),
])
def test_bad_halving_settings_are_named_before_anything_runs(tmp_path, halving, fixed, message):
    path = sweep(tmp_path, halving, **fixed)
    with pytest.raises(ConfigError, match=message) as err:
        load_halving(path, load_matrix(path, REPO / "experiments/catalog.yaml"))
    assert "halving.sweep" in str(err.value)


def test_halving_of_a_group_the_matrix_lacks_is_refused_with_the_groups_it_has(tmp_path):
    declared = yaml.safe_load((REPO / SWEEP).read_text())
    declared["halving"] = {"swep": declared["halving"]["sweep"]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(declared))
    with pytest.raises(ConfigError, match="did you mean 'sweep'"):
        load_halving(tmp_path / "m.yaml", load_matrix(tmp_path / "m.yaml", REPO / "experiments/catalog.yaml"))


def test_the_decision_ranks_by_the_mean_dev_loss_over_seeds_breaks_ties_in_matrix_order_and_keeps_a_third(tmp_path):
    path = sweep(tmp_path, seeds=2)
    experiments = load_matrix(path, REPO / "experiments/catalog.yaml", results=str(tmp_path / "results"))
    halving = load_halving(path, experiments)["sweep"]
    cells = list(halving.cells)
    assert len(cells) == 9 and all(len(seeds) == 2 for seeds in halving.cells.values())
    # by hand: cell i has dev losses (a, b) per seed; means 2.0, 1.5, 1.5 (a tie), 3.0, 1.0, 2.5, 2.0, 4.0, 0.5
    losses = [(1.0, 3.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0), (0.5, 1.5), (2.5, 2.5), (2.0, 2.0), (4.0, 4.0),
              (0.25, 0.75)]
    for cell, pair in zip(cells, losses):
        for exp, loss in zip(halving.cells[cell], pair):
            write_rung(exp, 1, loss)
    decision = decide(halving, str(tmp_path / "results"), 1)
    assert [e["cell"] for e in decision["ranking"]] == [cells[i] for i in (8, 4, 1, 2, 0, 6, 5, 3, 7)]
    assert [e["dev_loss"] for e in decision["ranking"]][:4] == [0.5, 1.0, 1.5, 1.5]
    assert decision["kept"] == [cells[8], cells[4], cells[1]]  # ceil(9 x 0.33) = 3; cell 1 before its tie, cell 2
    assert json.loads(Path(halving.decision(str(tmp_path / "results"), 1)).read_text()) == decision
    # rung 2 ranks only the kept cells; a cell it never trained has no rung file and is not asked for
    for cell, loss in zip(decision["kept"], (0.9, 0.3, 0.6)):
        for exp in halving.cells[cell]:
            write_rung(exp, 2, loss)
    second = decide(halving, str(tmp_path / "results"), 2)
    assert second["kept"] == [cells[4]] and second["stopped"] == [cells[1], cells[8]]


def test_the_plan_gives_the_halving_schedules_gpu_hours_beside_the_full_grids():
    experiments = load_matrix(REPO / SWEEP, REPO / "experiments/catalog.yaml")
    halving = load_halving(REPO / SWEEP, experiments)["sweep"]
    hours = {exp.id: 1.0 for exp in experiments}
    hours[f"{CELL}slr0.01-experts2"] = 10.0  # one costly cell: the worst case keeps it to the end
    cost = halving_hours(halving, hours)
    assert cost["cells_per_rung"] == [9, 3, 1]
    assert cost["full_grid"] == pytest.approx(18.0)
    # rungs 0.11, 0.33, 1.0: 9 cells x 0.11, then 3 x 0.22, then 1 x 0.67 of a cell's hours
    assert cost["expected"] == pytest.approx((9 * 0.11 + 3 * 0.22 + 0.67) * 2.0)
    assert cost["worst"] == pytest.approx(0.11 * 18 + 0.22 * 12 + 0.67 * 10)
    text = halving_plan({"sweep": halving}, [{"experiment": k, "gpu_hours": v} for k, v in hours.items()])[0]["text"]
    assert "9 -> 3 -> 1 cells" in text and "of the full grid's 18" in text


def _train(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steermoe.cli", "train", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---- rung trainings ------------------------------------------------------------------------------------------
def test_a_cell_stopped_at_a_rung_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    settings = dict(training={"max_steps": 12, "warmup_steps": 2}, save_steps=6, eval_steps=6,
                    eval_parquet_dirs=[f"{tiny['corpus']}/dev.parquet"], dataloader_num_workers=0)
    for folder in "ab":
        (tmp_path / folder).mkdir()
    whole, halved = (write_config(tmp_path / folder, tiny, **settings) for folder in "ab")
    assert _train(whole).returncode == 0
    rung = tmp_path / "b" / "out" / "rungs" / "rung1"
    first = _train(halved, "--until-step", "4", "--rung-dir", str(rung))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((rung / "train_summary.json").read_text())
    assert summary["steps"] == 4 and not (tmp_path / "b" / "out" / "final").exists()
    dev = [e["eval_loss"] for e in summary["log_history"] if "eval_loss" in e]
    assert dev == [summary["dev_loss"]]  # evaluated at the rung's step, once
    assert (rung / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "out" / "checkpoint-4" / "model.safetensors").read_bytes()
    # killed after the rung's checkpoint, before its folder: the same command measures nothing again
    (rung / "train_summary.json").unlink()
    again = _train(halved, "--until-step", "4", "--rung-dir", str(rung))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((rung / "train_summary.json").read_text())["dev_loss"] == summary["dev_loss"]
    assert "resuming from" in again.stderr + again.stdout
    # kept: it trains on from the rung's checkpoint, under the schedule of all 12 steps
    assert _train(halved).returncode == 0
    a = load_file(str(tmp_path / "a" / "out" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # a rung behind the newest checkpoint cannot be measured again
    late = _train(halved, "--until-step", "3", "--rung-dir", str(tmp_path / "late"))
    assert late.returncode != 0 and "has ended" in late.stderr


# ---- the workflow (stand-in steermoe: its rung trainings report made-up dev losses) ----------------------------
def test_a_dry_run_before_the_first_rung_plans_its_trainings_and_says_that_later_rungs_wait_for_decisions(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    jobs = planned(root, "--config", f"matrix={SWEEP}")
    assert {what for rule, what in jobs if rule == "train_rung"} == {CELL + v for v in VARIANTS}
    assert ("decide", "halving") in jobs  # results/halving/sweep/decision1.json
    assert {what for rule, what in jobs if rule == "train"} == {LINEAR}  # the baseline trains meanwhile
    out = snakemake(root, "-n", "--config", f"matrix={SWEEP}")
    assert "rung 1 of 3 trains 9 cells; the later rungs' jobs (3 and 1 cells) depend on the decisions" in out.stdout


VARIANTS = [f"slr{lr}-experts{n}" for n in (2, 4, 8) for lr in ("0.01", "0.003", "0.001")]


def test_a_sweep_killed_between_rungs_resumes_and_trains_only_the_cells_each_decision_kept(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    matrix = ("--config", f"matrix={SWEEP}")
    snakemake(root, "results/halving/sweep/decision1.json", *matrix)  # stopped once rung 1 is decided
    first = calls(root)
    assert sorted(t for c, t in first if c == "train") == sorted(CELL + v for v in VARIANTS)
    snakemake(root, *matrix)
    later = calls(root)[len(first):]
    decisions = [json.loads((root / f"results/halving/sweep/decision{k}.json").read_text()) for k in (1, 2)]
    assert [c for c, _ in later].count("train") == 3 + 1 + 1  # rung 2 of 3 kept cells, the last rung, the baseline
    assert {t for c, t in later if c == "train"} == {*decisions[0]["kept"], LINEAR}
    assert {t for c, t in later if c == "evaluate"} == {*decisions[1]["kept"], LINEAR}  # stopped: skip
    assert len(decisions[1]["kept"]) == 1 and decisions[1]["ranking"][0]["of"] == 3
    assert snakemake(root, "-n", *matrix).stdout.count("rule ") == 0  # nothing left, nothing redone
    table = subprocess.run([sys.executable, "-m", "steermoe.cli", "status", "--matrix", SWEEP], cwd=root,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert table.count("stopped") >= 8 and "[kept: rung 3, rank 1/3]" in table

    # edited settings re-decide from the rung folders there: keeping half trains more cells, retrains none
    path = root / SWEEP
    path.write_text(path.read_text().replace("keep: 0.33", "keep: 0.5"))
    done = len(calls(root))
    snakemake(root, *matrix)
    again = calls(root)[done:]
    decisions = [json.loads((root / f"results/halving/sweep/decision{k}.json").read_text()) for k in (1, 2)]
    assert len(decisions[0]["kept"]) == 5 and len(decisions[1]["kept"]) == 3
    assert not any(c == "train" and t not in decisions[0]["kept"] for c, t in again)  # no cell trained rung 1 again


def test_stopped_cells_are_evaluated_with_their_last_rungs_weights_when_the_sweep_says_so(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    (root / SWEEP).write_text((root / SWEEP).read_text().replace("stopped: skip", "stopped: evaluate"))
    snakemake(root, "results/halving/sweep/decision2.json", "--config", f"matrix={SWEEP}")
    decisions = [json.loads((root / f"results/halving/sweep/decision{k}.json").read_text()) for k in (1, 2)]
    out = snakemake(root, "-n", "-p", "--config", f"matrix={SWEEP}").stdout
    for rung, decision in enumerate(decisions, 1):
        for cell in decision["stopped"]:
            assert f"--config results/{cell}/" in out
            assert f"--checkpoint results/{cell}/train/rungs/rung{rung} " in out
    [kept] = [line for line in out.splitlines() if f"steermoe evaluate --config results/{decisions[1]['kept'][0]}/"
              in line]
    assert "--checkpoint" not in kept  # the kept cell is scored with its final weights


# ---- the shipped sweep, for real ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_shipped_sweep_runs_end_to_end_at_quick_size_and_its_table_marks_every_cell(embedded_models, tmp_path):
    """experiments/sweep.yaml with the real steermoe at quick size (2 steps: rungs at steps 1, 1 and 2): 9 cells
    to rung 1, 3 to rung 2, one to the end, the baseline in full; the stopped cells are rows with their rung, dev
    loss and rank, and the kept cell's final training resumed from its rung checkpoint."""
    import csv

    root = copy_workflow(tmp_path / "wf")
    models = Path(next(iter(embedded_models.values()))).parent
    snakemake(root, "--config", f"matrix={SWEEP}", "quick=true", f"models={models}", stub=False)
    decisions = [json.loads((root / f"results/halving/sweep/decision{k}.json").read_text()) for k in (1, 2)]
    [kept] = decisions[1]["kept"]
    rows = {r["experiment"]: r for r in csv.DictReader((root / "results" / "table.csv").open())
            if r["headline"] == "true"}
    assert len(rows) == 10 and rows[LINEAR]["status"] == "ok" and rows[LINEAR]["halving"] == ""
    assert rows[kept]["status"] == "ok" and rows[kept]["halving"] == "kept" and rows[kept]["halving_rank"] == "1/3"
    assert float(rows[kept]["value"]) >= 0 and rows[kept]["train_steps"] == "2"
    stopped = [r for name, r in rows.items() if name not in (kept, LINEAR)]
    assert all(r["status"] == "stopped" and r["value"] == "" and r["halving"] == "stopped" for r in stopped)
    for rung, decision in enumerate(decisions, 1):
        for entry in decision["ranking"]:
            if not entry["kept"]:
                row = rows[entry["cell"]]
                assert (row["halving_rung"], row["halving_rank"]) == (str(rung), f"{entry['rank']}/{entry['of']}")
                assert float(row["halving_measure"]) == pytest.approx(entry["dev_loss"])
                assert not (root / "results" / entry["cell"] / "eval").exists()  # stopped: skip
    train_log = (root / "logs" / kept / "train.log").read_text()
    assert "resuming from" in train_log and "checkpoint-1" in train_log
    assert "Nothing to be done" in snakemake(root, "-n", "--config", f"matrix={SWEEP}", "quick=true",
                                             f"models={models}", stub=False).stdout
