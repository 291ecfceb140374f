"""The Snakemake workflow: validation before any job, the dry-run DAG, re-run semantics, lint, rendering.

Fast tests run Snakemake on a copy of the workflow with a stand-in `steermoe` (tests/workflow_stub.py: the real
`render`, stub outputs for everything else), so the DAG and its re-run triggers are exercised without training.
The slow test runs the real thing on tiny random models and a tone corpus, through to results/table.csv.
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from steermoe.declare.catalog import load_catalog
from steermoe.declare.matrix import auto_variant, load_matrix
from steermoe.declare.render import environment, render, render_all
from steermoe.declare.runconfig import load_run_config, parse_run_config
from steermoe.declare.settings import SETTINGS
from steermoe.errors import ConfigError
from steermoe.report.plan import estimated_host_memory

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
WORKFLOW = ["Snakefile", "workflow", "templates", "profiles", "experiments"]
LAYER_WISE, LINEAR, AQA = ("layer_wise_whisper-tiny.en_smollm2_synth-en", "linear_whisper-tiny.en_smollm2_synth-en",
                           "layer_wise_whisper-tiny.en_smollm2_synth-aqa")
REFERENCE = "reference_whisper-tiny.en_own_synth-en"
UNSEEN, OOD = "_on-test-unseen", "_on-test-ood"  # the id suffixes of synth-en's second and third test sets
TRAINED_IDS = [LAYER_WISE, LINEAR]
DEFAULT_IDS = [exp + on for exp in (LAYER_WISE, LINEAR, REFERENCE) for on in ("", UNSEEN, OOD)]
AGG = ("aggregate", "results/table.csv")  # the matrix and catalog are its inputs: any edit refreshes the table
PLAN = ("plan", "results/plan.csv")  # likewise the cost plan (a dry run shows its message, not its output)
HEADER = "method\tencoder\tdecoder\tdataset\tnum_experts\tencoder_window\tmax_steps\tgroup\tbaseline\n"


# ---- helpers -------------------------------------------------------------------------------------------------
def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy2(source, dest / name)
    return dest


def stub_bin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "steermoe"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'workflow_stub.py'} \"$@\"\n")
    script.chmod(0o755)
    return folder


def snakemake(root: Path, *args, stub: bool = True, env: dict | None = None, check: bool = True, timeout=600):
    """Run snakemake in `root` (its profiles/default applies); with stub, `steermoe` is the stand-in."""
    path = [str(VENV_BIN), os.environ.get("PATH", "")]
    if stub:
        path.insert(0, str(stub_bin(root.parent / f"{root.name}-bin")))
    full_env = {**os.environ, "PATH": os.pathsep.join(path), "STEERMOE_STUB_LOG": str(root / "stub_calls.jsonl"),
                "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--cores", "2", *args], cwd=root, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


# a job of a group (the evaluations of one model) is printed indented under its group; a checkpoint job as such
JOB = re.compile(r"^( *)(?:local)?(?:rule|checkpoint) (\w+):\n(?:\1    .*\n)*?\1    output: (.*)$", re.M)


def planned(root: Path, *args) -> set[tuple[str, str]]:
    """The jobs a dry run plans, as (rule, what): the experiment id, dataset or model a job is for (rule `all`,
    which has no output, is left out)."""
    out = snakemake(root, "-n", *args).stdout
    if "Nothing to be done" in out:
        return set()
    jobs = set()
    for _, rule, outputs in JOB.findall(out):
        first = outputs.split(", ")[0]
        parts = Path(first).parts
        what = parts[1] if parts[0] in ("results", "data", "models") and len(parts) > 2 else first
        jobs.add((rule, what))
    return jobs


def on_other_test_sets(exp_id: str) -> list[str]:
    """The ids of a synth-en experiment scored on synth-en's second and third test sets."""
    return [exp_id + (on if exp_id.endswith("_synth-en") else on.replace("_", "-")) for on in (UNSEEN, OOD)]


def experiment_jobs(exp_id: str) -> set[tuple[str, str]]:
    """A trained experiment's jobs: its training, and its evaluation on each test set of its dataset."""
    evaluated = [exp_id, *on_other_test_sets(exp_id)] if "_synth-en" in exp_id else [exp_id]
    return {("train", exp_id)} | {("evaluate", e) for e in evaluated}


def on_first_test_set(experiments: list) -> list:
    """One experiment per row: those scored on their dataset's first test set (synth-en has two)."""
    return [exp for exp in experiments if exp.test_set == next(iter(exp.dataset_entry["test_sets"]))]


def write_matrix(root: Path, *rows: str, header: str = HEADER) -> Path:
    path = root / "experiments" / "matrix.tsv"
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """The default matrix, run to completion with the stand-in `steermoe`."""
    root = copy_workflow(tmp_path_factory.mktemp("completed") / "wf")
    snakemake(root)
    assert (root / "results" / "table.csv").is_file()
    return root


@pytest.fixture
def done(completed, tmp_path) -> Path:
    """A private copy of the completed workflow (file times and Snakemake's metadata kept)."""
    root = tmp_path / "wf"
    shutil.copytree(completed, root, symlinks=True)
    (root / "stub_calls.jsonl").unlink(missing_ok=True)
    return root


def calls(root: Path) -> list[tuple[str, str]]:
    log = root / "stub_calls.jsonl"
    if not log.is_file():
        return []
    return [(c["command"], c["target"]) for c in map(json.loads, log.read_text().splitlines())]


