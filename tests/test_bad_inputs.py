"""The catalogue of bad inputs (issue 7): each case goes through the entry point a user hits (`snakemake` on a copy of
the workflow, the `steermoe` command) and checks that the user sees one clear line naming the file, row or key and
what to do, no Python traceback, and that nothing produced earlier was lost or changed.

/tmp/ctx/bad_inputs_cases.md (the closing note's table) lists every case with its message.
"""
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from tests.test_train import write_config
from tests.test_workflow import BASE, ROW, VENV_BIN, calls, copy_workflow, snakemake, write_matrix

REPO = Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last)"
DEFAULT_EXP = "layer_wise_whisper-tiny.en_smollm2_synth-en"


# ---- helpers -------------------------------------------------------------------------------------------------
def steermoe(*args, env=None, preexec_fn=None) -> tuple[int, str]:
    """The `steermoe` command as a user runs it: (exit code, stdout + stderr)."""
    proc = subprocess.run([sys.executable, "-m", "steermoe.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          preexec_fn=preexec_fn, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def user_error(rc: int, output: str, *parts: str) -> str:
    """The one `steermoe: error:` line (exit code 2, no traceback), holding every part."""
    assert rc == 2, output[-4000:]
    assert TRACEBACK not in output, output[-4000:]
    lines = [line for line in output.splitlines() if line.startswith("steermoe: error: ")]
    assert len(lines) == 1, output[-4000:]
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    print(f"MESSAGE: {lines[0]}")  # shown by pytest -rP: the catalogue's table quotes it
    return lines[0]


def snapshot(*folders) -> dict[str, bytes]:
    """Every file under the folders, with its bytes."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def workflow_error(root: Path, *parts: str, args=()) -> str:
    """Run snakemake (stand-in steermoe) on a workflow whose input is bad: it stops before any job, with the
    message, and leaves the earlier results (written by `earlier_results`) as they were."""
    before = snapshot(root / "results", root / "data")
    proc = snakemake(root, *args, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert TRACEBACK not in output, output[-3000:]
    for part in parts:
        assert part in output, f"{part!r} not in:\n{output[-3000:]}"
    print("MESSAGE: " + next(line for line in output.splitlines() if parts[0] in line))  # pytest -rP
    assert not calls(root)  # no job ran
    assert snapshot(root / "results", root / "data") == before
    return output


def earlier_results(root: Path) -> None:
    """What an earlier run of the matrix left: the table, a checkpoint, final weights, a prepared corpus."""
    files = {"results/table.csv": "experiment,status\nearlier,ok\n",
             f"results/{DEFAULT_EXP}/train/checkpoint-2/model.safetensors": "earlier weights",
             f"results/{DEFAULT_EXP}/train/final/model.safetensors": "earlier final weights",
             "data/synth-en/manifest.json": "{\"earlier\": true}\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def workflow(tmp_path) -> Path:
    root = copy_workflow(tmp_path / "wf")
    earlier_results(root)
    return root


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:  # noqa: F811
    """An earlier training run (2 steps, a checkpoint per step) and its evaluation, made with the real command."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, tiny, training={"max_steps": 2}, save_steps=1)
    rc, output = steermoe("train", "--config", config)
    assert rc == 0, output[-3000:]
    test = write_config(folder, tiny, name="layer_wise_whisper_qwen_tones_test", evaluation={"max_new_tokens": 4})
    rc, output = steermoe("evaluate", "--config", test)
    assert rc == 0, output[-3000:]
    return folder / "out"


@pytest.fixture
def bad_config(tiny, trained, tmp_path):  # noqa: F811
    """write(**sections) -> a training config whose output folder already holds an earlier run's checkpoints,
    final weights and evaluation; `check()` asserts they are untouched."""
    shutil.copytree(trained, tmp_path / "out")
    before = snapshot(tmp_path / "out")

    class Bad:
        out = tmp_path / "out"

        @staticmethod
        def write(name="layer_wise_whisper_qwen_tones_train", **sections):
            return write_config(tmp_path, tiny, name=name, **sections)

        @staticmethod
        def check():
            assert snapshot(tmp_path / "out") == before

    return Bad


def audio_bytes(seconds=1.0, rate=16000, channels=1, fmt="FLAC") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1), rate, format=fmt)
    return buffer.getvalue()


def librispeech(root: Path, files: dict[str, bytes], transcript: str) -> Path:
    """A LibriSpeech-layout corpus: one chapter of test-clean with the given audio files and transcript text."""
    chapter = root / "test-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    for name, data in files.items():
        (chapter / name).write_bytes(data)
    (chapter / "19-198.trans.txt").write_text(transcript)
    return root


