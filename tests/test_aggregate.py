"""Aggregation: table rows and statuses, paired comparisons, determinism, atomicity, plots.

Result folders are built by hand with the files `steermoe train` / `steermoe evaluate` write, so these tests need
no model and run in seconds.
"""
import csv
import hashlib
import io
import json
import shutil
from dataclasses import replace

import pytest

from steermoe.declare.experiments import Experiment
from steermoe.report import aggregate as agg
from steermoe.report.aggregate import aggregate
from steermoe.report.results import collect, log_error
from steermoe.report.tables import TIMING_COLUMNS, table_columns

N = 60  # test utterances
UNITS = [8 + (i % 7) for i in range(N)]  # reference words per utterance
BASE_ERRORS = [3 if i % 2 else 2 for i in range(N)]  # ~ 26 % WER
BETTER_ERRORS = [0 if i % 3 else 1 for i in range(N)]  # ~ 2 % WER


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


CONFIG_PATHS = {}  # experiment id -> (train, test) rendered config paths, when they do not follow {id}_{mode}.yaml


def write_configs(exp_id, dataset="synth-en"):
    folder = agg.Path("results") / exp_id
    folder.mkdir(parents=True, exist_ok=True)
    train, test = CONFIG_PATHS.get(exp_id, (folder / f"{exp_id}_train.yaml", folder / f"{exp_id}_test.yaml"))
    train.write_text(f"training:\n  output_dir: results/{exp_id}/train\nparquet_dirs: [data/{dataset}/train.parquet]\n")
    test.write_text(f"training:\n  output_dir: results/{exp_id}/train\nparquet_dirs: [data/{dataset}/test.parquet]\n")
    return train, test


def experiment(exp_id, method, group="", baseline=False, metric="wer", dataset="synth-en", **overrides) -> Experiment:
    return Experiment(id=exp_id, method=method, encoder="whisper-tiny.en", decoder="smollm2", dataset=dataset,
                      overrides=overrides, group=group, baseline=baseline, metric=metric,
                      train_config=f"results/{exp_id}/{exp_id}_train.yaml",
                      test_config=f"results/{exp_id}/{exp_id}_test.yaml")


def write_trained(exp_id, seconds=100.0, steps=40):
    train, _ = write_configs(exp_id)
    final = agg.Path("results") / exp_id / "train" / "final"
    final.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, "loss": 5.0 / s, "learning_rate": 0.01} for s in range(5, steps + 1, 5)]
    history += [{"step": s, "eval_loss": 6.0 / s} for s in (20, 40)]
    (final / "train_summary.json").write_text(json.dumps({
        "steps": steps, "train_seconds_this_run": seconds, "train_loss": 1.0, "precision": "fp32",
        "weights_dtype": "float32", "device": "cpu", "device_model": "AMD EPYC 7B13", "cpu_flags": "avx2",
        "trainable_parameters": {"steering_vectors": 6144, "router": 6168, "layer_scales": 4, "projection": 221760,
                                 "lora": 0}, "log_history": history}))
    (final / "steermoe.json").write_text(json.dumps({"config": train.stem, "config_sha256": _sha(train)}))