# ---- the default matrix --------------------------------------------------------------------------------------
def test_default_matrix_validates_and_dry_runs(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    jobs = planned(root)
    expected = {("import_model", "whisper-tiny.en"), ("import_model", "smollm2-135m-instruct"),
                ("prepare_data", "synth-en"),
                ("prepare_test_set", "synth-en@test-unseen"), ("prepare_test_set", "synth-en@test-ood"),
                AGG, *(("evaluate", REFERENCE + on) for on in ("", UNSEEN, OOD))} | \
        set().union(*map(experiment_jobs, TRAINED_IDS))
    assert jobs == expected
    experiments = load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")
    assert [e.id for e in experiments] == DEFAULT_IDS
    base = experiments[3]
    assert base.group == "synth-en" and base.baseline and experiments[0].group == "synth-en"
    assert [e.metric for e in experiments] == ["wer"] * 9
    assert base.train_config == f"results/{base.id}/linear_whisper-tiny.en_smollm2_synth-en_train.yaml"


def test_data_preparation_uses_the_cores_it_is_given(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    for cores in ("1", "4"):  # capped at --cores, and more than 2 where a machine has more
        out = snakemake(root, "-n", "-p", "--cores", cores).stdout
        workers = re.findall(r"^Shell command: steermoe data synth (\S+) .* --workers (\d+) ", out, re.M)
        assert sorted(workers) == [("synth-en", cores)] * 3, out[-3000:]


def test_original_matrix_validates_and_plans_the_deepspeed_launch(tmp_path):
    """The original code's table: only paths to set. 7B decoders train on 4 GPUs via the DeepSpeed launcher."""
    root = copy_workflow(tmp_path / "wf")
    shutil.copy(root / "experiments/matrix-original.tsv", root / "experiments/matrix.tsv")
    experiments = load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")
    assert len(experiments) >= 9
    out = snakemake(root, "-n", "-p", "--resources", "gpu=8", "--cores", "16").stdout  # a 16-core GPU node
    qwen7b = next(e for e in experiments if e.decoder == "qwen7b" and e.method == "layer_wise")
    assert qwen7b.port == 20000 + zlib.crc32(qwen7b.id.encode()) % 20000
    # the job's 16 threads, shared out by launch among its 4 processes
    assert re.search(rf"steermoe launch --gpus 4 --threads 16 --port {qwen7b.port} -- +steermoe train --config "
                     rf"{re.escape(qwen7b.train_config)}", out)
    qwen3b = next(e for e in experiments if e.decoder == "qwen3b")
    assert f"steermoe launch --gpus 1 --threads 8 --port {qwen3b.port} --" in out
    for exp in experiments:  # every rendered config is valid, on the placeholder paths
        assert "/path/to/" in render(exp, root / "templates", "train")


def test_snakefile_never_imports_torch(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "--cores", "1", "-n"], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "steermoe.declare.matrix" in imported and "steermoe.declare.render" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "deepspeed")}


