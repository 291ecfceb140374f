"""Two runs from scratch give identical tables apart from the timing columns.

Two fresh copies of the workflow each synthesise their own corpus, train and evaluate from scratch (quick variant,
`snakemake --cores 2 results/table.csv --config quick=true`), on the default matrix's synth-en group (layer_wise
against its linear baseline, so comparisons.csv has a paired bootstrap row too). Only the embedded models are
shared, read-only.
"""
import csv
from pathlib import Path

import pytest

from steermoe.report.tables import TIMING_COLUMNS
from tests.test_workflow import LAYER_WISE, LINEAR, OOD, UNSEEN, copy_workflow, snakemake, write_matrix

SYNTH_EN_GROUP = ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\tsynth-en\tfalse",
                  "linear\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\tsynth-en\ttrue")


def read_rows(path: Path, drop=()) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(path.open())]


@pytest.mark.slow
def test_two_runs_from_scratch_give_identical_tables(embedded_models, tmp_path):
    models = Path(next(iter(embedded_models.values()))).parent
    runs = []
    for name in ("first", "second"):
        root = copy_workflow(tmp_path / name)
        write_matrix(root, *SYNTH_EN_GROUP)
        snakemake(root, "results/table.csv", "--config", "quick=true", f"models={models}", stub=False,
                  timeout=1800)
        runs.append(root / "results")
    first, second = runs
    table = read_rows(first / "table.csv")
    trained = {exp + on for exp in (LAYER_WISE, LINEAR) for on in ("", UNSEEN, OOD)}  # each on every test set
    assert {r["experiment"] for r in table} == trained and {r["status"] for r in table} == {"ok"}
    assert all(r[column] for r in table for column in TIMING_COLUMNS)  # the columns left out are there
    assert read_rows(first / "table.csv", TIMING_COLUMNS) == read_rows(second / "table.csv", TIMING_COLUMNS)
    comparisons = (first / "comparisons.csv").read_text()
    assert len(comparisons.splitlines()) == 4 and comparisons.count(",ok,") == 3  # one per test set
    assert comparisons == (second / "comparisons.csv").read_text()