def write_evaluated(exp_id, errors, units=UNITS, seconds=100.0, eval_seconds=20.0, steering=True, ids=None,
                    references=None):
    write_trained(exp_id, seconds=seconds)
    _, test = write_configs(exp_id)
    ev = agg.Path("results") / exp_id / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"utt{i:03d}" for i in range(len(errors))]
    with open(ev / "predictions.jsonl", "w") as handle:
        for i, (e, u) in enumerate(zip(errors, units)):
            reference = references[i] if references else "a b c"
            handle.write(json.dumps({"id": ids[i], "reference": reference, "hypothesis": "a b", "errors": e,
                                     "reference_units": u}) + "\n")
    value = sum(errors) / sum(units)
    metrics = {"config": test.stem, "config_sha256": _sha(test), "method": exp_id.split("_")[0], "metric": "wer",
               "value": value, "ci95": [value * 0.8, value * 1.2], "substitutions": sum(errors) - 2,
               "deletions": 1, "insertions": 1, "reference_units": sum(units),
               "raw": {"value": value + 0.1, "ci95": [value, value + 0.2], "substitutions": sum(errors) + 10,
                       "deletions": 1, "insertions": 1, "reference_units": sum(units)},
               "utterances": len(errors), "rtf": eval_seconds / 300, "decode_seconds": eval_seconds,
               "audio_seconds": 300.0, "trainable_parameters": 234076}
    (ev / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if steering:
        (ev / "steering.json").write_text(json.dumps({
            "mean_gate": [[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1],
                          [0.1, 0.2, 0.3, 0.4]],
            "entropy": [1.2, 1.386, 0.94, 1.28], "max_entropy": 1.3863, "frames": [100] * 4,
            "layer_scales": [0.1, 0.12, 0.09, 0.2], "vector_norms": [[0.1] * 4] * 4}))


def write_log(exp_id, stage, text):
    folder = agg.Path("logs") / exp_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.log").write_text(text)


BASE, BETTER, SAME = "linear_tiny_smol_synthen", "layer_wise_tiny_smol_synthen", "layer_wise_tiny_smol_synthen_k2"
FAILED, FAILED_EVAL = "lora_tiny_smol_synthen", "post_encoder_tiny_smol_synthen"
NOT_RUN = "layer_wise_base_smol_synthen"


def build_matrix(seconds=100.0, eval_seconds=20.0):
    """Six experiments: a baseline, a clearly better system, one identical to the baseline, a training failure,
    an evaluation failure and one not run."""
    exps = [experiment(BASE, "linear", group="methods", baseline=True),
            experiment(BETTER, "layer_wise", group="methods", num_experts=4),
            experiment(SAME, "layer_wise", group="methods", num_experts=4, pooling_kernel_size=2),
            experiment(FAILED, "lora", group="methods"),
            experiment(FAILED_EVAL, "post_encoder", group="methods"),
            experiment(NOT_RUN, "layer_wise", group="", num_experts=8)]
    write_evaluated(BASE, BASE_ERRORS, seconds=seconds, eval_seconds=eval_seconds, steering=False)
    write_evaluated(BETTER, BETTER_ERRORS, seconds=seconds + 1, eval_seconds=eval_seconds + 1)
    write_evaluated(SAME, BASE_ERRORS, seconds=seconds + 2, eval_seconds=eval_seconds + 2)
    write_configs(FAILED)
    write_log(FAILED, "train", "loading...\nsteermoe: error: results/x_train.yaml: unknown key 'steering.num_expert'; "
                               "did you mean 'steering.num_experts'?\n")
    write_trained(FAILED_EVAL)
    write_log(FAILED_EVAL, "evaluate", "decoded 16/60\nTraceback (most recent call last):\n  File \"x.py\", line 3, "
                                       "in <module>\n    f()\nRuntimeError: CUDA out of memory\n")
    return exps


def read_table(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(exps, **kw):
    return aggregate(exps, agg.Path("results"), agg.Path("results"), logs_dir=agg.Path("logs"), commit="abc123",
                     resamples=400, log=lambda _: None, **kw)


def test_table_rows_columns_and_status(workdir):
    exps = build_matrix()
    run(exps)
    rows = read_table(workdir / "results/table.csv")
    header = next(csv.reader(io.StringIO((workdir / "results/table.csv").read_text())))
    assert header == table_columns(["num_experts", "pooling_kernel_size"])
    for column in ("experiment", "method", "encoder", "decoder", "dataset", "group", "metric", "value", "ci_low",
                   "ci_high", "substitutions", "deletions", "insertions", "reference_units", "utterances",
                   "trainable_parameters", "train_seconds", "eval_seconds", "rtf", "config_sha256", "git_commit",
                   "status", "error", "log"):
        assert column in header
    # matrix order; evaluated English experiments give wer + wer_raw, the others one headline row
    assert [(r["experiment"], r["metric"]) for r in rows] == [
        (BASE, "wer"), (BASE, "wer_raw"), (BETTER, "wer"), (BETTER, "wer_raw"), (SAME, "wer"), (SAME, "wer_raw"),
        (FAILED, "wer"), (FAILED_EVAL, "wer"), (NOT_RUN, "wer")]
    by = {(r["experiment"], r["metric"]): r for r in rows}
    base = by[(BASE, "wer")]
    assert base["status"] == "ok" and base["error"] == "" and base["headline"] == "true"
    assert base["value"] == f"{sum(BASE_ERRORS) / sum(UNITS):.6f}"
    assert base["reference_units"] == str(sum(UNITS)) and base["utterances"] == str(N)
    assert base["trainable_parameters"] == "234076" and base["train_steps"] == "40"
    # how it was trained: tables match only between runs that agree on these
    assert (base["precision"], base["weights_dtype"], base["device"], base["device_model"], base["cpu_flags"]) == \
        ("fp32", "float32", "cpu", "AMD EPYC 7B13", "avx2")
    assert base["config_sha256"] == _sha(workdir / f"results/{BASE}/{BASE}_test.yaml")
    assert base["train_config_sha256"] == _sha(workdir / f"results/{BASE}/{BASE}_train.yaml")
    assert base["git_commit"] == "abc123" and base["test_set"] == "synth-en/test"
    assert by[(BASE, "wer_raw")]["headline"] == "false"
    assert by[(BETTER, "wer")]["num_experts"] == "4" and base["num_experts"] == ""
    failed = by[(FAILED, "wer")]
    assert failed["status"] == "failed at train" and failed["value"] == ""
    assert failed["error"] == ("results/x_train.yaml: unknown key 'steering.num_expert'; did you mean "
                               "'steering.num_experts'?")
    assert failed["log"] == f"logs/{FAILED}/train.log"
    failed_eval = by[(FAILED_EVAL, "wer")]
    assert failed_eval["status"] == "failed at evaluate"
    assert failed_eval["error"] == "RuntimeError: CUDA out of memory"
    assert failed_eval["log"] == f"logs/{FAILED_EVAL}/evaluate.log"
    assert by[(NOT_RUN, "wer")]["status"] == "not run" and by[(NOT_RUN, "wer")]["error"] == ""


def test_comparisons_paired_bootstrap(workdir):
    run(build_matrix())
    rows = {r["experiment"]: r for r in read_table(workdir / "results/comparisons.csv")}
    assert set(rows) == {BETTER, SAME, FAILED, FAILED_EVAL}  # NOT_RUN is in no group
    better, same = rows[BETTER], rows[SAME]
    assert better["status"] == "ok" and better["baseline"] == BASE and better["utterances"] == str(N)
    assert float(better["delta"]) < 0 and float(better["ci_high"]) < 0 and better["significant"] == "true"
    assert float(better["p_value"]) < 0.01 and float(better["p_value"]) > 0  # a bound, never 0
    assert (better["direction"], better["verdict"]) == ("lower is better", "better")
    assert float(same["delta"]) == 0 and float(same["ci_low"]) <= 0 <= float(same["ci_high"])
    assert same["significant"] == "false" and float(same["p_value"]) == 1.0
    assert same["verdict"] == "no clear difference"
    assert rows[FAILED]["status"] == "not available" and "failed at train" in rows[FAILED]["error"]
    # one training per row: the interval says it covers the test utterances only, in both files
    single = "test utterances only (one training per row; training variance not included)"
    assert better["interval_covers"] == same["interval_covers"] == single
    table = {r["experiment"]: r for r in read_table(workdir / "results/table.csv") if r["headline"] == "true"}
    assert table[BETTER]["interval_covers"] == single
    # each row names what it changes against the baseline; the baseline and rows in no group name nothing
    assert better["differs_from_baseline"] == table[BETTER]["differs_from_baseline"] == \
        "method=layer_wise, num_experts=4"
    assert same["differs_from_baseline"] == "method=layer_wise, num_experts=4, pooling_kernel_size=2"
    assert table[BASE]["differs_from_baseline"] == table[NOT_RUN]["differs_from_baseline"] == ""


def test_a_row_differs_from_its_baseline_by_its_merged_settings_and_a_default_it_leaves_unset(tmp_path):
    from steermoe.declare.experiments import differences
    from steermoe.declare.matrix import load_matrix
    from tests.conftest import REPO

    (tmp_path / "m.tsv").write_text(
        "method\tencoder\tdecoder\tdataset\tgroup\tbaseline\tnum_experts\tsteering_learning_rate\tseeds\n"
        "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\tg\ttrue\t\t\t1,2\n"
        "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\tg\tfalse\t2\t0.001\t1,2\n"
        "linear\twhisper-tiny.en\tsmollm2\tsynth-en\tg\tfalse\t\t\t1,2\n")
    experiments = [e for e in load_matrix(tmp_path / "m.tsv", REPO / "experiments/catalog.yaml")
                   if e.test_set == "test"]
    base, swept, linear = experiments[0], experiments[2], experiments[4]
    assert (base.overrides["seed"], swept.overrides["seed"]) == (1, 1)
    assert differences(swept, base) == "num_experts=2, steering_learning_rate=0.001"
    assert differences(base, swept) == "num_experts=8, steering_learning_rate=0.01"  # the defaults it leaves unset
    assert differences(experiments[3], base) == differences(swept, base)  # another seed is no difference
    assert differences(linear, base) == "method=linear"


def test_comparison_needs_the_same_utterances(workdir):
    exps = [experiment(BASE, "linear", group="g", baseline=True), experiment(BETTER, "layer_wise", group="g")]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(BETTER, BETTER_ERRORS, ids=[f"other{i:03d}" for i in range(N)])
    run(exps)
    (row,) = read_table(workdir / "results/comparisons.csv")
    assert row["status"] == "error" and "not decoded on the same test utterances" in row["error"]
    assert f"results/{BETTER}/eval/predictions.jsonl" in row["error"]


def test_comparison_needs_the_same_references(workdir):
    """The same ids are not enough: a test set rebuilt with other transcripts is another test set."""
    exps = [experiment(BASE, "linear", group="g", baseline=True), experiment(BETTER, "layer_wise", group="g")]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(BETTER, BETTER_ERRORS, references=["a b c"] * (N - 2) + ["a b d", "x"])
    run(exps)
    (row,) = read_table(workdir / "results/comparisons.csv")
    assert row["status"] == "error" and row["verdict"] == ""
    assert f"were scored against different references for 2 of {N} utterances" in row["error"]
    assert f"'utt{N - 2:03d}': 'a b d' against 'a b c'" in row["error"]


def test_comparison_needs_the_same_test_set(workdir):
    """Grouping pairs test sets by name; the files decoded must agree too."""
    exps = [experiment(BASE, "linear", group="g", baseline=True),
            replace(experiment(BETTER, "layer_wise", group="g"),
                    parquet={"test": ["data/synth-en/unseen-voice.parquet"]})]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(BETTER, BETTER_ERRORS)
    run(exps)
    (row,) = read_table(workdir / "results/comparisons.csv")
    assert row["status"] == "error"
    assert row["error"] == (f"{BETTER} is scored on synth-en/unseen-voice, the baseline {BASE} on synth-en/test: a "
                            f"paired comparison needs the same test set")


def test_a_group_is_compared_on_each_of_its_test_sets_with_the_baseline_scored_on_the_same_one(workdir):
    def on(exp, test_set):
        return replace(exp, test_set=test_set, parquet={"test": [f"data/synth-en/{test_set}.parquet"]})

    unseen_base, unseen_better = f"{BASE}_on-test-unseen", f"{BETTER}_on-test-unseen"
    exps = [on(experiment(BASE, "linear", group="g", baseline=True), "test"),
            on(experiment(unseen_base, "linear", group="g", baseline=True), "test-unseen"),
            on(experiment(BETTER, "layer_wise", group="g"), "test"),
            on(experiment(unseen_better, "layer_wise", group="g"), "test-unseen")]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(unseen_base, BETTER_ERRORS)  # on this test set the baseline does as well as the other row
    write_evaluated(BETTER, BETTER_ERRORS)
    write_evaluated(unseen_better, BETTER_ERRORS)
    run(exps)
    rows = read_table(workdir / "results/comparisons.csv")
    assert [(r["baseline"], r["experiment"], r["test_set"]) for r in rows] == [
        (BASE, BETTER, "synth-en/test"), (unseen_base, unseen_better, "synth-en/test-unseen")]
    assert rows[0]["verdict"] == "better" and float(rows[1]["delta"]) == 0.0
    table = read_table(workdir / "results/table.csv")
    assert {(r["experiment"], r["test_set"]) for r in table} == {(BASE, "synth-en/test"), (BETTER, "synth-en/test"),
                                                                (unseen_base, "synth-en/test-unseen"),
                                                                (unseen_better, "synth-en/test-unseen")}


def test_original_protocol_rows_are_labelled_and_never_paired_with_honest_ones(workdir):
    exps = [experiment(BASE, "linear", group="g", baseline=True), experiment(BETTER, "layer_wise", group="g")]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(BETTER, BETTER_ERRORS)
    path = workdir / "results" / BETTER / "eval" / "metrics.json"
    metrics = {k: v for k, v in json.loads(path.read_text()).items() if k != "raw"}
    path.write_text(json.dumps({**metrics, "protocol": "original", "seed_values": [0.1, 0.2], "reference_units": 100}))
    run(exps)
    rows = read_table(workdir / "results/table.csv")
    assert [(r["experiment"], r["protocol"], r["metric"]) for r in rows] == [
        (BASE, "honest", "wer"), (BASE, "honest", "wer_raw"), (BETTER, "original", "wer")]
    assert rows[2]["note"].startswith("original protocol: raw word error rate") and rows[2]["reference_units"] == "100"
    (row,) = read_table(workdir / "results/comparisons.csv")
    assert row["status"] == "error"
    assert row["error"] == f"{BETTER} is evaluated under the original protocol, the baseline {BASE} under honest"


def test_a_matrix_column_the_table_already_has_appears_once_with_the_results_value(workdir):
    exps = [experiment(BASE, "linear", test_set="test", protocol="honest", num_experts=4)]
    write_evaluated(BASE, BASE_ERRORS)
    run(exps)
    header = (workdir / "results/table.csv").read_text().splitlines()[0].split(",")
    assert header.count("test_set") == header.count("protocol") == header.count("num_experts") == 1
    assert {(r["test_set"], r["protocol"]) for r in read_table(workdir / "results/table.csv")} == {
        ("synth-en/test", "honest")}


def test_an_evaluation_variant_reports_the_training_it_shares(workdir):
    sharer = f"{BASE}_protocoloriginal"
    exps = [experiment(BASE, "linear"), replace(experiment(sharer, "linear"), trained_by=BASE,
                                                train_config=experiment(BASE, "linear").train_config)]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(sharer, BASE_ERRORS)
    shutil.rmtree(workdir / "results" / sharer / "train")  # it has no training of its own
    run(exps)
    rows = {r["experiment"]: r for r in read_table(workdir / "results/table.csv") if r["metric"] == "wer"}
    assert rows[sharer]["status"] == "ok" and rows[sharer]["train_steps"] == rows[BASE]["train_steps"] == "40"


def test_comparison_matches_by_id_not_order(workdir):
    exps = [experiment(BASE, "linear", group="g", baseline=True), experiment(SAME, "layer_wise", group="g")]
    ids = [f"utt{i:03d}" for i in range(N)]
    write_evaluated(BASE, BASE_ERRORS, ids=ids)
    # the same system, its predictions written in reverse order
    write_evaluated(SAME, BASE_ERRORS[::-1], units=UNITS[::-1], ids=ids[::-1])
    run(exps)
    (row,) = read_table(workdir / "results/comparisons.csv")
    assert row["status"] == "ok" and float(row["delta"]) == 0 and float(row["p_value"]) == 1.0


def _without_timing(text):
    rows = list(csv.reader(io.StringIO(text)))
    drop = [rows[0].index(c) for c in TIMING_COLUMNS]
    return [[v for i, v in enumerate(row) if i not in drop] for row in rows]


def test_identical_inputs_give_identical_tables(tmp_path, monkeypatch):
    tables = []
    for name, seconds in (("a", 100.0), ("b", 250.0)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        run(build_matrix(seconds=seconds, eval_seconds=seconds / 5))
        tables.append(((tmp_path / name / "results/table.csv").read_text(),
                       (tmp_path / name / "results/comparisons.csv").read_text()))
    assert tables[0][0] != tables[1][0]  # the timing columns differ ...
    assert _without_timing(tables[0][0]) == _without_timing(tables[1][0])  # ... and nothing else
    assert tables[0][1] == tables[1][1]
    # aggregating the same folder again is byte-identical
    run(build_matrix(seconds=250.0, eval_seconds=50.0))
    assert (tmp_path / "b/results/table.csv").read_text() == tables[1][0]


def test_failure_midway_leaves_the_old_outputs(workdir, monkeypatch):
    exps = build_matrix()
    run(exps)
    table = (workdir / "results/table.csv").read_bytes()
    comparisons = (workdir / "results/comparisons.csv").read_bytes()
    write_evaluated(NOT_RUN, BETTER_ERRORS)  # a new result arrives ...

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(agg, "plot_training_curves", broken)  # ... but the aggregation fails half-way
    with pytest.raises(RuntimeError):
        run(exps)
    assert (workdir / "results/table.csv").read_bytes() == table
    assert (workdir / "results/comparisons.csv").read_bytes() == comparisons
    assert not list((workdir / "results").glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    run(exps)
    assert (workdir / "results/table.csv").read_bytes() != table


def test_plots_are_pngs(workdir):
    run(build_matrix())
    for name in ("metrics.png", "steering_gates.png", "training_curves.png"):
        data = (workdir / "results/plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name


def test_plots_without_results(workdir):
    """An empty or all-failed matrix still gives every output (the aggregate rule declares them)."""
    run([experiment(NOT_RUN, "layer_wise")])
    rows = read_table(workdir / "results/table.csv")
    assert [(r["experiment"], r["status"]) for r in rows] == [(NOT_RUN, "not run")]
    assert read_table(workdir / "results/comparisons.csv") == []
    for name in ("metrics.png", "steering_gates.png", "training_curves.png"):
        assert (workdir / "results/plots" / name).read_bytes().startswith(b"\x89PNG")


def test_qa_rows_and_comparison(workdir):
    exps = [experiment("linear_tiny_smol_aqa", "linear", group="qa", baseline=True, metric="qa_accuracy",
                       dataset="synth-aqa"),
            experiment("layer_wise_tiny_smol_aqa", "layer_wise", group="qa", metric="qa_accuracy",
                       dataset="synth-aqa")]
    for exp_id, correct in (("linear_tiny_smol_aqa", [i % 2 == 0 for i in range(80)]),
                            ("layer_wise_tiny_smol_aqa", [i % 10 != 0 for i in range(80)])):
        write_evaluated(exp_id, [int(not c) for c in correct], units=[1] * 80, steering=False)
        path = workdir / "results" / exp_id / "eval" / "metrics.json"
        acc = sum(correct) / 80
        path.write_text(json.dumps({
            **{k: v for k, v in json.loads(path.read_text()).items() if k != "raw"},
            "metric": "qa_accuracy", "value": acc, "ci95": [acc - 0.1, acc + 0.1], "correct": sum(correct),
            "yes_no": {"value": 0.5, "ci95": [0.3, 0.7], "correct": 10, "utterances": 20, "reference_units": 20},
            "lenient_substring": {"value": acc + 0.05, "ci95": [acc - 0.05, acc + 0.15], "correct": sum(correct) + 4,
                                  "utterances": 80, "reference_units": 80}}))
    run(exps)
    rows = read_table(workdir / "results/table.csv")
    metric_rows = ["qa_accuracy", "qa_yes_no", "qa_any_annotator", "qa_lenient_substring"]
    assert [r["metric"] for r in rows] == metric_rows * 2
    assert "majority" in rows[0]["note"] and "not an accuracy" in rows[2]["note"]
    lenient = rows[3]
    assert "lenient" in lenient["note"] and "not an accuracy" in lenient["note"]
    assert rows[0]["value"] == "0.500000" and rows[0]["correct"] == "40" and rows[0]["reference_units"] == "80"
    assert rows[1]["utterances"] == "20" and rows[1]["reference_units"] == "20"
    (comparison,) = read_table(workdir / "results/comparisons.csv")
    # accuracy rises from 0.5 to 0.9: delta is in accuracy units (positive = better)
    assert comparison["metric"] == "qa_accuracy"
    assert float(comparison["baseline_value"]) == pytest.approx(0.5)
    assert float(comparison["delta"]) == pytest.approx(0.4) and float(comparison["ci_low"]) > 0
    assert comparison["significant"] == "true"
    assert (comparison["direction"], comparison["verdict"]) == ("higher is better", "better")


def test_malformed_and_stale_results(workdir):
    exps = [experiment(BASE, "linear"), experiment(BETTER, "layer_wise")]
    write_evaluated(BASE, BASE_ERRORS)
    write_evaluated(BETTER, BETTER_ERRORS)
    (workdir / "results" / BASE / "eval" / "metrics.json").write_text('{"metric": "wer", "value": 0.1,')
    with open(workdir / "results" / BETTER / f"{BETTER}_test.yaml", "a") as handle:
        handle.write("seed: 1\n")  # the rendered test config changed after evaluation
    run(exps)
    rows = {r["experiment"]: r for r in read_table(workdir / "results/table.csv")}
    assert rows[BASE]["status"] == "invalid results"
    assert rows[BASE]["error"].startswith(f"results/{BASE}/eval/metrics.json: not valid JSON")
    assert rows[BETTER]["status"] == "stale" and "changed since evaluation" in rows[BETTER]["error"]


def test_metrics_in_an_older_vocabulary_are_named_invalid_not_read(workdir):
    """One record vocabulary: a metrics.json with exact_match / reference_words (an older steermoe's names) is not
    mapped back; the row says what changed and how to get new results."""
    exps = [experiment(BASE, "linear")]
    write_evaluated(BASE, BASE_ERRORS)
    path = workdir / "results" / BASE / "eval" / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "reference_words": metrics.pop("reference_units")}))
    run(exps)
    (row,) = read_table(workdir / "results/table.csv")
    assert row["status"] == "invalid results" and row["value"] == ""
    assert row["error"] == (f"results/{BASE}/eval/metrics.json: written by an older steermoe (reference_words is now "
                            f"reference_units); evaluate again (remove results/{BASE}/eval and re-run the workflow)")


def test_metrics_of_the_protocol_once_called_seed_are_named_invalid_not_read(workdir):
    exps = [experiment(BASE, "linear")]
    write_evaluated(BASE, BASE_ERRORS)
    path = workdir / "results" / BASE / "eval" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "protocol": "seed"}))
    run(exps)
    (row,) = read_table(workdir / "results/table.csv")
    assert row["status"] == "invalid results"
    assert row["error"] == (f"results/{BASE}/eval/metrics.json: written by an older steermoe (protocol seed is now "
                            f"original); evaluate again (remove results/{BASE}/eval and re-run the workflow)")