def test_lint_reports_nothing(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    proc = snakemake(root, "--lint")
    out = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in out, out
    assert "Lints for" not in out


# ---- validation before any job -------------------------------------------------------------------------------
ROW = "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\tsynth-en\tfalse"
BASE = "linear\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\tsynth-en\ttrue"
BAD_ROWS = {
    "own decoder": ("linear\twhisper-tiny.en\town\tsynth-en\t\t\t\t\t",
                    r"row 3 \(line 4\), column 'decoder': 'own' with method 'linear': a 'reference' row decodes "
                    r"with the encoder's own model, so its decoder is 'own', and only a 'reference' row has decoder"),
    "reference decoder": ("reference\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\t\t",
                          r"row 3 \(line 4\), column 'decoder': 'smollm2' with method 'reference'"),
    "reference conformer": ("reference\tconformer\town\tsynth-en\t\t\t\t\t",
                            r"row 3 \(line 4\), column 'encoder': a 'reference' row decodes with the encoder's own "
                            r"model; that is wired for Whisper encoders only, and 'conformer' is a conformer"),
    "method": ("layer-wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\t\t",
               r"row 3 \(line 4\), column 'method': unknown method 'layer-wise' \(did you mean 'layer_wise'\?\); "
               r"allowed: layer_wise, linear, post_encoder, lora"),
    "encoder": ("linear\twhisper-tiny\tsmollm2\tsynth-en\t\t\t\t\t",
                r"row 3 \(line 4\), column 'encoder': unknown encoder \(not in .*catalog.yaml\) 'whisper-tiny' "
                r"\(did you mean 'whisper-tiny.en'\?\); allowed: whisper-tiny.en, whisper-base, whisper-large-v3, "
                r"conformer"),
    "decoder": ("linear\twhisper-tiny.en\tqwen\tsynth-en\t\t\t\t\t",
                r"row 3 \(line 4\), column 'decoder': unknown decoder .*'qwen'.*allowed: smollm2, qwen3b, qwen7b, "
                r"llama7b"),
    "dataset": ("linear\twhisper-tiny.en\tsmollm2\tlibrispeech\t\t\t\t\t",
                r"row 3 \(line 4\), column 'dataset': unknown dataset .*'librispeech'.*allowed: synth-en, synth-aqa"),
    "duplicate": (ROW.replace("synth-en\tfalse", "\tfalse"),
                  r"row 3 \(line 4\): duplicate of row 1 \(line 2\): both are experiment "
                  r"'layer_wise_whisper-tiny.en_smollm2_synth-en'"),
    "int override": ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\tmany\t\t\t\t",
                     r"row 3 \(line 4\), column 'num_experts': 'many' is not an integer"),
    "range override": ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t0\t\t\t\t",
                       r"row 3 \(line 4\), column 'num_experts': must be greater than 0, got 0"),
    "choice override": ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t40s\t\t\t",
                        r"row 3 \(line 4\), column 'encoder_window': '40s' is not one of 30s, dynamic"),
    "empty cell": ("layer_wise\t\tsmollm2\tsynth-en\t\t\t\t\t",
                   r"row 3 \(line 4\), column 'encoder': empty; allowed: whisper-tiny.en"),
    "baseline": ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t\t\tsynth-en\tmaybe",
                 r"row 3 \(line 4\), column 'baseline': 'maybe' is not true or false"),
    "two baselines": ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t\t\tsynth-en\ttrue",
                      r"group 'synth-en' has 2 baseline rows \(row 2 \(line 3\), row 3 \(line 4\)\)"),
    "group across datasets": ("layer_wise\twhisper-tiny.en\tsmollm2\tsynth-aqa\t\t\t\tsynth-en\tfalse",
                              r"row 3 \(line 4\), column 'dataset': group 'synth-en' compares on the test set of "
                              r"its baseline"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_are_reported_by_row_and_column(tmp_path, case):
    root = copy_workflow(tmp_path / "wf")
    row, message = BAD_ROWS[case]
    matrix = write_matrix(root, ROW, BASE, row)
    with pytest.raises(ConfigError, match=message) as err:
        load_matrix(matrix, root / "experiments/catalog.yaml")
    assert str(err.value).startswith(f"{matrix}: ")  # the file first


def test_unsafe_ids_and_columns_are_rejected(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    catalog = root / "experiments/catalog.yaml"
    header = "method\tencoder\tdecoder\tdataset\tvariant\n"
    for variant, reason in (("../../etc", "is not allowed"), ("a/b", "is not allowed"), ("a_b", "no '_'"),
                            ("test", "not one of train, test, eval"), ("x..y", "'..'")):
        matrix = write_matrix(root, f"linear\twhisper-tiny.en\tsmollm2\tsynth-en\t{variant}", header=header)
        with pytest.raises(ConfigError, match=rf"row 1 \(line 2\), column 'variant': .*{re.escape(reason)}"):
            load_matrix(matrix, catalog)
    matrix = write_matrix(root, "linear\twhisper-tiny.en\tsmollm2\tsynth-en\t2",
                          header="method\tencoder\tdecoder\tdataset\tnum_expert\n")
    with pytest.raises(ConfigError, match=r"unknown column 'num_expert' in the header \(line 1\) \(did you mean "
                                          r"'num_experts'\?\); allowed columns: method, encoder"):
        load_matrix(matrix, catalog)
    bad = yaml.safe_load(catalog.read_text())
    bad["encoders"]["whisper_tiny"] = bad["encoders"].pop("whisper-base")
    catalog.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"encoders name 'whisper_tiny' is not allowed"):
        load_catalog(catalog)


def test_bad_row_stops_snakemake_before_any_job(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    write_matrix(root, ROW, BASE, BAD_ROWS["encoder"][0])
    proc = snakemake(root, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert re.search(r"experiments/matrix.tsv: row 3 \(line 4\), column 'encoder': unknown encoder", output), output
    assert "allowed: whisper-tiny.en, whisper-base, whisper-large-v3, conformer" in output
    assert not calls(root) and not (root / "results").exists() and not (root / "data").exists()
    # a catalog error names the key
    write_matrix(root, ROW, BASE)
    catalog = yaml.safe_load((root / "experiments/catalog.yaml").read_text())
    settings = catalog["datasets"]["synth-en"]["settings"]  # shared with other datasets through a YAML anchor
    catalog["datasets"]["synth-en"]["settings"] = {**settings, "batch_size": "eight"}
    (root / "experiments/catalog.yaml").write_text(yaml.safe_dump(catalog, allow_unicode=True))
    proc = snakemake(root, check=False)
    assert "datasets.synth-en.settings.batch_size: must be an integer, got 'eight'" in proc.stdout + proc.stderr
    # a description that is not text is named with the file and the key too
    catalog["datasets"]["synth-en"]["settings"] = settings
    catalog["encoders"]["whisper-tiny.en"]["description"] = 5
    (root / "experiments/catalog.yaml").write_text(yaml.safe_dump(catalog, allow_unicode=True))
    proc = snakemake(root, "-n", check=False)
    assert ("experiments/catalog.yaml: encoders.whisper-tiny.en.description: must be a non-empty string, got 5"
            in proc.stdout + proc.stderr)


def _other_value(key):
    """A valid value of a settings-table key that is not its default."""
    if key.choices:
        return next(c for c in key.choices if c != key.default)
    if key.type is bool:
        return not key.default
    if key.type is int:
        return (key.default or 0) + 3
    if key.type is float:
        return (key.default or 0.0) + 0.25
    return "other.json" if key.setting == "deepspeed_config" else "other: "


def test_every_setting_of_the_table_reaches_the_rendered_configs_with_its_value():
    """The table in steermoe.declare.settings is the only declaration of a setting: set to a value other than its
    default, each one arrives in the config the engine reads (the evaluation-only ones in the test config only)."""
    base = load_matrix(REPO / "experiments/matrix.tsv", REPO / "experiments/catalog.yaml")[0]
    for name, key in SETTINGS.items():
        exp = copy.deepcopy(base)
        if key.section == "lora":  # only a LoRA experiment's configs have the lora section
            exp.method = "lora"
            exp.train_config, exp.test_config = (path.replace(f"/{base.method}_", "/lora_")
                                                 for path in (exp.train_config, exp.test_config))
        value = _other_value(key)
        exp.settings[name] = value
        for mode in ("train", "test"):
            path = exp.train_config if mode == "train" else exp.test_config
            config = parse_run_config(render(exp, REPO / "templates", mode).encode(), path)
            expected = key.default if (mode == "train" and key.evaluation_only) else value
            assert config.value(key) == expected, (name, mode)


def test_the_one_validator_rejects_bad_settings_in_the_catalog_and_the_matrix(tmp_path):
    catalog = yaml.safe_load((REPO / "experiments/catalog.yaml").read_text())
    catalog["decoders"]["smollm2"]["settings"] = {"num_experts": 0}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog, allow_unicode=True))
    message = r"catalog.yaml: decoders.smollm2.settings.num_experts: must be greater than 0"
    with pytest.raises(ConfigError, match=message):
        load_catalog(tmp_path / "catalog.yaml")
    row = "linear\twhisper-tiny.en\tsmollm2\tsynth-en"
    for header, cells, message in (
            ("num_expert", "4", r"unknown column 'num_expert' .*\(did you mean 'num_experts'\?\)"),
            ("encoder_window", "40s", r"row 1 \(line 2\), column 'encoder_window': '40s' is not one of 30s, dynamic"),
            ("variant", "test", r"column 'variant': 'test' is not allowed")):
        (tmp_path / "matrix.tsv").write_text(f"method\tencoder\tdecoder\tdataset\t{header}\n{row}\t{cells}\n")
        with pytest.raises(ConfigError, match=message):
            load_matrix(tmp_path / "matrix.tsv", REPO / "experiments/catalog.yaml")


def test_variants_and_ids():
    assert auto_variant({}) is None
    assert auto_variant({"encoder_window": "30s", "num_experts": 4, "max_steps": 50}) == "steps50-experts4-window30s"
    assert auto_variant({"steering_scale": 0.05, "use_layer_scales": False}) == "scale0.05-layerscalesoff"
    assert re.fullmatch(r"textprompt[0-9a-f]{8}", auto_variant({"textual_prompt": "say it: "}))


def test_overrides_reach_the_rendered_config_and_quick_wins(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    matrix = write_matrix(root, "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t30s\t50\t\t",
                          "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\t\t")
    catalog = root / "experiments/catalog.yaml"
    exp, plain = on_first_test_set(load_matrix(matrix, catalog))
    assert exp.id == "layer_wise_whisper-tiny.en_smollm2_synth-en_steps50-experts4-window30s"
    assert exp.overrides == {"num_experts": 4, "encoder_window": "30s", "max_steps": 50}
    assert exp.train_config.endswith("/layer_wise_whisper-tiny.en_smollm2_synth-en_train_steps50-experts4-window30s"
                                     ".yaml")
    text = render(exp, root / "templates", "train")
    path = tmp_path / Path(exp.train_config).name
    path.write_text(text)
    run = load_run_config(path)
    assert (run.steering.num_experts, run.top.encoder_window, run.training.max_steps) == (4, "30s", 50)
    assert run.mode == "train" and run.method == "layer_wise"
    assert run.decoder.dtype == "auto" and run.training.bf16 == "auto"  # catalog defaults: the precision policy
    assert run.training.learning_rate == 1e-2  # catalog: dataset
    assert load_run_config(path).training.max_steps == 50
    quick = load_matrix(matrix, catalog, quick=True)[0]
    assert quick.id == exp.id and quick.settings["max_steps"] == 2  # quick wins over the row (CI size)
    assert plain.settings["max_steps"] == 1120


def test_the_original_code_recipe_renders_exactly_what_the_original_code_ran(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    matrix = write_matrix(root, "layer_wise\twhisper-large-v3\tqwen7b\tlibri\toriginal-code",
                          "layer_wise\tconformer\tqwen7b\tlibri\toriginal-code",
                          "layer_wise\twhisper-large-v3\tqwen7b\tlibri\tpaper",
                          "layer_wise\twhisper-large-v3\tqwen7b\tlibri\t",
                          header="method\tencoder\tdecoder\tdataset\trecipe\n")
    whisper, conformer, paper, plain = on_first_test_set(load_matrix(matrix, root / "experiments/catalog.yaml"))
    assert (whisper.id, whisper.recipe) == ("layer_wise_whisper-large-v3_qwen7b_libri_original-code", "original-code")

    def rendered(exp):
        path = tmp_path / Path(exp.train_config).name
        path.write_text(render(exp, root / "templates", "train"))
        return load_run_config(path)

    common = {"lr_scheduler": "linear", "warmup_steps": 0, "fp16": True, "bf16": False, "dtype": "float32",
              "use_early_stopping": False, "clip_steering_gradients": False, "pooling_type": "max",
              "filter_dataset": False, "max_audio_length": 30.0, "batch_size": 8, "gradient_accumulation_steps": 1}
    for exp, rate, kernel, window in ((whisper, 5e-5, 4, "30s"), (conformer, 5e-4, 2, "dynamic")):
        run = rendered(exp)
        t, top = run.training, run.top
        seen = {"lr_scheduler": t.lr_scheduler, "warmup_steps": t.warmup_steps, "fp16": t.fp16, "bf16": t.bf16,
                "dtype": run.decoder.dtype, "use_early_stopping": top.use_early_stopping,
                "clip_steering_gradients": top.clip_steering_gradients, "pooling_type": top.pooling_type,
                "filter_dataset": top.filter_dataset, "max_audio_length": top.max_audio_length,
                "batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps}
        assert seen == common, exp.encoder
        assert (t.learning_rate, t.steering_learning_rate, t.router_learning_rate) == (rate, rate, rate)
        assert (top.pooling_kernel_size, top.encoder_window) == (kernel, window)
    # the paper recipe is the catalog's defaults: the same settings as a row without a recipe
    assert paper.settings == plain.settings and paper.id.endswith("_paper")
    assert rendered(paper).training.learning_rate == 1e-4 and rendered(paper).training.lr_scheduler == "cosine"


@pytest.mark.parametrize("column, cell, message", [
    ("recipe", "original-cod", "unknown recipe 'original-cod' (not in {catalog}) (did you mean 'original-code'?); "
                               "allowed: paper, original-code"),
    ("protocol", "seed", "'seed' is called 'original' now (the original code's evaluation): write protocol: original"),
])
def test_an_unknown_recipe_or_the_protocol_once_called_seed_is_a_clear_error(tmp_path, column, cell, message):
    root = copy_workflow(tmp_path / "wf")
    matrix = write_matrix(root, f"layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t{cell}",
                          header=f"method\tencoder\tdecoder\tdataset\t{column}\n")
    with pytest.raises(ConfigError) as err:
        load_matrix(matrix, root / "experiments/catalog.yaml")
    expected = message.format(catalog=root / "experiments/catalog.yaml")
    assert str(err.value) == f"{matrix}: row 1 (line 2), column '{column}': {expected}"


def test_rows_that_differ_only_in_evaluation_share_one_training(tmp_path):
    """An evaluation variant (another protocol, beam search) is scored on the same trained model, never retrained."""
    root = copy_workflow(tmp_path / "wf")
    header = "method\tencoder\tdecoder\tdataset\tprotocol\tnum_beams\tmax_steps\n"
    matrix = write_matrix(root, "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t",
                          "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\toriginal\t\t",
                          "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t4\t",
                          "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\toriginal\t\t50", header=header)
    everything = load_matrix(matrix, root / "experiments/catalog.yaml")
    honest, original, beams, other = on_first_test_set(everything)
    assert (original.id, original.trained_by) == (f"{honest.id}_protocoloriginal", honest.id)
    assert beams.trained_by == honest.id and other.trained_by is None  # max_steps changes training
    assert original.final_dir == honest.final_dir and original.train_config == honest.train_config
    test = yaml.safe_load(render(original, root / "templates", "test"))
    assert test["evaluation"]["checkpoint"] == honest.final_dir and test["evaluation"]["protocol"] == "original"
    jobs = planned(root)
    assert {what for rule, what in jobs if rule == "train"} == {honest.id, other.id}
    assert {what for rule, what in jobs if rule == "evaluate"} == {e.id for e in everything}  # each on 2 test sets


def test_every_row_is_scored_on_each_test_set_of_its_dataset_with_one_training(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    header = "method\tencoder\tdecoder\tdataset\ttest_set\tgroup\tbaseline\n"
    matrix = write_matrix(root, "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\tg\tfalse",
                          "linear\twhisper-tiny.en\tsmollm2\tsynth-en\t\tg\ttrue",
                          "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-aqa\t\t\t", header=header)
    experiments = load_matrix(matrix, root / "experiments/catalog.yaml")
    steer, steer_unseen, steer_ood, base, base_unseen, base_ood, aqa = experiments
    assert steer_unseen.id == f"{steer.id}_on-test-unseen" and steer_unseen.trained_by == steer.id
    assert steer_ood.id == f"{steer.id}_on-test-ood" and steer_ood.trained_by == steer.id
    assert [e.test_set for e in experiments] == ["test", "test-unseen", "test-ood"] * 2 + ["test"]
    assert base_unseen.group == "g" and base_unseen.baseline and base_unseen.trained_by == base.id
    test = yaml.safe_load(render(steer_unseen, root / "templates", "test"))
    assert test["parquet_dirs"] == ["data/synth-en@test-unseen/test-unseen.parquet"]
    assert test["evaluation"]["test_set"] == "test-unseen"
    assert test["evaluation"]["checkpoint"] == steer.final_dir
    assert test["evaluation"]["output_dir"] == f"results/{steer_unseen.id}/eval"
    assert yaml.safe_load(render(steer, root / "templates", "test"))["parquet_dirs"] == ["data/synth-en/test.parquet"]
    jobs = planned(root)
    assert {what for rule, what in jobs if rule == "train"} == {steer.id, base.id, aqa.id}
    assert {what for rule, what in jobs if rule == "evaluate"} == {e.id for e in experiments}


def test_a_test_set_cell_picks_one_test_set_and_an_unknown_one_is_named_with_the_allowed_ones(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    header = "method\tencoder\tdecoder\tdataset\ttest_set\n"
    matrix = write_matrix(root, "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\ttest-unseen",
                          "linear\twhisper-tiny.en\tsmollm2\tsynth-en\ttest", header=header)
    unseen, linear = load_matrix(matrix, root / "experiments/catalog.yaml")
    assert (unseen.id, unseen.test_set) == ("layer_wise_whisper-tiny.en_smollm2_synth-en_on-test-unseen",
                                            "test-unseen")
    assert (linear.id, linear.test_set) == ("linear_whisper-tiny.en_smollm2_synth-en", "test")  # the default
    write_matrix(root, "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\ttest-unseeen", header=header)
    with pytest.raises(ConfigError, match=r"row 1 \(line 2\), column 'test_set': 'test-unseeen' is not a test set "
                                          r"of dataset 'synth-en' \(did you mean 'test-unseen'\?\); its test sets .*: test, test-unseen"):
        load_matrix(matrix, root / "experiments/catalog.yaml")


@pytest.mark.parametrize("edit, message", [
    (("    test_sets: [test, test-unseen, test-ood]",
      "    test_sets: [test, test-unseen, test-ood]\n    splits: {train: train, test: test}"),
     r"datasets.synth-en.splits.test: give the test splits in one place: 'test_sets' lists them"),
    (("test: 200, test-unseen: 200, test-ood: 200}", "test: 200, test-ood: 200}"),
     r"datasets.synth-en.sizes: test split 'test-unseen' has no size"),
    (("    test_sets: [test, test-unseen, test-ood]", "    test_sets: [test, test]"),
     r"datasets.synth-en.test_sets: \['test', 'test'\] names a split twice"),
])
def test_bad_test_sets_in_the_catalog_are_clear_errors(tmp_path, edit, message):
    catalog = tmp_path / "catalog.yaml"
    text = (REPO / "experiments/catalog.yaml").read_text()
    assert edit[0] in text
    catalog.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_catalog(catalog)


def test_a_group_needs_its_baseline_on_every_test_set_it_is_scored_on(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    header = "method\tencoder\tdecoder\tdataset\ttest_set\tgroup\tbaseline\n"
    matrix = write_matrix(root, "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\tg\tfalse",
                          "linear\twhisper-tiny.en\tsmollm2\tsynth-en\ttest\tg\ttrue", header=header)
    with pytest.raises(ConfigError, match=r"group 'g' has no baseline row on test set 'test-unseen' \(row 1 "
                                          r"\(line 2\)\); .*scored on every test set its group uses"):
        load_matrix(matrix, root / "experiments/catalog.yaml")


def test_adding_a_test_set_prepares_only_it_and_runs_only_the_new_evaluations(tmp_path):
    """A synthetic corpus's later test sets are synthesised by jobs of their own: the training data stays as it was."""
    root = copy_workflow(tmp_path / "wf")
    catalog = root / "experiments/catalog.yaml"
    with_unseen = catalog.read_text()
    sizes, test_sets = "test: 200, test-unseen: 200, test-ood: 200}", "test_sets: [test, test-unseen, test-ood]"
    assert sizes in with_unseen and test_sets in with_unseen
    catalog.write_text(with_unseen.replace(sizes, "test: 200}").replace(test_sets, "test_sets: [test]"))
    snakemake(root)
    (root / "stub_calls.jsonl").unlink()
    catalog.write_text(with_unseen)
    new = {e.id for e in load_matrix(root / "experiments/matrix.tsv", catalog) if e.test_set != "test"}
    assert new == {e + on for e in (LAYER_WISE, LINEAR, REFERENCE) for on in (UNSEEN, OOD)}
    test_sets = {"synth-en@test-unseen", "synth-en@test-ood"}
    assert planned(root) == {("evaluate", e) for e in new} | {("prepare_test_set", t) for t in test_sets} | {AGG}
    snakemake(root)
    assert {call for call in calls(root) if call[0] != "plan"} == \
        {("evaluate", e) for e in new} | {("data synth", t) for t in test_sets} | {("aggregate", "results")}
    manifest = json.loads((root / "data/synth-en@test-unseen/manifest.json").read_text())
    assert manifest["argv"][manifest["argv"].index("--only") + 1] == "test-unseen"
    assert "test-unseen=200" in manifest["argv"]  # drawn apart from the other splits, so it needs their sizes


# ---- rendering -----------------------------------------------------------------------------------------------
def test_rendered_configs_load_and_are_deterministic(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    catalog = root / "experiments/catalog.yaml"
    for matrix in ("matrix.tsv", "matrix-original.tsv"):
        experiments = load_matrix(root / "experiments" / matrix, catalog)
        first, second = render_all(experiments, root / "templates"), render_all(experiments, root / "templates")
        assert first == second
        for exp in experiments:
            for mode, path in (("train", exp.train_config), ("test", exp.test_config))[2 - len(exp.configs):]:
                target = tmp_path / "rendered" / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(first[exp.id][mode])
                run = load_run_config(target)
                assert run.mode == ("train" if mode == "train" else "eval") and run.method == exp.method
                assert run.training.output_dir == exp.train_dir
                if mode == "test":
                    assert run.top.parquet_dirs == exp.parquet["test"] and run.evaluation.metric == exp.metric
                    assert str(run.eval_dir) == exp.eval_dir and str(run.checkpoint_dir) == exp.final_dir
                else:
                    assert run.top.parquet_dirs == exp.parquet["train"]
                    assert run.top.eval_parquet_dirs == exp.parquet["dev"]
    # the CLI writes the same bytes
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    subprocess.run([str(VENV_BIN / "steermoe"), "render"], cwd=root, check=True, env=env, capture_output=True)
    experiments = load_matrix(root / "experiments/matrix.tsv", catalog)
    texts = render_all(experiments, root / "templates")
    for exp in experiments:  # a training's config is its owner's, whichever experiments share it
        if exp.trains:
            assert (root / exp.train_config).read_text() == texts[exp.trained_by or exp.id]["train"]
        assert (root / exp.test_config).read_text() == texts[exp.id]["test"]


def test_template_sandbox_and_undefined_variables(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    exp = load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")[0]
    template = root / "templates" / "train.yaml.j2"
    original = template.read_text()
    cases = [
        ("# {{ ''.__class__.__mro__[1].__subclasses__() }}", r"train.yaml.j2, line \d+: blocked by the template "
         r"sandbox: access to attribute '__class__' of 'str' object is unsafe"),
        ("# {{ exp.__init__.__globals__ }}", r"train.yaml.j2, line \d+: blocked by the template sandbox"),
        ("learning_rate: {{ s.learning_rat }}", r"templates/train.yaml.j2, line \d+: undefined variable: .*"
                                                r"'learning_rat'"),
        ("{{ nothing }}", r"train.yaml.j2, line \d+: undefined variable: 'nothing' is undefined"),
        ("{% include '../../etc/passwd' %}", r"train.yaml.j2, line \d+: TemplateNotFound"),  # loader: templates/ only
    ]
    for line, message in cases:
        template.write_text(original + line + "\n")
        with pytest.raises(ConfigError, match=message):
            render(exp, root / "templates", "train")
    # a rendered config that the loader rejects names the experiment, its row and the key
    template.write_text(original.replace("evaluation:", "evaluaton:"))
    with pytest.raises(ConfigError, match=rf"experiment {exp.id} \(matrix row 1, line 6\): the config rendered from "
                                          rf".*train.yaml.j2 is invalid: .*unknown key 'evaluaton'"):
        render(exp, root / "templates", "train")
    assert environment(root / "templates").is_safe_attribute("", "__class__", "") is False


# ---- re-run semantics ----------------------------------------------------------------------------------------
def test_second_invocation_runs_nothing(done):
    assert planned(done) == set()
    snakemake(done)
    assert calls(done) == []


def test_adding_a_row_adds_exactly_its_jobs(done, tmp_path):
    matrix = done / "experiments" / "matrix.tsv"
    matrix.write_text(matrix.read_text() + "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t4\t\t\t\t\n")
    new = "layer_wise_whisper-tiny.en_smollm2_synth-en_experts4"
    assert planned(done) == experiment_jobs(new) | {AGG}
    # from scratch, too: the plan grows by exactly the new experiment's jobs
    fresh = copy_workflow(tmp_path / "fresh")
    before = planned(fresh)
    shutil.copy(matrix, fresh / "experiments" / "matrix.tsv")
    assert planned(fresh) == before | experiment_jobs(new)
    snakemake(done)
    assert sorted(calls(done)) == sorted([*experiment_jobs(new), ("aggregate", "results"), PLAN])


def test_template_edit_reruns_only_the_experiments_whose_config_changed(done):
    template = done / "templates" / "test.yaml.j2"
    original = template.read_text()
    template.write_text(original + "{# a template comment renders nothing #}\n")
    assert planned(done) == set()
    template.write_text(original + '{% if exp.method == "linear" %}\n# baseline\n{% endif %}\n')
    linear = [("evaluate", LINEAR + on) for on in ("", UNSEEN, OOD)]
    assert planned(done) == {*linear, AGG}
    snakemake(done)
    assert sorted(calls(done)) == sorted([("aggregate", "results"), *linear])
    common = done / "templates" / "common.yaml.j2"
    common.write_text(common.read_text().replace("use_cache: false", "use_cache: false  # KV cache off"))
    assert {(rule, what) for rule, what in planned(done) if rule == "train"} == {("train", e) for e in TRAINED_IDS}


def test_a_template_edit_that_changes_one_train_config_retrains_exactly_that_experiment(done):
    template = done / "templates" / "train.yaml.j2"
    template.write_text(template.read_text() + '{% if exp.method == "linear" %}\n# baseline\n{% endif %}\n')
    assert planned(done) == experiment_jobs(LINEAR) | {AGG}
    snakemake(done)
    assert sorted(calls(done)) == sorted([("aggregate", "results"), *experiment_jobs(LINEAR)])
    config = done / load_matrix(done / "experiments/matrix.tsv", done / "experiments/catalog.yaml")[3].train_config
    assert config.read_text().endswith("# baseline\n")  # the train job wrote the new text


def test_an_evaluation_only_catalog_edit_reruns_only_evaluation(done):
    catalog = done / "experiments" / "catalog.yaml"
    trained = {e: (done / "results" / e / "train/final/model.safetensors").stat().st_mtime_ns for e in TRAINED_IDS}
    catalog.write_text(catalog.read_text().replace("    num_beams: 1", "    num_beams: 2", 1))
    assert planned(done) == {("evaluate", e) for e in DEFAULT_IDS} | {AGG}
    snakemake(done)
    assert sorted(calls(done)) == [("aggregate", "results")] + [("evaluate", e) for e in sorted(DEFAULT_IDS)] + [PLAN]
    assert trained == {e: (done / "results" / e / "train/final/model.safetensors").stat().st_mtime_ns
                       for e in TRAINED_IDS}
    for exp in load_matrix(done / "experiments/matrix.tsv", catalog):
        assert "num_beams: 2\n" in (done / exp.test_config).read_text()


def test_catalog_edit_reruns_exactly_the_experiments_using_the_entry(done):
    path = done / "experiments" / "catalog.yaml"
    original = path.read_text()

    def edit(old, new):
        assert old in original
        path.write_text(original.replace(old, new, 1))

    # an entry no experiment uses: no experiment (only the table is refreshed)
    edit("path: /path/to/Qwen2.5-7B-Instruct", "path: /models/Qwen2.5-7B-Instruct")
    assert planned(done) == {AGG}
    # a setting of synth-aqa, which no experiment uses yet: the table only; then a synth-aqa row, run
    edit("      max_steps: 500", "      max_steps: 450")
    assert planned(done) == {AGG}
    path.write_text(original)
    matrix = done / "experiments" / "matrix.tsv"
    matrix.write_text(matrix.read_text() + "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-aqa\t\t\t\t\t\n")
    snakemake(done)
    # a setting of synth-aqa: its one experiment
    aqa = AQA
    edit("      max_steps: 500", "      max_steps: 450")
    assert planned(done) == experiment_jobs(aqa) | {AGG}
    # an evaluation-only setting of synth-aqa: its evaluation only
    edit("      max_new_tokens: 16", "      max_new_tokens: 24")
    assert planned(done) == {("evaluate", aqa), AGG}
    # synth-en's prompt: the two synth-en trainings and every synth-en evaluation (the reference's config shows it)
    edit('prompt: "please transcribe the audio content into text: "\n    # CPU',
         'prompt: "transcribe: "\n    # CPU')
    assert planned(done) - {AGG} == experiment_jobs(LAYER_WISE) | experiment_jobs(LINEAR) | \
        {("evaluate", REFERENCE + on) for on in ("", UNSEEN, OOD)}
    # synth-aqa's sizes: its data again, then its experiment
    edit("sizes: {train: 600, dev: 60, test: 120}", "sizes: {train: 700, dev: 60, test: 120}")
    assert planned(done) == {("prepare_data", "synth-aqa"), ("train", aqa), ("evaluate", aqa),
                             AGG}
    # the shared decoder: every trained experiment (the reference rows use none)
    edit("embedded: smollm2-135m-instruct\n", "embedded: smollm2-135m-instruct\n    dtype: float32\n")
    assert {w for r, w in planned(done) if r == "train"} == {*TRAINED_IDS, aqa}
    # the evaluation-only setting: evaluation only
    edit("    num_beams: 1", "    num_beams: 2")
    assert {r for r, _ in planned(done)} == {"evaluate", "aggregate"}


def test_editing_a_matrix_row_reruns_only_that_row_and_never_deletes_its_checkpoints(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    header = "method\tencoder\tdecoder\tdataset\tvariant\tmax_steps\n"
    first = "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\ta\t"
    second = "linear\twhisper-tiny.en\tsmollm2\tsynth-en\tb\t"
    write_matrix(root, first, second, header=header)
    snakemake(root)
    edited, kept = on_first_test_set(load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml"))
    for exp in (edited, kept):  # each job wrote its config, as rendered at parse time
        assert (root / exp.train_config).read_text() == render(exp, root / "templates", "train")
        assert (root / exp.test_config).read_text() == render(exp, root / "templates", "test")
    checkpoint = root / edited.train_dir / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "complete.json").write_text("{}\n")
    (root / "stub_calls.jsonl").unlink()
    write_matrix(root, first + "40", second, header=header)  # same id, another max_steps
    assert planned(root) == experiment_jobs(edited.id) | {AGG}
    snakemake(root)
    assert sorted(calls(root)) == sorted([("aggregate", "results"), PLAN, *experiment_jobs(edited.id)])
    assert (checkpoint / "complete.json").is_file()
    assert "max_steps: 40\n" in (root / edited.train_config).read_text()


def test_quick_switch_and_failed_experiment_does_not_block_the_others(done):
    """--config quick=true re-renders every config; a failing train job does not stop the other experiments."""
    jobs = planned(done, "--config", "quick=true")
    assert {w for r, w in jobs if r == "train"} == set(TRAINED_IDS)
    assert {w for r, w in jobs if r == "prepare_data"} == {"synth-en"}  # quick sizes
    proc = snakemake(done, "--config", "quick=true", env={"STEERMOE_STUB_FAIL": LINEAR}, check=False)
    assert proc.returncode != 0
    done_calls = calls(done)
    assert ("evaluate", LAYER_WISE) in done_calls and ("evaluate", REFERENCE) in done_calls
    assert ("evaluate", LINEAR) not in done_calls
    assert done_calls[-1] == ("aggregate", "results")  # onerror: the table is still written
    # the failed job's outputs are removed, its checkpoints are not (they are not outputs)
    train_dir = done / "results" / LINEAR / "train"
    assert (train_dir / "checkpoint-1" / "complete.json").is_file()
    assert not (train_dir / "final" / "model.safetensors").exists()
    rendered = (done / "results" / LAYER_WISE / f"{LAYER_WISE}_train.yaml").read_text()
    assert "max_steps: 2\n" in rendered
    manifest = json.loads((done / "data" / "synth-en" / "manifest.json").read_text())
    argv = manifest["argv"]
    assert argv[:4] == ["data", "synth", "synth-en", "--out"]
    assert argv[argv.index("--sizes") + 1:argv.index("--sizes") + 4] == ["train=48", "dev=8", "test=16"]


def open_in_browser(report: Path, screenshot: Path) -> dict:
    """Open an HTML file in headless Chromium (scripts/setup.sh --tests installs it): the page's rendered text, its
    embedded data (script contents), and a screenshot checked not to be blank."""
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no headless Chromium: run scripts/setup.sh --tests")
    from matplotlib.image import imread

    args = [browser, "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
    # on a loaded machine the page's scripts may not have drawn it when the first budget of virtual time ends
    for budget in (10000, 40000):
        subprocess.run([*args, f"--virtual-time-budget={budget}", f"--screenshot={screenshot}",
                        report.resolve().as_uri()], capture_output=True, timeout=180, check=True)
        pixels = imread(screenshot)[..., :3]  # (H, W, 3) in 0..1
        drawn = pixels.std() > 0.05 and (pixels.mean(axis=2) < 0.9).mean() > 0.05
        if drawn:
            break
    assert drawn, "the report renders blank"
    dom = subprocess.run([*args, "--virtual-time-budget=10000", "--dump-dom", report.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    scripts = "".join(re.findall(r"<script\b[^>]*>(.*?)</script>", dom, flags=re.S))
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S))
    return {"text": " ".join(text.split()), "data": scripts}


def test_the_report_opens_in_a_browser_with_the_table_the_comparisons_and_the_plots(completed, tmp_path):
    snakemake(completed, "--report", str(tmp_path / "report.html"))
    page = open_in_browser(tmp_path / "report.html", tmp_path / "report.png")
    assert "Results" in page["text"] and "Plots" in page["text"] and "steermoe train" in page["text"]
    assert "all experiments" in page["data"] and "comparisons with baselines" in page["data"]


# ---- the real thing ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_matrix_end_to_end(tmp_path):
    """Tiny random models, a tone corpus, 2 training steps: snakemake --cores 2 to results/table.csv for real."""
    from tests.tiny import save_tiny_models, tiny_catalog, tone_corpus

    check = subprocess.run([str(VENV_BIN / "steermoe"), "aggregate", "--help"], capture_output=True)
    if check.returncode != 0:
        pytest.skip("steermoe aggregate is not available")
    encoder, decoder = save_tiny_models(tmp_path / "models")
    tones = tone_corpus(tmp_path / "tones")
    root = copy_workflow(tmp_path / "wf")
    catalog = tiny_catalog(encoder, decoder, tones, save_steps=2)
    catalog["decoders"]["missing"] = {"path": str(tmp_path / "no-such-model")}
    (root / "experiments" / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    rows = ["layer_wise\ttiny-whisper\ttiny-qwen\ttones\tg\tfalse", "linear\ttiny-whisper\ttiny-qwen\ttones\tg\ttrue"]
    header = "method\tencoder\tdecoder\tdataset\tgroup\tbaseline\n"
    write_matrix(root, *rows, header=header)
    snakemake(root, stub=False)
    import csv

    table = list(csv.DictReader((root / "results" / "table.csv").open()))
    ids = ["layer_wise_tiny-whisper_tiny-qwen_tones", "linear_tiny-whisper_tiny-qwen_tones"]
    assert {r["experiment"] for r in table} == set(ids) and all(r["status"] == "ok" for r in table)
    experiments = load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")
    for exp in ids:
        metrics = json.loads((root / "results" / exp / "eval" / "metrics.json").read_text())
        assert metrics["metric"] == "wer" and metrics["utterances"] == 8
        summary = json.loads((root / "results" / exp / "train" / "final" / "train_summary.json").read_text())
        assert summary["steps"] == 2
        assert list((root / "results" / exp / "train").glob("checkpoint-*"))  # checkpoints kept, not outputs
        # what the job used, measured, lies within the host memory estimate its mem_mb request is made from
        estimate = estimated_host_memory(next(e for e in experiments if e.id == exp), root)
        assert 0 < summary["peak_host_memory_mb"] * 2**20 <= estimate["job"]
        assert 0 < metrics["peak_host_memory_mb"] * 2**20 <= estimate["per_process"]
    assert (root / "results" / "comparisons.csv").is_file() and list((root / "results" / "plots").glob("*.png"))
    # the cost plan was written before any training job started (each writes its config first)
    plan = list(csv.DictReader((root / "results" / "plan.csv").open()))
    assert [r["experiment"] for r in plan] == ids and all(int(r["trainable_parameters"]) > 0 for r in plan)
    assert all((root / "results" / "plan.csv").stat().st_mtime <= (root / e.train_config).stat().st_mtime
               for e in experiments)
    assert "Nothing to be done" in snakemake(root, "-n", stub=False).stdout
    snakemake(root, "--report", "results/report.html", stub=False)
    page = open_in_browser(root / "results" / "report.html", tmp_path / "report.png")
    # the report's app ran (its menu is rendered) and it holds the table, the comparisons and every plot
    assert "Results" in page["text"] and "Plots" in page["text"], page["text"][:500]
    for entry in ("all experiments", "comparisons with baselines", "plan.csv",
                  *(p.name for p in (root / "results" / "plots").glob("*.png"))):
        assert entry in page["data"], entry
    # a broken experiment fails, the others stay done, and the table says why (onerror aggregates)
    write_matrix(root, *rows, "linear\ttiny-whisper\tmissing\ttones\t\tfalse", header=header)
    proc = snakemake(root, stub=False, check=False)
    assert proc.returncode != 0
    table = list(csv.DictReader((root / "results" / "table.csv").open()))
    failed = [r for r in table if r["experiment"] == "linear_tiny-whisper_missing_tones"]
    assert failed and failed[0]["status"] != "ok" and failed[0]["error"]
    assert {r["status"] for r in table if r["experiment"] in ids} == {"ok"}


def test_a_repeated_parse_validates_only_the_configs_that_changed(tmp_path, monkeypatch):
    """The workflow remembers which rendered configs passed the validator (by text, file name and the validator's
    source): the next run parses only new or changed texts, and the memo holds today's configs only."""
    import steermoe.declare.runconfig

    parsed = []
    real = steermoe.declare.runconfig.parse_run_config
    monkeypatch.setattr(steermoe.declare.runconfig, "parse_run_config",
                        lambda text, path: parsed.append(path) or real(text, path))
    experiments = load_matrix(REPO / "experiments/matrix.tsv", REPO / "experiments/catalog.yaml")
    memo = tmp_path / ".snakemake" / "steermoe-validated-configs"
    first = render_all(experiments, REPO / "templates", memo=memo)
    configs = sum(len(exp.configs) for exp in experiments)
    assert len(parsed) == configs and len(memo.read_text().split()) == configs
    parsed.clear()
    assert render_all(experiments, REPO / "templates", memo=memo) == first and parsed == []
    experiments[0].settings["num_beams"] = 2  # an evaluation-only change: one test config differs
    render_all(experiments, REPO / "templates", memo=memo)
    assert parsed == [experiments[0].test_config]
    assert len(memo.read_text().split()) == configs  # the old text's key is gone
