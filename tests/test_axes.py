"""The matrix declared with axes (YAML): it expands to exactly the experiments of the equivalent explicit rows."""
import subprocess
import sys
from pathlib import Path

import pytest

from steermoe.declare.matrix import explicit_rows, load_matrix
from steermoe.declare.render import render_all, sha256
from steermoe.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "experiments" / "catalog.yaml"
TEMPLATES = REPO / "templates"

AXES = """\
# the expert-count ablation, with a learning-rate axis
fixed: {encoder: whisper-tiny.en, decoder: smollm2, dataset: synth-en, group: experts}
blocks:
  - {method: layer_wise, num_experts: [2, 4, 8], learning_rate: [1e-2, 0.001], encoder_window: 30s}
  - {method: linear, baseline: true}
exclude:
  - {num_experts: 8, learning_rate: 1.0e-3}
"""
EXPLICIT = """\
method\tencoder\tdecoder\tdataset\tnum_experts\tlearning_rate\tencoder_window\tgroup\tbaseline
layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t2\t1e-2\t30s\texperts\tfalse
layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t2\t0.001\t30s\texperts\tfalse
layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t0.01\t30s\texperts\t
layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t1e-3\t30s\texperts\t
layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t8\t0.01\t30s\texperts\tno
linear\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\texperts\ttrue
"""


def fingerprint(path: Path) -> list[tuple]:
    """Each experiment's id, group, baseline and the sha256 of both rendered configs, in matrix order."""
    experiments = load_matrix(path, CATALOG)
    rendered = render_all(experiments, TEMPLATES)
    return [(exp.id, exp.group, exp.baseline, *(sha256(text) for text in rendered[exp.id].values()))
            for exp in experiments]


def test_axes_expand_to_exactly_the_ids_and_config_hashes_of_the_explicit_rows(tmp_path):
    (tmp_path / "axes.yaml").write_text(AXES)
    (tmp_path / "explicit.tsv").write_text(EXPLICIT)
    expanded = fingerprint(tmp_path / "axes.yaml")
    assert expanded == fingerprint(tmp_path / "explicit.tsv")
    # six rows, each scored on synth-en's three test sets
    linear = "linear_whisper-tiny.en_smollm2_synth-en"
    assert len(expanded) == 18 and [e[0] for e in expanded][-3:] == [linear, f"{linear}_on-test-unseen",
                                                                   f"{linear}_on-test-ood"]
    assert expanded[0][0] == "layer_wise_whisper-tiny.en_smollm2_synth-en_lr0.01-experts2-window30s"


def test_the_printed_explicit_rows_expand_back_to_the_same_experiments(tmp_path):
    (tmp_path / "axes.yaml").write_text(AXES)
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "matrix", "--matrix", str(tmp_path / "axes.yaml"),
                          "--catalog", str(CATALOG)], capture_output=True, text=True, check=True).stdout
    (tmp_path / "printed.tsv").write_text(out)
    assert fingerprint(tmp_path / "printed.tsv") == fingerprint(tmp_path / "axes.yaml")
    assert explicit_rows(load_matrix(tmp_path / "printed.tsv", CATALOG)) == out


def test_a_yaml_matrix_includes_explicit_tsv_rows_beside_its_axes(tmp_path):
    (tmp_path / "rows.tsv").write_text("method\tencoder\tdecoder\tdataset\n"
                                       "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-aqa\n")
    (tmp_path / "both.yaml").write_text(f"include: [{tmp_path / 'rows.tsv'}]\n" + AXES)
    ids = [exp.id for exp in load_matrix(tmp_path / "both.yaml", CATALOG)]
    assert ids[0] == "layer_wise_whisper-tiny.en_smollm2_synth-aqa" and len(ids) == 1 + 6 * 3