def test_trained_but_not_evaluated_is_not_run(workdir):
    write_trained(BETTER)
    result = collect(experiment(BETTER, "layer_wise"), agg.Path("results"), agg.Path("logs"))
    assert result.status == "not run" and result.error == "trained; not evaluated yet"


def test_log_error(tmp_path):
    log = tmp_path / "x.log"
    assert log_error(log) is None
    log.write_text("")
    assert log_error(log) == "the log is empty"
    log.write_text("step 1\nKilled\n")
    assert log_error(log) == "Killed"
    # a chained traceback: the last exception line wins
    log.write_text("Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'x'\n\nDuring handling of "
                   "the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File "
                   "\"b\", line 2\n    g()\nValueError: bad value\n  in context\n")
    assert log_error(log) == "ValueError: bad value"
    log.write_text("steermoe: error: data/x: no such split\nshutting down\n")
    assert log_error(log) == "data/x: no such split"


def test_duplicate_ids_are_refused(workdir):
    with pytest.raises(agg.DataError, match="unique"):
        run([experiment(BASE, "linear"), experiment(BASE, "linear")])


def test_aggregate_cli_with_the_matrix(workdir, monkeypatch, capsys):
    from steermoe.cli import main
    from steermoe.declare.matrix import load_matrix

    (workdir / "catalog.yaml").write_text("""
encoders:
  tiny: {type: whisper, path: models/tiny}
decoders:
  smol: {path: models/smol}
datasets:
  synth-en: {synth: synth-en, metric: wer, prompt: "transcribe: "}
""")
    (workdir / "matrix.tsv").write_text(
        "method\tencoder\tdecoder\tdataset\tnum_experts\tencoder_window\tgroup\tbaseline\ttags\n"
        "linear\ttiny\tsmol\tsynth-en\t\t\tg\ttrue\t\n"
        "layer_wise\ttiny\tsmol\tsynth-en\t4\t\tg\tfalse\tmain,paper\n")
    exps = load_matrix("matrix.tsv", "catalog.yaml")
    monkeypatch.setattr(agg, "git_commit", lambda root=None: "feedbeef")
    for exp in exps:
        monkeypatch.setitem(CONFIG_PATHS, exp.id, (agg.Path(exp.train_config), agg.Path(exp.test_config)))
    write_evaluated(exps[0].id, BASE_ERRORS, steering=False)
    write_evaluated(exps[1].id, BETTER_ERRORS)
    assert main(["aggregate", "--matrix", "matrix.tsv", "--catalog", "catalog.yaml", "--resamples", "300"]) == 0
    rows = read_table(workdir / "results/table.csv")
    assert [(r["experiment"], r["metric"], r["status"]) for r in rows] == [
        ("linear_tiny_smol_synth-en", "wer", "ok"), ("linear_tiny_smol_synth-en", "wer_raw", "ok"),
        ("layer_wise_tiny_smol_synth-en_experts4", "wer", "ok"),
        ("layer_wise_tiny_smol_synth-en_experts4", "wer_raw", "ok")]
    assert rows[2]["tags"] == "main,paper" and rows[2]["num_experts"] == "4" and rows[2]["git_commit"] == "feedbeef"
    assert rows[2]["encoder_window"] == ""  # every override column of the matrix is a table column, even empty
    assert rows[2]["test_set"] == "synth-en/test"
    (comparison,) = read_table(workdir / "results/comparisons.csv")
    assert comparison["significant"] == "true" and comparison["resamples"] == "300"
    assert "layer_wise_tiny_smol_synth-en_experts4 vs linear_tiny_smol_synth-en" in capsys.readouterr().out