@pytest.fixture
def prepared_before(tmp_path) -> Path:
    """A prepared corpus folder from an earlier `steermoe data prepare`; a failing preparation must keep it."""
    source = tmp_path / "earlier.parquet"
    pq.write_table(pa.Table.from_pylist([{"audio": audio_bytes(), "text": "earlier"}]), source)
    out = tmp_path / "prepared"
    rc, output = steermoe("data", "prepare", "--corpus", "parquet", "--root", source, "--split", "test",
                          "--out", out, "--workers", 1)
    assert rc == 0, output[-3000:]
    return out


# ---- the matrix, the catalog, the templates (snakemake) ------------------------------------------------------
@pytest.mark.parametrize("column, row, message", [
    ("method", "layer-wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\t\t",
     "experiments/matrix.tsv: row 3 (line 4), column 'method': unknown method 'layer-wise' (did you mean "
     "'layer_wise'?); allowed: layer_wise, linear, post_encoder, lora"),
    ("encoder", "linear\twhisper-tiny\tsmollm2\tsynth-en\t\t\t\t\t",
     "experiments/matrix.tsv: row 3 (line 4), column 'encoder': unknown encoder (not in experiments/catalog.yaml) "
     "'whisper-tiny' (did you mean 'whisper-tiny.en'?); allowed: whisper-tiny.en"),
    ("decoder", "linear\twhisper-tiny.en\tsmolm2\tsynth-en\t\t\t\t\t",
     "experiments/matrix.tsv: row 3 (line 4), column 'decoder': unknown decoder (not in experiments/catalog.yaml) "
     "'smolm2' (did you mean 'smollm2'?); allowed: smollm2"),
    ("dataset", "linear\twhisper-tiny.en\tsmollm2\tsynth-fr\t\t\t\t\t",
     "experiments/matrix.tsv: row 3 (line 4), column 'dataset': unknown dataset (not in experiments/catalog.yaml) "
     "'synth-fr'"),
])
def test_unknown_name_in_a_matrix_row(workflow, column, row, message):
    write_matrix(workflow, ROW, BASE, row)
    workflow_error(workflow, message)


def test_duplicate_matrix_rows(workflow):
    write_matrix(workflow, ROW, BASE, ROW)
    workflow_error(workflow, "experiments/matrix.tsv: row 3 (line 4): duplicate of row 1 (line 2): both are experiment "
                             f"'{DEFAULT_EXP}'; remove one, or tell them apart with an override or a 'variant'")


@pytest.mark.parametrize("header, cell, message", [
    ("num_experts", "0", "row 1 (line 2), column 'num_experts': must be greater than 0, got 0"),
    ("batch_size", "-4", "row 1 (line 2), column 'batch_size': must be greater than 0, got -4"),
    ("learning_rate", "fast", "row 1 (line 2), column 'learning_rate': 'fast' is not a number"),
])
def test_zero_negative_and_mistyped_matrix_values(workflow, header, cell, message):
    write_matrix(workflow, f"linear\twhisper-tiny.en\tsmollm2\tsynth-en\t{cell}",
                 header=f"method\tencoder\tdecoder\tdataset\t{header}\n")
    workflow_error(workflow, f"experiments/matrix.tsv: {message}")


def test_matrix_separated_by_spaces(workflow):
    (workflow / "experiments" / "matrix.tsv").write_text("method encoder decoder dataset\n"
                                                        "linear whisper-tiny.en smollm2 synth-en\n")
    workflow_error(workflow, "experiments/matrix.tsv: unknown column 'method encoder decoder dataset' in the header "
                             "(line 1) (the matrix must be tab-separated)")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["synth-en"].update(promt=c["datasets"]["synth-en"].pop("prompt")),
     "experiments/catalog.yaml: datasets.synth-en: unknown key 'promt' (did you mean 'prompt'?)"),
    (lambda c: c["datasets"]["synth-en"]["settings"].update(learning_rate="1e-2 please"),
     "experiments/catalog.yaml: datasets.synth-en.settings.learning_rate: must be a number, got '1e-2 please'"),
    (lambda c: c["datasets"]["synth-en"]["sizes"].update(train=-5),
     "experiments/catalog.yaml: datasets.synth-en.sizes: must map split names to positive row counts"),
    (lambda c: c["defaults"]["settings"].update(steering_lr=0.1),
     "experiments/catalog.yaml: defaults.settings: unknown key 'steering_lr'"),
    (lambda c: c["datasets"]["libri"]["prepare"].update(max_text_length=200),
     "experiments/catalog.yaml: datasets.libri.prepare: 'max_text_length' is now 'max_text_characters' (data "
     "preparation counts characters; the max_text_length setting counts the LLM's tokens)"),
])
def test_misspelt_mistyped_and_negative_catalog_values(workflow, edit, message):
    path = workflow / "experiments" / "catalog.yaml"
    catalog = yaml.safe_load(path.read_text())
    edit(catalog)
    path.write_text(yaml.safe_dump(catalog, allow_unicode=True))
    workflow_error(workflow, message)