@pytest.mark.parametrize("text, message", [
    (AXES.replace("num_experts: [2", "num_expert: [2"),
     r"axes.yaml: line 4: unknown column 'num_expert' \(did you mean 'num_experts'\?\)"),
    (AXES.replace("num_experts: 8, learning_rate", "num_experts: 16, learning_rate"),
     r"axes.yaml: line 7, exclude entry 1: matches no row"),
    (AXES.replace("dataset: synth-en, ", ""),
     r"axes.yaml: line 4: the row has no 'dataset'; every row needs method, encoder, decoder, dataset"),
    (AXES.replace("num_experts: [2, 4, 8]", "num_experts: []"),
     r"axes.yaml: line 4, block 1, key 'num_experts': must be a value or a non-empty list of values"),
    (AXES.replace("blocks:", "block:"), r"axes.yaml: unknown key 'block' \(did you mean 'blocks'\?\)"),
    (AXES.replace("encoder_window: 30s", "encoder_window: 40s"),
     r"axes.yaml: row 1 \(line 4\), column 'encoder_window': '40s' is not one of 30s, dynamic"),
])
def test_a_mistake_in_an_axes_declaration_names_the_file_the_line_and_the_key(tmp_path, text, message):
    (tmp_path / "axes.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_matrix(tmp_path / "axes.yaml", CATALOG)


def test_the_workflow_runs_a_matrix_declared_with_axes(tmp_path):
    from tests.test_workflow import copy_workflow, planned

    root = copy_workflow(tmp_path / "wf")
    (root / "experiments" / "ablation.yaml").write_text(AXES)
    jobs = planned(root, "--config", "matrix=experiments/ablation.yaml")
    expected = load_matrix(root / "experiments" / "ablation.yaml", CATALOG)
    assert {what for rule, what in jobs if rule == "train"} == {e.id for e in expected if e.test_set == "test"}
    assert {what for rule, what in jobs if rule == "evaluate"} == {e.id for e in expected}


def test_the_same_experiments_declared_in_another_matrix_file_are_not_run_again(tmp_path):
    """Moving from explicit rows to axes (or to any file declaring the same experiments) keeps every result."""
    from tests.test_workflow import copy_workflow, planned, snakemake

    root = copy_workflow(tmp_path / "wf")
    (root / "experiments" / "explicit.tsv").write_text(EXPLICIT)
    (root / "experiments" / "ablation.yaml").write_text(AXES)
    snakemake(root, "--config", "matrix=experiments/explicit.tsv")
    assert planned(root, "--config", "matrix=experiments/ablation.yaml") == {("aggregate", "results/table.csv")}


SEEDED = """\
fixed: {encoder: whisper-tiny.en, decoder: smollm2, dataset: synth-en, group: g}
blocks:
  - {method: layer_wise, num_experts: [4, 8], seeds: SEEDS}
  - {method: linear, baseline: true, seeds: SEEDS}
"""


def test_seeds_make_one_experiment_per_seed_equal_to_explicit_seed_rows(tmp_path):
    (tmp_path / "count.yaml").write_text(SEEDED.replace("SEEDS", "3"))
    (tmp_path / "list.yaml").write_text(SEEDED.replace("SEEDS", "[0, 1, 2]"))
    (tmp_path / "axis.yaml").write_text(SEEDED.replace("seeds: SEEDS", "seed: [0, 1, 2]"))
    rows = "".join(f"{m}\twhisper-tiny.en\tsmollm2\tsynth-en\t{e}\t{s}\tg\t{str(m == 'linear').lower()}\n"
                   for m, e in (("layer_wise", 4), ("layer_wise", 8), ("linear", "")) for s in range(3))
    (tmp_path / "rows.tsv").write_text("method\tencoder\tdecoder\tdataset\tnum_experts\tseed\tgroup\tbaseline\n" + rows)
    (tmp_path / "cells.tsv").write_text("method\tencoder\tdecoder\tdataset\tnum_experts\tseeds\tgroup\tbaseline\n"
                                        "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t3\tg\tfalse\n"
                                        "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t8\t0,1,2\tg\tfalse\n"
                                        "linear\twhisper-tiny.en\tsmollm2\tsynth-en\t\t3\tg\ttrue\n")
    expected = sorted(fingerprint(tmp_path / "rows.tsv"))
    for path in ("count.yaml", "list.yaml", "axis.yaml", "cells.tsv"):
        assert sorted(fingerprint(tmp_path / path)) == expected, path
    experiments = load_matrix(tmp_path / "cells.tsv", CATALOG)
    assert [e.id for e in experiments][:6] == [f"layer_wise_whisper-tiny.en_smollm2_synth-en_experts4-seed{s}{on}"
                                               for s in range(2) for on in ("", "-on-test-unseen", "-on-test-ood")]
    layer_wise, linear = "layer_wise_whisper-tiny.en_smollm2_synth-en", "linear_whisper-tiny.en_smollm2_synth-en"
    assert {e.replicate_of for e in experiments} == {  # a replicate set per test set
        f"{layer_wise}_experts4", f"{layer_wise}_experts8", linear,
        *(f"{layer_wise}_experts{n}-on-{t}" for n in (4, 8) for t in ("test-unseen", "test-ood")),
        f"{linear}_on-test-unseen", f"{linear}_on-test-ood"}


@pytest.mark.parametrize("cell, message", [("x", "neither a count nor"), ("0", "give a positive count"),
                                           ("1,1", "distinct non-negative seeds")])
def test_a_bad_seeds_cell_is_refused_naming_its_row(tmp_path, cell, message):
    (tmp_path / "m.tsv").write_text("method\tencoder\tdecoder\tdataset\tseeds\n"
                                    f"linear\twhisper-tiny.en\tsmollm2\tsynth-en\t{cell}\n")
    with pytest.raises(ConfigError, match=rf"m.tsv: row 1 \(line 2\), column 'seeds': .*{message}"):
        load_matrix(tmp_path / "m.tsv", CATALOG)


def test_adding_a_seed_schedules_only_that_seeds_jobs(tmp_path):
    from tests.test_workflow import copy_workflow, planned, snakemake

    root = copy_workflow(tmp_path / "wf")
    matrix = root / "experiments" / "seeds.yaml"
    matrix.write_text("blocks:\n  - {method: linear, encoder: whisper-tiny.en, decoder: smollm2, dataset: synth-en,"
                      " seeds: 2}\n")
    snakemake(root, "--config", "matrix=experiments/seeds.yaml", "quick=true")
    matrix.write_text(matrix.read_text().replace("seeds: 2", "seeds: 3"))
    jobs = planned(root, "--config", "matrix=experiments/seeds.yaml", "quick=true")
    new = "linear_whisper-tiny.en_smollm2_synth-en_seed2"
    assert {what for rule, what in jobs if rule not in ("aggregate",)} == {new + on for on in ("", "-on-test-unseen",
                                                                                         "-on-test-ood")}


def test_the_shipped_expert_count_ablation_trains_15_models_each_scored_on_every_test_set():
    experiments = load_matrix(REPO / "experiments" / "ablation-experts.yaml", CATALOG)
    prefix = "whisper-tiny.en_smollm2_synth-en"
    trained = [f"layer_wise_{prefix}_steps1680-experts{n}-seed{s}" for n in (2, 4, 8, 16) for s in range(3)]
    trained += [f"linear_{prefix}_steps1680-seed{s}" for s in range(3)]
    assert [exp.id for exp in experiments] == [f"{i}{on}" for i in trained
                                               for on in ("", "-on-test-unseen", "-on-test-ood")]
    assert [exp.id for exp in experiments if "train" in exp.configs] == trained
    assert {exp.group for exp in experiments} == {"experts"}
    assert [exp.id for exp in experiments if exp.baseline and exp.test_set == "test"] == \
        [f"linear_{prefix}_steps1680-seed{s}" for s in range(3)]
    for exp in experiments:
        assert (exp.encoder, exp.decoder, exp.dataset) == ("whisper-tiny.en", "smollm2", "synth-en")
        assert exp.settings["seed"] == int(exp.id.split("-seed")[1][0])
        if exp.method == "layer_wise":
            assert exp.settings["num_experts"] == int(exp.id.split("-experts")[1].split("-")[0])
        else:
            assert exp.method == "linear" and "num_experts" not in exp.overrides
    assert len({exp.replicate_of for exp in experiments}) == 15  # 5 replicate sets of 3 seeds, on 3 test sets


def test_the_shipped_recipe_matrix_trains_each_recipe_once_on_the_same_utterances_and_scores_it_under_both_protocols():
    experiments = {exp.id.split("_synth-en_")[1]: exp
                   for exp in load_matrix(REPO / "experiments" / "recipes-compared.yaml", CATALOG)}
    paper = "paper-steps1680-protocolhonest"
    original_code = "original-code-steps420-protocolhonest-evalsteps210-savesteps210"
    assert [v for v, exp in experiments.items() if "train" in exp.configs] == [paper, original_code]
    for trained in (paper, original_code):
        scored_under_original = experiments[trained.replace("protocolhonest", "protocoloriginal")]
        assert scored_under_original.trained_by.endswith(trained)
        assert scored_under_original.settings["protocol"] == "original"
    samples = {v: exp.settings["batch_size"] * exp.settings["max_steps"] for v, exp in experiments.items()}
    assert samples[paper] == samples[original_code] == 3360
    settings = experiments[original_code].settings
    assert (settings["learning_rate"], settings["lr_scheduler"], settings["pooling_type"]) == (5e-5, "linear", "max")
    assert [exp.baseline for exp in experiments.values() if exp.group == "recipes"] == [True, False]


def test_the_shipped_speech_en_matrix_scores_two_trainings_and_whisper_on_both_test_sets():
    experiments = load_matrix(REPO / "experiments" / "speech-en.yaml", CATALOG)
    prefix = "whisper-tiny.en_{}_speech-en"
    ids = [f"{m}_{prefix.format(d)}" for m, d in (("layer_wise", "smollm2"), ("linear", "smollm2"), ("reference", "own"))]
    assert [exp.id for exp in experiments] == [f"{i}{on}" for i in ids for on in ("", "_on-test-ood")]
    assert [exp.id for exp in experiments if "train" in exp.configs] == ids[:2]
    assert {exp.test_set for exp in experiments} == {"test", "test-ood"}
    assert [exp.id for exp in experiments if exp.baseline] == [ids[1], f"{ids[1]}_on-test-ood"]


def test_the_shipped_aqa_matrix_trains_layer_wise_on_synth_aqa_at_the_catalog_budget():
    (experiment,) = load_matrix(REPO / "experiments" / "aqa.yaml", CATALOG)
    assert experiment.id == "layer_wise_whisper-tiny.en_smollm2_synth-aqa" and experiment.metric == "qa_accuracy"
    assert experiment.settings["max_steps"] == 500 and not experiment.overrides