def test_upstream_failures_explain_why_training_never_ran(workdir):
    data_failed = replace(experiment(BETTER, "layer_wise"), data_dir="data/synth-en")
    render_failed = experiment(SAME, "layer_wise")  # the train job writes its config first, into the train log
    write_log("data", "synth-en", "building...\nsteermoe: error: espeak-ng is not installed\n")
    write_log(SAME, "train", "steermoe: error: results/x_train.yaml: rendered 0a1b..., but the workflow planned "
                             "2c3d...\n")
    not_run = replace(experiment(NOT_RUN, "layer_wise", dataset="synth-zh"), data_dir="data/synth-zh")
    run([data_failed, render_failed, not_run])
    rows = {r["experiment"]: r for r in read_table(workdir / "results/table.csv")}
    assert (rows[BETTER]["status"], rows[BETTER]["error"]) == ("failed at data preparation",
                                                               "espeak-ng is not installed")
    assert rows[BETTER]["log"] == "logs/data/synth-en.log"
    assert rows[SAME]["status"] == "failed at train" and "the workflow planned" in rows[SAME]["error"]
    assert rows[NOT_RUN]["status"] == "not run"  # its data has no log: it has simply not run yet


def test_retraining_that_failed_hides_the_old_metrics(workdir):
    write_evaluated(BETTER, BETTER_ERRORS)
    # the train config changed: Snakemake removed final/ and re-ran training, which failed; eval/ is left over
    shutil.rmtree(workdir / "results" / BETTER / "train" / "final")
    write_log(BETTER, "train", "steermoe: error: training loss is NaN at step 12\n")
    row = collect(experiment(BETTER, "layer_wise"), agg.Path("results"), agg.Path("logs"))
    assert row.status == "failed at train" and row.error.startswith("training loss is NaN at step 12")
    assert "from an earlier model" in row.error and row.metrics is None
    # final/ gone without a failed training: stale, not ok
    (workdir / "logs" / BETTER / "train.log").unlink()
    row = collect(experiment(BETTER, "layer_wise"), agg.Path("results"), agg.Path("logs"))
    assert row.status == "stale" and "final is missing" in row.error