def test_template_referencing_an_undefined_variable(workflow):
    template = workflow / "templates" / "train.yaml.j2"
    template.write_text(template.read_text() + "warmup_ratio: {{ s.warmup_ratio }}\n")
    workflow_error(workflow, "templates/train.yaml.j2, line", "undefined variable:", "'warmup_ratio'",
                   "(variables: exp, encoder, decoder, dataset, s (settings), mode)")


def test_unknown_workflow_config_key(workflow):
    workflow_error(workflow, "config (experiments/config.yaml and --config): unknown key 'result' (did you mean "
                             "'results'?); valid keys: matrix, catalog, results, logs, models, data, templates, quick",
                   args=("--config", "result=elsewhere"))


def test_a_second_snakemake_run_while_one_is_active(tmp_path):
    """Snakemake's lock: the second run stops at once and says what to do; the first finishes unharmed."""
    root = copy_workflow(tmp_path / "wf")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    release, waiting = tmp_path / "release", tmp_path / "waiting"
    (bin_dir / "steermoe").write_text(  # the first job of the first run waits until the test lets it go
        f"#!/bin/sh\ntouch {waiting}\nwhile [ ! -e {release} ]; do sleep 0.1; done\n"
        f"exec {sys.executable} {REPO / 'tests' / 'workflow_stub.py'} \"$@\"\n")
    (bin_dir / "steermoe").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([str(VENV_BIN / "snakemake"), "--cores", "1"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not waiting.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert waiting.exists(), first.communicate()[0][-3000:]
        second = snakemake(root, check=False, stub=False, env={"PATH": env["PATH"]})
        output = second.stdout + second.stderr
        assert second.returncode != 0 and TRACEBACK not in output
        assert "Directory cannot be locked" in output and "no other Snakemake process" in output
        assert "If you are sure that no other instances of snakemake are running on this directory" in output
        assert "--unlock" in output
        # a dry run needs no lock: looking at the plan while the matrix runs is fine
        assert snakemake(root, "-n", check=False, stub=False, env={"PATH": env["PATH"]}).returncode == 0
    finally:
        release.touch()
        out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, out[-3000:]
    assert (root / "results" / "table.csv").is_file() and not list(root.glob(".snakemake/locks/*"))


# ---- the experiment config (steermoe train) ------------------------------------------------------------------
@pytest.mark.parametrize("sections, parts", [
    ({"training": {"learning_rat": 0.1}}, ["unknown key 'training.learning_rat'; did you mean "
                                           "'training.learning_rate'?"]),
    ({"fp16": True}, ["unknown key 'fp16'; it belongs at 'training.fp16'"]),
    ({"steering": {"steering_learning_rate": 0.01}}, ["unknown key 'steering.steering_learning_rate'; it belongs at "
                                                      "'training.steering_learning_rate'"]),
    ({"training": {"learning_rate": "0.001"}}, ["training.learning_rate: must be a number, got '0.001' (str)"]),
    ({"training": {"batch_size": 0}}, ["training.batch_size: must be greater than 0, got 0"]),
    ({"max_prompt_tokens": -5}, ["max_prompt_tokens: must be greater than 0, got -5"]),
    ({"sample_rate": 8000}, ["sample_rate: 8000 is not one of 16000"]),
])
def test_misspelt_misplaced_and_mistyped_config_keys(bad_config, sections, parts):
    config = bad_config.write(**sections)
    user_error(*steermoe("train", "--config", config), f"{config}: ", *parts)
    bad_config.check()


def test_config_that_is_not_yaml(bad_config):
    config = bad_config.write()
    config.write_text(config.read_text() + "training: [unclosed\n")
    user_error(*steermoe("train", "--config", config), f"{config}: not valid YAML at line 21, column 1: did not find "
               "expected ',' or ']'")
    bad_config.check()


def test_missing_model_folder(bad_config, tmp_path):
    config = bad_config.write(whisper_encoder={"model_path": str(tmp_path / "no-such-model")})
    user_error(*steermoe("train", "--config", config), f"{config}: whisper_encoder.model_path: model folder "
               f"{tmp_path / 'no-such-model'} does not exist: run `steermoe models import`")
    bad_config.check()


@pytest.mark.parametrize("section, key, other, message", [
    ("llm_decoder", "model_name", "encoder", "holds a 'whisper' model, not a causal language model"),
    ("whisper_encoder", "model_path", "decoder", "holds a 'qwen2' model, not an audio encoder"),
])
def test_model_folder_of_the_wrong_kind(bad_config, tiny, section, key, other, message):  # noqa: F811
    config = bad_config.write(**{section: {key: tiny[other]}})
    user_error(*steermoe("train", "--config", config), f"{config}: {section}.{key}: {tiny[other]} {message}")
    bad_config.check()


def test_missing_dataset_folder(bad_config, tmp_path):
    config = bad_config.write(parquet_dirs=[str(tmp_path / "no-such-data")])
    user_error(*steermoe("train", "--config", config), f"{config}: parquet_dirs: {tmp_path / 'no-such-data'} is "
               f"neither a .parquet file nor a folder with .parquet files; prepare the data with `steermoe data "
               f"prepare|synth`")
    bad_config.check()


@pytest.mark.parametrize("mode", ["train", "test"])
def test_a_missing_data_folder_is_reported_before_any_weights_load(bad_config, tiny, tmp_path, mode):
    """The decoder's weights are unreadable here: loading them first would fail with another message."""
    decoder = tmp_path / "decoder-with-broken-weights"
    shutil.copytree(tiny["decoder"], decoder)
    for weights in decoder.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    config = bad_config.write(name=f"layer_wise_whisper_qwen_tones_{mode}", parquet_dirs=[str(tmp_path / "gone")],
                              llm_decoder={"model_name": str(decoder)})
    command = "train" if mode == "train" else "evaluate"
    user_error(*steermoe(command, "--config", config), f"{config}: parquet_dirs: {tmp_path / 'gone'} is neither a "
               f".parquet file nor a folder with .parquet files")
    bad_config.check()


def test_training_data_of_the_wrong_layout(bad_config, tiny, tmp_path):  # noqa: F811
    table = pq.read_table(f"{tiny['corpus']}/train.parquet").rename_columns(
        ["id", "wav", "duration", "sentence", "prompt", "answers", "speaker", "language"])
    pq.write_table(table, tmp_path / "other.parquet")
    config = bad_config.write(parquet_dirs=[str(tmp_path / "other.parquet")])
    user_error(*steermoe("train", "--config", config), f"{tmp_path / 'other.parquet'} has no column 'audio' "
               f"(audio_column); its columns: id, wav, duration, sentence")
    bad_config.check()


def test_empty_training_split(bad_config, tiny, tmp_path):  # noqa: F811
    pq.write_table(pq.read_table(f"{tiny['corpus']}/train.parquet").slice(0, 0), tmp_path / "empty.parquet")
    config = bad_config.write(parquet_dirs=[str(tmp_path / "empty.parquet")])
    user_error(*steermoe("train", "--config", config), f"{config}: parquet_dirs: {tmp_path / 'empty.parquet'} "
               f"hold(s) no rows (an empty split)")
    bad_config.check()


def test_every_training_row_filtered_out(bad_config):
    config = bad_config.write(max_audio_length=0.01)
    user_error(*steermoe("train", "--config", config), f"{config}: every row of parquet_dirs was filtered out "
               "({'audio longer than max_audio_length': 32}); raise the limits or set filter_dataset: false")
    bad_config.check()


def test_truncated_audio_in_training_data(tiny, tmp_path):  # noqa: F811
    """Data not made by `steermoe data prepare` (which skips such rows): the run stops naming the utterance; the
    checkpoints written before it are complete."""
    rows = pq.read_table(f"{tiny['corpus']}/train.parquet").to_pylist()
    rows[5]["audio"] = rows[5]["audio"][:len(rows[5]["audio"]) // 2]  # cut off
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "damaged.parquet")
    config = write_config(tmp_path, tiny, parquet_dirs=[str(tmp_path / "damaged.parquet")],
                          training={"max_steps": 20}, save_steps=1)
    user_error(*steermoe("train", "--config", config), f"{config}: parquet_dirs ({tmp_path / 'damaged.parquet'}): "
               "utterance 'train-005': undecodable audio", "prepare the data with `steermoe data prepare`")
    assert not (tmp_path / "out" / "final").exists()
    assert all((c / "complete.json").is_file() for c in (tmp_path / "out").glob("checkpoint-*"))


def test_deepspeed_json_that_does_not_parse(bad_config, tmp_path):
    (tmp_path / "zero2.json").write_text('{"zero_optimization": {"stage": 2,}}\n')
    config = bad_config.write(training={"use_deepspeed": True, "deepspeed_config": str(tmp_path / "zero2.json")})
    user_error(*steermoe("train", "--config", config), f"{config}: training.deepspeed_config {tmp_path / 'zero2.json'}"
               " is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 35")
    bad_config.check()


def test_deepspeed_json_that_contradicts_the_config(bad_config, tmp_path):
    ds = json.loads((REPO / "steermoe" / "declare" / "deepspeed" / "stage2_simple.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=8, gradient_clipping=5.0)
    (tmp_path / "zero2.json").write_text(json.dumps(ds))
    config = bad_config.write(training={"use_deepspeed": True, "deepspeed_config": str(tmp_path / "zero2.json")})
    user_error(*steermoe("train", "--config", config), f"{config}: the DeepSpeed config {tmp_path / 'zero2.json'} "
               "contradicts this config: ", "train_micro_batch_size_per_gpu is 8 but training.batch_size is 4",
               "gradient_clipping is 5.0 but training.gradient_clipping is 1.0",
               "set those DeepSpeed values to \"auto\"")
    bad_config.check()


def test_steermoe_check_reports_every_bad_config_of_the_catalogue_as_train_does(tiny, tmp_path):  # noqa: F811
    """`steermoe check` runs train's and evaluate's own checks, so each case of the catalogue above gets the message
    that `steermoe train` gives (the parts those tests assert), in one command, before any weights load; a good
    config passes."""
    broken = tmp_path / "broken-weights"
    shutil.copytree(tiny["decoder"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")  # nothing may load them: every check reads configs and schemas only
    table = pq.read_table(f"{tiny['corpus']}/train.parquet")
    pq.write_table(table.rename_columns(["id", "wav", *table.column_names[2:]]), tmp_path / "other.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    (tmp_path / "bad.json").write_text('{"zero_optimization": {"stage": 2,}}\n')
    ds = json.loads((REPO / "steermoe" / "declare" / "deepspeed" / "stage2_simple.json").read_text())
    (tmp_path / "contradicts.json").write_text(json.dumps({**ds, "train_micro_batch_size_per_gpu": 8}))
    cases = [  # (sections, the message's parts)
        ({"training": {"learning_rat": 0.1}}, ["unknown key 'training.learning_rat'; did you mean "
                                               "'training.learning_rate'?"]),
        ({"fp16": True}, ["unknown key 'fp16'; it belongs at 'training.fp16'"]),
        ({"training": {"batch_size": 0}}, ["training.batch_size: must be greater than 0, got 0"]),
        ({"sample_rate": 8000}, ["sample_rate: 8000 is not one of 16000"]),
        ({"whisper_encoder": {"model_path": str(tmp_path / "none")}},
         [f"whisper_encoder.model_path: model folder {tmp_path / 'none'} does not exist"]),
        ({"llm_decoder": {"model_name": tiny["encoder"]}},
         [f"llm_decoder.model_name: {tiny['encoder']} holds a 'whisper' model, not a causal language model"]),
        ({"parquet_dirs": [str(tmp_path / "gone")]},
         [f"parquet_dirs: {tmp_path / 'gone'} is neither a .parquet file nor a folder with .parquet files"]),
        ({"parquet_dirs": [str(tmp_path / "other.parquet")]}, [f"{tmp_path / 'other.parquet'} has no column 'audio'"]),
        ({"training": {"use_deepspeed": True, "deepspeed_config": str(tmp_path / "bad.json")}},
         [f"training.deepspeed_config {tmp_path / 'bad.json'} is not valid JSON"]),
        ({"training": {"use_deepspeed": True, "deepspeed_config": str(tmp_path / "contradicts.json")}},
         ["contradicts this config: train_micro_batch_size_per_gpu is 8 but training.batch_size is 4"]),
    ]
    configs = [write_config(tmp_path, tiny, name=f"layer_wise_whisper_qwen_case{i}_train",
                            **{"llm_decoder": {"model_name": str(broken)}, **sections})
               for i, (sections, _) in enumerate(cases)]
    good = write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_good_test")
    rc, output = steermoe("check", *configs, good)
    assert rc == 2 and TRACEBACK not in output, output[-4000:]
    lines = [line for line in output.splitlines() if line.startswith("steermoe: error: ")]
    assert len(lines) == len(cases), output[-4000:]
    for line, config, (_, parts) in zip(lines, configs, cases):
        assert line.startswith(f"steermoe: error: {config}: ") or str(tmp_path) in line, line
        for part in parts:
            assert part in line, (part, line)
    assert f"{good}: ok (evaluation config, layer_wise)" in output
    # and word for word what train says, for a key error and a data error
    for index in (0, 6):
        assert user_error(*steermoe("train", "--config", configs[index])) == lines[index]


# ---- during training -----------------------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):  # noqa: F811
    # a projection learning rate of 1e30 (with weight decay) overflows the projection after two updates: NaN loss
    config = write_config(tmp_path, tiny, training={"max_steps": 6, "learning_rate": 1e30, "weight_decay": 0.01},
                          save_steps=1)
    rc, output = steermoe("train", "--config", config)
    line = user_error(rc, output, f"{config}: the training loss became nan at step ", "; stopped. The last complete "
                      f"checkpoint ({tmp_path / 'out' / 'checkpoint-'}", ") is kept. Lower the learning rates")
    kept = Path(re.search(r"checkpoint \((\S+)\) is kept", line)[1])
    assert (kept / "complete.json").is_file() and not (tmp_path / "out" / "final").exists()
    before = snapshot(kept)
    from steermoe.declare.runconfig import load_run_config
    from steermoe.run.checkpoint import resume_point

    assert resume_point(tmp_path / "out", load_run_config(config)) == str(kept)  # intact: the hashes match
    assert snapshot(kept) == before


def test_corrupted_checkpoint_falls_back_to_the_previous_complete_one(tiny, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny, training={"max_steps": 4}, save_steps=2)
    rc, output = steermoe("train", "--config", config)
    assert rc == 0, output[-3000:]
    out = tmp_path / "out"
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # e.g. a disk error
    corrupted, good = weights.read_bytes(), snapshot(out / "checkpoint-2")
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "finished")  # as if killed before the run finished
    rc, output = steermoe("train", "--config", config)
    assert rc == 0 and TRACEBACK not in output, output[-3000:]
    assert f"checkpoint checkpoint-4 is corrupted (model.safetensors does not match its hash): moved to " \
           f"{out / 'superseded' / 'checkpoint-4-'}" in output
    assert f"resuming from {out / 'checkpoint-2'}" in output
    assert snapshot(out / "checkpoint-2") == good  # the fallback is untouched
    aside = list((out / "superseded").glob("checkpoint-4-*"))
    assert len(aside) == 1 and (aside[0] / "model.safetensors").read_bytes() == corrupted  # moved, never deleted
    assert json.loads((out / "final" / "train_summary.json").read_text())["steps"] == 4


# ---- full and read-only disks --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB file system of its own (tmpfs; root only); yields (folder, fill, free)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mount.stderr.decode().strip()}); the RLIMIT_FSIZE case below "
                    f"covers a full disk")
    filler = folder / "filler"

    def fill(leave_kib=0):
        with open(filler, "ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:  # ENOSPC: full
                pass
        os.truncate(filler, max(0, filler.stat().st_size - leave_kib * 1024))

    try:
        yield folder, fill, lambda: filler.unlink()
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def trained_on(folder: Path, tiny) -> tuple[Path, Path, Path]:  # noqa: F811
    """Train (2 steps, a checkpoint per step) and evaluate into folder/out; returns both configs and out."""
    folder.mkdir(exist_ok=True)
    config = write_config(folder.parent, tiny, training={"max_steps": 2, "output_dir": str(folder / "out")},
                          save_steps=1)
    test = write_config(folder.parent, tiny, name="layer_wise_whisper_qwen_tones_test",
                        training={"max_steps": 2, "output_dir": str(folder / "out")}, evaluation={"max_new_tokens": 4})
    for command, path in (("train", config), ("evaluate", test)):
        rc, output = steermoe(command, "--config", path)
        assert rc == 0, output[-3000:]
    return config, test, folder / "out"


@pytest.mark.slow
def test_disk_full_while_training_and_evaluating(small_disk, tiny):  # noqa: F811
    folder, fill, free = small_disk
    config, test, out = trained_on(folder, tiny)
    shutil.rmtree(out / "checkpoint-2")  # as if stopped after the first checkpoint: training resumes from it
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "finished")  # as if killed before the run finished
    before = snapshot(out / "checkpoint-1", out / "eval")
    fill(leave_kib=16)  # room for the TensorBoard events, not for a checkpoint
    rc, output = steermoe("train", "--config", config)
    line = user_error(rc, output, "run the same command again")
    assert "No space left on device" in line or "is full" in line
    rc, output = steermoe("evaluate", "--config", test, "--checkpoint", out / "checkpoint-1")
    user_error(rc, output, f"cannot write the evaluation results {out / 'eval'}: No space left on device",
               "Free space or make the folder writable, then run the same command again: earlier results there are "
               "kept")
    assert snapshot(out / "checkpoint-1", out / "eval") == before  # the last good checkpoint and results are intact
    assert not (out / "final").exists() and not (out / "checkpoint-2" / "complete.json").exists()
    free()
    rc, output = steermoe("train", "--config", config)  # the same command, with space again, finishes
    assert rc == 0 and f"resuming from {out / 'checkpoint-1'}" in output, output[-3000:]
    assert (out / "final" / "model.safetensors").is_file()


def test_file_size_limit_while_saving_a_checkpoint(tiny, tmp_path):  # noqa: F811
    """A full disk without root (ulimit -f): the checkpoint cannot be written, the earlier ones stay complete."""
    config, _, out = trained_on(tmp_path / "run", tiny)
    shutil.rmtree(out / "checkpoint-2")  # as if stopped after the first checkpoint: training resumes from it
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "finished")  # as if killed before the run finished
    before = snapshot(out)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    rc, output = steermoe("train", "--config", config, preexec_fn=limit)
    user_error(rc, output, "run the same command again")
    assert "files are limited to 4 KiB (ulimit -f)" in output or "File too large" in output
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before was changed
    assert not (out / "final").exists() and not (out / "checkpoint-2" / "complete.json").exists()


@pytest.mark.slow
def test_read_only_results_folder(tiny, tmp_path):  # noqa: F811
    """A read-only mount as root; without root, a folder without write permission (which does not stop root)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted and os.geteuid() == 0:
        pytest.skip("running as root where nothing can be mounted: no folder is read-only to root")
    try:
        config, test, out = trained_on(folder, tiny)
        # as if stopped after the first checkpoint: training has to write (a finished one would do nothing)
        for unfinished in ("checkpoint-2", "final", "finished"):
            shutil.rmtree(out / unfinished)
        before = snapshot(out)
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        rc, output = steermoe("evaluate", "--config", test, "--checkpoint", out / "checkpoint-1")
        reason = "Read-only file system" if mounted else "Permission denied"
        user_error(rc, output, reason, "make the folder writable, then run the same command again")
        rc, output = steermoe("train", "--config", config)
        user_error(rc, output, reason)
        assert snapshot(out) == before
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)


# ---- data preparation (steermoe data prepare) ----------------------------------------------------------------
def prepare(corpus: str, root, out, *extra) -> tuple[int, str]:
    return steermoe("data", "prepare", "--corpus", corpus, "--root", root, "--out", out, "--workers", 1, *extra)


def test_missing_corpus_folder(prepared_before, tmp_path):
    before = snapshot(prepared_before)
    user_error(*prepare("librispeech", tmp_path / "LibriSpeech", prepared_before),
               f"LibriSpeech: {tmp_path / 'LibriSpeech'} does not exist or is not a folder (expected split folders "
               f"such as train-clean-100/ and test-clean/)")
    assert snapshot(prepared_before) == before


@pytest.mark.parametrize("corpus, message", [
    ("librispeech", "LibriSpeech: no {split}/{speaker}/{chapter}/*.trans.txt under {root}; point the catalog at the "
                    "folder that holds train-clean-100/"),
    ("aishell1", "AISHELL-1: {root}/transcript/aishell_transcript_v0.8.txt not found; the corpus folder must hold "
                 "transcript/aishell_transcript_v0.8.txt and wav/{split}/{speaker}/*.wav"),
])
def test_corpus_with_the_wrong_layout(prepared_before, tmp_path, corpus, message):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "19-198-0000.flac").write_bytes(audio_bytes())  # audio, but not in the corpus's published layout
    before = snapshot(prepared_before)
    user_error(*prepare(corpus, root, prepared_before), message.replace("{root}", str(root)))
    assert snapshot(prepared_before) == before


def test_corrupted_empty_and_truncated_audio_are_skipped_and_listed(tmp_path):
    flac, wav = audio_bytes(1.0), audio_bytes(1.0, fmt="WAV")
    root = librispeech(tmp_path / "LibriSpeech", {
        "19-198-0000.flac": flac, "19-198-0001.flac": b"fLaC" + b"\x00garbage" * 50, "19-198-0002.flac": b"",
        "19-198-0003.flac": flac[:len(flac) // 2], "19-198-0004.flac": wav[:len(wav) // 2]},
        "".join(f"19-198-000{i} WORDS {i}\n" for i in range(5)))
    rc, output = prepare("librispeech", root, tmp_path / "out")
    assert rc == 0 and TRACEBACK not in output, output[-3000:]
    assert "librispeech/test-clean: 1 rows" in output
    assert "dropped: {'truncated audio': 1, 'undecodable audio': 3}" in output
    rejects = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert sorted(rejects) == [f"19-198-000{i}" for i in range(1, 5)]
    assert rejects["19-198-0004"]["reason"] == "truncated audio"
    assert "the data chunk holds" in rejects["19-198-0004"]["detail"]
    assert all(r["source"].startswith(str(root / "test-clean" / "19" / "198" / "19-198.trans.txt"))
               for r in rejects.values())


def test_wrong_sample_rate_and_stereo_are_converted_to_16khz_mono(tmp_path):
    rows = [{"audio": audio_bytes(1.0, rate=8000, fmt="WAV"), "text": "eight kilohertz"},
            {"audio": audio_bytes(1.5, rate=44100, channels=2), "text": "stereo at 44.1 kHz"}]
    (tmp_path / "mine").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine" / "train.parquet")
    rc, output = prepare("parquet", tmp_path / "mine", tmp_path / "out")
    assert rc == 0 and TRACEBACK not in output and "parquet/mine: 2 rows" in output, output[-3000:]
    prepared = pq.read_table(tmp_path / "out" / "mine.parquet").to_pylist()
    for row, seconds in zip(prepared, (1.0, 1.5)):
        info = sf.info(io.BytesIO(row["audio"]))
        assert (info.samplerate, info.channels) == (16000, 1) and abs(info.duration - seconds) < 0.01


def test_transcript_with_malformed_lines(tmp_path):
    root = librispeech(tmp_path / "LibriSpeech", {"19-198-0000.flac": audio_bytes(), "19-198-0001.flac": audio_bytes()},
                       "19-198-0000 NORTHANGER ABBEY\nBADLINE WITHOUT AN ID\n19-198-0001\n")
    rc, output = prepare("librispeech", root, tmp_path / "out")
    assert rc == 0 and TRACEBACK not in output, output[-3000:]
    assert "dropped: {'empty transcript': 1, \"malformed transcript line (expected 'SPK-CHAP-UTT TEXT')\": 1}" in output
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    trans = root / "test-clean" / "19" / "198" / "19-198.trans.txt"
    assert {(r["source"], r["reason"]) for r in rejects} == {
        (f"{trans}:2", "malformed transcript line (expected 'SPK-CHAP-UTT TEXT')"), (f"{trans}:3", "empty transcript")}


def test_split_left_empty_keeps_the_earlier_corpus(prepared_before, tmp_path):
    root = librispeech(tmp_path / "LibriSpeech", {"19-198-0000.flac": b"not audio"}, "19-198-0000 BROKEN\n")
    before = snapshot(prepared_before)
    user_error(*prepare("librispeech", root, prepared_before),
               "librispeech: split 'test-clean' has no usable rows (1 rejected, 0 filtered: {'undecodable audio': 1}); "
               "check the corpus layout and the filters")
    assert snapshot(prepared_before) == before
    assert not list(prepared_before.parent.glob(".prepared.*"))  # nothing half-built left behind


def test_every_row_filtered_out_keeps_the_earlier_corpus(prepared_before, tmp_path):
    root = librispeech(tmp_path / "LibriSpeech", {"19-198-0000.flac": audio_bytes(3.0)}, "19-198-0000 LONG\n")
    before = snapshot(prepared_before)
    user_error(*prepare("librispeech", root, prepared_before, "--max-audio-length", 2),
               "librispeech: split 'test-clean' has no usable rows (0 rejected, 1 filtered: {'audio longer than max_audio_length "
               "(2 s)': 1})", "(filter_dataset, max_audio_length, max_text_characters)")
    assert snapshot(prepared_before) == before