def test_replicate_sets_get_a_summary_row_and_are_compared_as_sets_paired_by_seed(workdir):
    from steermoe.report.seeds import paired, summarise

    sets = {"linear_r": (BASE_ERRORS, True), "layer_wise_r": (BETTER_ERRORS, False)}
    exps, runs = [], {}
    for name, (errors, baseline) in sets.items():
        runs[name] = []
        for seed in (0, 1, 2):
            exp_id = f"{name}_seed{seed}"
            seeded = [e + (i + seed) % 2 for i, e in enumerate(errors)]  # each seed errs a little differently
            write_evaluated(exp_id, seeded)
            runs[name].append([{"errors": e, "reference_units": u} for e, u in zip(seeded, UNITS)])
            exps.append(replace(experiment(exp_id, name.split("_r")[0], group="g", baseline=baseline, seed=seed),
                                replicate_of=name))
    run(exps)
    rows = [r for r in read_table(workdir / "results/table.csv") if r["headline"] == "true"]
    assert [r["experiment"] for r in rows] == [f"linear_r_seed{s}" for s in range(3)] + ["linear_r"] + \
        [f"layer_wise_r_seed{s}" for s in range(3)] + ["layer_wise_r"]
    summary = next(r for r in rows if r["experiment"] == "layer_wise_r")
    expected = summarise(runs["layer_wise_r"], resamples=400)
    assert summary["seeds"] == "0,1,2" and summary["status"] == "ok"
    assert float(summary["value"]) == pytest.approx(expected["mean"], abs=1e-6)
    assert float(summary["std"]) == pytest.approx(expected["std"], abs=1e-6)
    assert [float(summary["ci_low"]), float(summary["ci_high"])] == pytest.approx(expected["ci95"], abs=1e-6)
    assert rows[0]["replicate_of"] == "linear_r" and rows[0]["seed"] == "0"
    comparisons = read_table(workdir / "results/comparisons.csv")
    assert [(c["experiment"], c["baseline"], c["seeds"]) for c in comparisons] == [("layer_wise_r", "linear_r", "3")]
    expected = paired(runs["linear_r"], runs["layer_wise_r"], resamples=400)
    assert float(comparisons[0]["delta"]) == pytest.approx(expected["delta"], abs=1e-6)
    assert [float(comparisons[0]["ci_low"]), float(comparisons[0]["ci_high"])] == \
        pytest.approx(expected["ci95"], abs=1e-6)
    assert comparisons[0]["verdict"] == "better"
    # the verdict of replicate sets comes from the crossed bootstrap, and says so; each seed's own row does not
    assert comparisons[0]["interval_covers"] == summary["interval_covers"] == \
        "seeds x test utterances (3 trainings per row)"
    assert rows[0]["interval_covers"].startswith("test utterances only")


def test_a_replicate_set_with_a_missing_seed_says_so_and_is_not_compared(workdir):
    exps = []
    for name, baseline in (("linear_r", True), ("layer_wise_r", False)):
        for seed in (0, 1):
            exp_id = f"{name}_seed{seed}"
            if (name, seed) != ("layer_wise_r", 1):
                write_evaluated(exp_id, BASE_ERRORS)
            exps.append(replace(experiment(exp_id, name.split("_r")[0], group="g", baseline=baseline, seed=seed),
                                replicate_of=name))
    run(exps)
    summary = next(r for r in read_table(workdir / "results/table.csv") if r["experiment"] == "layer_wise_r")
    assert summary["status"] == "incomplete" and "1 of 2 seeds not ok: layer_wise_r_seed1" in summary["error"]
    comparison = read_table(workdir / "results/comparisons.csv")[0]
    assert comparison["status"] == "not available" and "layer_wise_r_seed1" in comparison["error"]


def test_the_logged_summary_keeps_a_column_gap_after_the_longest_experiment_id():
    from steermoe.report.tables import summary_text

    ids = ["short", "layer_wise_whisper-tiny.en_smollm2_synth-en_on-test-unseen"]
    table = [{"experiment": i, "headline": True, "metric": "wer", "value": 0.25, "ci_low": 0.2, "ci_high": 0.3,
              "status": "ok", "error": ""} for i in ids]
    lines = summary_text(table, []).splitlines()
    assert {line.index("wer") for line in lines[1:]} == {lines[0].index("metric")}
    assert lines[2].startswith(ids[1] + "  ")
