"""The fault and bad-input campaign: what a hostile user does to a run, each case a test that CI runs.

Held before, tested where the mechanism lives: kills during preparation, training, evaluation and aggregation redo only
what is needed and give the same table (tests/test_crash.py); a truncated or hash-mismatched checkpoint is moved aside
and the previous one resumes exactly (tests/test_bad_inputs.py, tests/test_checkpoint_safety.py); two workflows in one
folder are refused, matrix, catalog and template attacks are rejected with file, line and cell (tests/test_bad_inputs.py,
tests/test_security.py); no pickle is ever loaded (tests/test_checkpoint_safety.py).

Here, the cases that did not hold, one section each:
1. a finished training is final: run again, it does nothing; a kill after final/ is written restores the same bytes
2. evaluation never truncates audio longer than the encoder's window
3. YAML alias bombs and huge axes products are refused before they are expanded
4. every float setting is finite
5. duplicate utterance ids are renamed (preparation) or refused (raw parquet), naming both sources
6. a full disk, a truncated weights file: one `steermoe: error:` line naming the file, nothing partial left
7. max_steps 0, absurd expert counts, NUL-only transcripts, the FireRedASR loader's message
"""
import json
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.test_bad_inputs import (bad_config, snapshot, steermoe, trained, user_error,  # noqa: F401 (fixtures)
                                   workflow, workflow_error)
from tests.test_crash import (EXPERIMENT, files, finish, in_log, kill_group, run_snakemake, start, start_snakemake,
                              table_without_timing, tiny_workflow, wait_until)
from tests.test_train import write_config


def run_steermoe(args: list, log: Path, cwd: Path) -> tuple[int, str]:
    """`steermoe ARGS` to the end in `cwd`: its exit code and output."""
    proc = start(args, log, cwd)
    code = proc.wait(timeout=600)
    return code, log.read_text()


# ---- 1. a finished training is final ---------------------------------------------------------------------------
# a checkpoint at the last step too; output_dir relative, so that a copy of the folder is the same config
TRAIN = dict(training={"max_steps": 7, "output_dir": "out"}, save_steps=3, save_total_limit=1)


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    """A config trained to the end once by the real command, and every file of its output folder then."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, tiny, **TRAIN)
    finish(["train", "--config", config.name], folder / "train.log", cwd=folder)
    return {"config": config, "files": files(folder / "out")}


def copy_of(finished_run, tmp_path) -> Path:
    """The finished run's config and output folder copied into tmp_path (hard links kept, as training made them);
    returns the config's name, which the tests run in tmp_path."""
    source = finished_run["config"].parent
    shutil.copytree(source / "out", tmp_path / "out")
    for name in ("model.safetensors", "steermoe.json", "train_summary.json"):
        (tmp_path / "out" / "final" / name).unlink()
        (tmp_path / "out" / "final" / name).hardlink_to(tmp_path / "out" / "finished" / name)
    shutil.copy(finished_run["config"], tmp_path)
    return Path(finished_run["config"].name)


def test_training_a_finished_run_again_does_nothing_and_changes_no_file(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    before = files(out)
    text = finish(["train", "--config", config], tmp_path / "again.log", tmp_path)
    assert "already trained (7 steps" in text and "nothing to do" in text
    assert "step 8/7" not in text and "Loading weights" not in text  # no model was even loaded
    assert files(out) == before


def test_a_final_folder_deleted_as_snakemake_deletes_outputs_comes_back_byte_identical(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    before = files(out / "final")
    for name in before:  # what Snakemake does to a job's outputs before it runs the job again
        (out / "final" / name).unlink()
    text = finish(["train", "--config", config], tmp_path / "again.log", tmp_path)
    assert "out/final: restored from out/finished" in text and "nothing to do" in text
    assert files(out / "final") == before


def test_killed_after_its_last_checkpoint_the_run_ends_without_another_step(finished_run, tmp_path):
    """Killed after the checkpoint of the last step and before finished/ was written: the same command ends the run
    with the uninterrupted run's weights, no step past max_steps, and deletes no checkpoint."""
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    shutil.rmtree(out / "finished")
    shutil.rmtree(out / "final")
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-7"]
    text = finish(["train", "--config", config], tmp_path / "again.log", tmp_path)
    assert "resuming from" in text and "saved at the end of training (step 7)" in text and "step 8/" not in text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints
    assert files(out / "final")["model.safetensors"] == finished_run["files"]["final/model.safetensors"]
    assert json.loads((out / "final" / "train_summary.json").read_text())["steps"] == 7


def test_another_config_for_the_same_output_folder_is_refused_with_the_difference_named(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    before = files(out)
    other = "linear_whisper_qwen_tones_train.yaml"
    (tmp_path / other).write_text((tmp_path / config).read_text().replace("max_steps: 7", "max_steps: 9"))
    code, text = run_steermoe(["train", "--config", other], tmp_path / "other.log", tmp_path)
    assert code == 2 and "Traceback" not in text, text[-2000:]
    line = text.strip().splitlines()[-1]
    assert line.startswith(f"steermoe: error: {other}: training.output_dir out holds the finished training of "
                           f"another config, layer_wise_whisper_qwen_tones_train"), line
    assert "training.max_steps: 7 -> 9" in line
    assert files(out) == before


def test_an_edited_config_trains_afresh_and_keeps_the_earlier_training_aside(finished_run, tmp_path):
    config, out = copy_of(finished_run, tmp_path), tmp_path / "out"
    earlier = (out / "finished" / "model.safetensors").read_bytes()
    (tmp_path / config).write_text((tmp_path / config).read_text().replace("max_steps: 7", "max_steps: 4"))
    text = finish(["train", "--config", config], tmp_path / "edited.log", tmp_path)
    assert "was trained with an earlier version of layer_wise_whisper_qwen_tones_train.yaml " \
           "(training.max_steps: 7 -> 4): moved to" in text
    assert json.loads((out / "final" / "train_summary.json").read_text())["steps"] == 4
    [aside] = (out / "superseded").glob("finished-*")
    assert (aside / "model.safetensors").read_bytes() == earlier


@pytest.mark.slow
def test_snakemake_killed_after_final_is_written_restores_the_same_weights_and_table(tiny, tmp_path):
    """Killed once the train job has written final/ and before Snakemake records the job: Snakemake deletes the
    job's outputs and runs it again, which restores the same bytes instead of training on."""
    reference = tiny_workflow(tmp_path / "reference", tiny)
    run_snakemake(reference, tmp_path / "reference.log")
    root = tiny_workflow(tmp_path / "wf", tiny)
    proc = start_snakemake(root, tmp_path / "killed.log")
    train_log = root / "logs" / EXPERIMENT / "train.log"
    wait_until(in_log(train_log, "final weights in"), proc, "final/ was written", timeout=900)
    kill_group(proc)
    final = root / "results" / EXPERIMENT / "train" / "final"
    written = files(final)
    assert list((root / ".snakemake" / "incomplete").iterdir()), "Snakemake had recorded the job already"

    run_snakemake(root, tmp_path / "rerun.log")
    text = train_log.read_text()
    assert "already trained (200 steps" in text and "step 201" not in text, text[-2000:]
    assert files(final) == written
    want = load_file(str(reference / "results" / EXPERIMENT / "train" / "final" / "model.safetensors"))
    got = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert table_without_timing(root / "results" / "table.csv") == \
        table_without_timing(reference / "results" / "table.csv")


# ---- 3. YAML alias bombs, huge axes products ---------------------------------------------------------------------
def alias_bomb(levels: int = 9, width: int = 10, indent: str = "  ") -> str:
    """A YAML list whose aliases expand to width ** levels strings (10 ** 9 here), in `levels` + 1 short lines."""
    lines = [f"{indent}- &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"{indent}- &a{n} [{', '.join([f'*a{n - 1}'] * width)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_in_a_config_list_is_refused_before_it_is_expanded(bad_config):
    config = bad_config.write()
    text = config.read_text().replace("parquet_dirs:\n", "parquet_dirs:\n" + alias_bomb(indent=""))
    config.write_text(text)
    user_error(*steermoe("check", config), f"{config}: its aliases expand to 1,2", "values (at most 100,000 "
               "are read); write the values out instead of nesting aliases")
    bad_config.check()


def test_a_recursive_alias_is_refused(bad_config):
    config = bad_config.write()
    config.write_text(config.read_text() + "textual_prompt: &loop [*loop]\n")
    user_error(*steermoe("check", config), f"{config}: a YAML alias refers to a value that contains it")


def test_an_alias_bomb_in_an_axes_tags_list_is_refused(workflow):
    axes = workflow / "experiments" / "bomb.yaml"
    axes.write_text("fixed: {encoder: whisper-tiny.en, decoder: smollm2, dataset: synth-en}\nblocks:\n"
                    "  - method: layer_wise\n    tags:\n" + alias_bomb(indent="      "))
    workflow_error(workflow, "experiments/bomb.yaml: its aliases expand to 1,2", args=("--config",
                                                                                           "matrix=experiments/bomb.yaml"))


def test_axes_that_multiply_to_a_million_rows_are_refused_with_the_count(workflow):
    axes = workflow / "experiments" / "sweep.yaml"
    values = ", ".join(str(v) for v in range(1, 11))
    axes.write_text("fixed: {encoder: whisper-tiny.en, decoder: smollm2, dataset: synth-en}\nblocks:\n"
                    f"  - method: layer_wise\n    num_experts: [{values}]\n    batch_size: [{values}]\n"
                    f"    max_steps: [{values}]\n    seed: [{values}]\n    pooling_kernel_size: [{values}]\n"
                    f"    save_steps: [{values}]\n")
    workflow_error(workflow, "experiments/sweep.yaml: line 3, block 1: its axes (10 num_experts x 10 batch_size x "
                             "10 max_steps x 10 seed x 10 pooling_kernel_size x 10 save_steps) expand to 1,000,000 "
                             "rows", "a matrix declares at most 20,000", args=("--config", "matrix=experiments/sweep.yaml"))


# ---- 4. every float setting is finite -----------------------------------------------------------------------
@pytest.mark.parametrize("sections, key", [
    ({"training": {"learning_rate": float("nan")}}, "training.learning_rate"),
    ({"training": {"steering_learning_rate": float("inf")}}, "training.steering_learning_rate"),
    ({"training": {"gradient_clipping": float("nan")}}, "training.gradient_clipping"),
    ({"training": {"weight_decay": float("nan")}}, "training.weight_decay"),
    ({"training": {"epochs": float("inf")}}, "training.epochs"),
    ({"steering": {"steering_scale": float("-inf")}}, "steering.steering_scale"),
    ({"max_audio_length": float("inf")}, "max_audio_length"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_non_finite_number_in_a_config_is_refused_by_check_and_by_train(bad_config, sections, key):
    config = bad_config.write(**sections)
    for command in ("check", "train --config"):
        user_error(*steermoe(*command.split(), config), f"{config}: {key}: must be a finite number, got ")
    bad_config.check()


def test_a_non_finite_number_in_the_catalog_names_the_catalog_key(workflow):
    path = workflow / "experiments" / "catalog.yaml"
    catalog = yaml.safe_load(path.read_text())
    catalog["datasets"]["synth-en"].setdefault("settings", {})["learning_rate"] = float("nan")
    path.write_text(yaml.safe_dump(catalog, allow_unicode=True))
    output = workflow_error(workflow, "experiments/catalog.yaml: datasets.synth-en.settings.learning_rate: must be a "
                                      "finite number, got nan")
    assert "train.yaml.j2" not in output


# ---- 7. smaller: max_steps 0, absurd expert counts -----------------------------------------------------------
def test_max_steps_zero_is_refused_instead_of_training_by_epochs(bad_config):
    config = bad_config.write(training={"max_steps": 0})
    user_error(*steermoe("train", "--config", config), f"{config}: training.max_steps: 0 would train no step: give a "
               "step count > 0, or -1 to train by epochs")
    bad_config.check()


def test_ten_thousand_experts_are_refused(bad_config):
    config = bad_config.write(steering={"num_experts": 10000})
    user_error(*steermoe("check", config), f"{config}: steering.num_experts: must be at most 256, got 10000")


# ---- 2. evaluation never truncates ----------------------------------------------------------------------------
def long_test_split(folder: Path, seconds: float = 45.0) -> tuple[Path, Path]:
    """A raw parquet with one utterance of `seconds` seconds (tones changing every second) and one of 2 s, and a
    second parquet holding the long one's two halves as utterances of their own."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steermoe.data.audio import encode_flac

    t = np.arange(16000) / 16000
    long = np.concatenate([0.3 * np.sin(2 * np.pi * (300 + 37 * k) * t) for k in range(int(seconds))])
    short = long[:32000]
    half = len(long) // 2
    rows = {"whole.parquet": [("long", long, "one two three"), ("short", short, "one")],
            "halves.parquet": [("first", long[:half], "one"), ("second", long[half:], "two three")]}
    for name, items in rows.items():
        pq.write_table(pa.Table.from_pylist([{"id": i, "audio": encode_flac(a.astype(np.float32)), "text": text,
                                              "duration": len(a) / 16000} for i, a, text in items]), folder / name)
    return folder / "whole.parquet", folder / "halves.parquet"


def test_an_utterance_longer_than_whispers_window_is_decoded_in_windows_and_the_table_says_so(tiny, tmp_path):
    """45 s under Whisper's 30 s window: decoded as two 22.5-s windows whose hypotheses are joined (equal to decoding
    the two halves as utterances of their own), never cut at 30 s; metrics.json and the table's note count it."""
    from steermoe.declare.runconfig import load_run_config
    from steermoe.report.tables import _windowed_note
    from steermoe.run.evaluate import evaluate

    whole, halves = long_test_split(tmp_path)
    trained = write_config(tmp_path, tiny, training={"max_steps": 1})
    finish(["train", "--config", trained], tmp_path / "train.log")
    results = {}
    for name, data in (("whole", whole), ("halves", halves)):
        test = write_config(tmp_path, tiny, name=f"layer_wise_whisper_qwen_{name}_test", parquet_dirs=[str(data)],
                            evaluation={"batch_size": 1, "max_new_tokens": 6, "output_dir": str(tmp_path / name)})
        results[name] = evaluate(load_run_config(test), log=lambda *_: None)
    hyps = {name: {json.loads(line)["id"]: json.loads(line)["hypothesis"]
                   for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()} for name in results}
    assert hyps["whole"]["long"] == " ".join(h.strip() for h in (hyps["halves"]["first"], hyps["halves"]["second"])
                                             if h.strip())
    assert results["whole"]["windowed"] == {"utterances": 1, "window_seconds": 30.0, "most_windows": 2,
                                            "ids": ["long"]}
    assert "windowed" not in results["halves"] and results["whole"]["utterances"] == 2
    assert _windowed_note(results["whole"]["windowed"]) == \
        "; 1 utterance(s) longer than 30 s decoded in consecutive windows (up to 2) and joined"


def test_test_utterances_dropped_at_preparation_are_counted_in_metrics_and_the_table_note(tiny, tmp_path):
    import pyarrow.parquet as pq

    from steermoe.declare.runconfig import load_run_config
    from steermoe.report.tables import _dropped_note
    from steermoe.run.evaluate import evaluate

    (tmp_path / "raw").mkdir()
    pq.write_table(audio_table(None, ["one", "two", "three", "four"]), tmp_path / "raw" / "part.parquet")
    code, text = steermoe("data", "prepare", "--corpus", "parquet", "--root", tmp_path / "raw", "--split", "test",
                          "--out", tmp_path / "prepared", "--workers", 1, "--max-audio-length", 0.75)
    assert code == 0, text[-3000:]  # 0.5 to 0.8 s of audio: the last is longer than 0.75 s
    trained = write_config(tmp_path, tiny, training={"max_steps": 1})
    finish(["train", "--config", trained], tmp_path / "train.log")
    test = write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test",
                        parquet_dirs=[str(tmp_path / "prepared" / "test.parquet")],
                        evaluation={"max_new_tokens": 4, "output_dir": str(tmp_path / "eval")})
    result = evaluate(load_run_config(test), log=lambda *_: None)
    reason = "audio longer than max_audio_length (0.75 s)"
    assert result["utterances"] == 3
    assert result["dropped_at_preparation"] == {"utterances": 1, "of": 4, "reasons": {reason: 1}}
    assert _dropped_note(result["dropped_at_preparation"], 3) == \
        f"; 3 of 4 utterances scored, 1 dropped at preparation ({reason}: 1)"


def test_training_on_audio_longer_than_whispers_window_stops_with_one_line(tiny, tmp_path):
    whole, _ = long_test_split(tmp_path)
    config = write_config(tmp_path, tiny, training={"max_steps": 1, "batch_size": 2}, parquet_dirs=[str(whole)],
                          filter_dataset=False)
    code, text = run_steermoe(["train", "--config", config], tmp_path / "train.log", tmp_path)
    assert code == 2 and "Traceback" not in text, text[-3000:]
    assert text.strip().splitlines()[-1] == (
        "steermoe: error: Whisper hears at most 30 s of audio; an utterance of 45.0 s reached it: lower "
        "max_audio_length (training) or keep filter_dataset on; evaluation decodes such utterances in windows")


# ---- 5. duplicate utterance ids ---------------------------------------------------------------------------------
def audio_table(ids: list | None, texts: list[str]):
    import pyarrow as pa

    from tests.test_bad_inputs import audio_bytes

    rows = [{"audio": audio_bytes(0.5 + 0.1 * n), "text": text} for n, text in enumerate(texts)]
    if ids is not None:
        rows = [{"id": utt, **row} for utt, row in zip(ids, rows)]
    return pa.Table.from_pylist(rows)


def test_the_same_file_name_in_two_folders_of_a_parquet_corpus_gets_unique_ids_and_a_warning(tmp_path):
    import pyarrow.parquet as pq

    from steermoe.data.layout import read_split

    root = tmp_path / "corpus"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        pq.write_table(audio_table(None, [f"{folder} one", f"{folder} two"]), root / folder / "part.parquet")
    out = tmp_path / "prepared"
    code, text = steermoe("data", "prepare", "--corpus", "parquet", "--root", root, "--split", "test", "--out", out,
                          "--workers", 1)
    assert code == 0, text[-3000:]
    assert (f"steermoe: warning: parquet/test: utterance id 'part-0' of {root}/b/part.parquet:row 0 is already the id "
            f"of {root}/a/part.parquet:row 0; renamed part-0-dup2") in text
    table = read_split(out, "test")
    assert table.column("id").to_pylist() == ["part-0", "part-1", "part-0-dup2", "part-1-dup2"]
    assert table.column("text").to_pylist() == ["a one", "a two", "b one", "b two"]
    renamed = json.loads((out / "manifest.json").read_text())["renamed"]["test"]
    assert [(r["id"], r["renamed"]) for r in renamed] == [("part-0", "part-0-dup2"), ("part-1", "part-1-dup2")]


def test_a_parquet_corpus_keeps_its_own_ids(tmp_path):
    import pyarrow.parquet as pq

    from steermoe.data.layout import read_split

    pq.write_table(audio_table(["spk1-utt7", "spk2-utt9"], ["one", "two"]), tmp_path / "test.parquet")
    code, text = steermoe("data", "prepare", "--corpus", "parquet", "--root", tmp_path / "test.parquet", "--out",
                          tmp_path / "prepared", "--workers", 1)
    assert code == 0, text[-3000:]
    assert read_split(tmp_path / "prepared", "test").column("id").to_pylist() == ["spk1-utt7", "spk2-utt9"]


def test_duplicate_ids_in_raw_parquet_test_data_are_refused_naming_both_rows(bad_config, tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(audio_table(["u1", "u2"], ["one", "two"]), tmp_path / "first.parquet")
    pq.write_table(audio_table(["u3", "u2"], ["three", "two again"]), tmp_path / "second.parquet")
    config = bad_config.write(name="layer_wise_whisper_qwen_tones_test", parquet_dirs=[
        str(tmp_path / "first.parquet"), str(tmp_path / "second.parquet")])
    user_error(*steermoe("evaluate", "--config", config), f"{config}: parquet_dirs: utterance id 'u2' is both "
               f"{tmp_path}/first.parquet row 1 and {tmp_path}/second.parquet row 1; predictions and comparisons "
               f"pair utterances by id")
    bad_config.check()


# ---- 7. smaller: a NUL-only transcript --------------------------------------------------------------------------
def test_a_transcript_of_control_characters_only_is_rejected_as_empty(tmp_path):
    import pyarrow.parquet as pq

    from steermoe.data.layout import read_split

    pq.write_table(audio_table(None, ["\x00\x00", "one\x00 two\x1b"]), tmp_path / "test.parquet")
    code, text = steermoe("data", "prepare", "--corpus", "parquet", "--root", tmp_path / "test.parquet", "--out",
                          tmp_path / "prepared", "--workers", 1)
    assert code == 0, text[-3000:]
    assert read_split(tmp_path / "prepared", "test").column("text").to_pylist() == ["one two"]
    [reject] = [json.loads(line) for line in (tmp_path / "prepared" / "rejects.jsonl").read_text().splitlines()]
    assert reject["reason"] == "empty transcript" and reject["id"] == "test-0"


# ---- 6. a full disk, a truncated weights file: one line naming the file ----------------------------------------
def test_a_full_disk_reported_only_in_a_librarys_own_error_names_the_folder(tmp_path):
    """safetensors reports ENOSPC as a SafetensorError, not an OSError; the disk may have room again once the failed
    file is gone: the error itself says what happened."""
    from safetensors import SafetensorError

    from steermoe.errors import StorageError
    from steermoe.fsutil import storage_errors

    folder = tmp_path / "checkpoint-5"
    with pytest.raises(StorageError) as caught:
        with storage_errors(folder, "checkpoint", "training resumes from the last complete checkpoint"):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
    assert str(caught.value).startswith(f"cannot write the checkpoint {folder}: No space left on device "
                                        f"(SafetensorError: ")
    with pytest.raises(SafetensorError):  # any other error is not the disk's
        with storage_errors(folder, "checkpoint", "kept"):
            raise SafetensorError("Error while deserializing header: HeaderTooLarge")


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_a_damaged_final_weights_file_is_named_by_check_and_by_evaluate(bad_config, damage):
    weights = bad_config.out / "final" / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()  # final/ holds links: damage this file only, as a bad copy would
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>not found</html>" * 40)
    test = bad_config.write(name="layer_wise_whisper_qwen_tones_test")
    expected = f"{weights} is not a readable safetensors weights file ("
    user_error(*steermoe("check", test), expected, "train again (move")
    user_error(*steermoe("evaluate", "--config", test), expected, "point evaluation.checkpoint at another trained "
                                                                  "folder")


def test_a_file_size_limit_during_evaluation_names_the_folder_and_leaves_nothing_partial(bad_config):
    test = bad_config.write(name="layer_wise_whisper_qwen_tones_test")
    before = snapshot(bad_config.out)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    rc, output = steermoe("evaluate", "--config", test, preexec_fn=limit)
    user_error(rc, output, f"cannot write the evaluation results {bad_config.out / 'eval'}: File too large",
               "run the same command again: earlier results there are kept")
    assert snapshot(bad_config.out) == before
    assert not [p.name for p in bad_config.out.iterdir() if p.name.endswith(".partial")]


def test_a_fireredasr_checkpoint_the_safe_loader_cannot_read_gets_no_advice_to_unpickle_it(tmp_path):
    """torch's message opens with advice to re-run with weights_only=False (which would run the file's code); the
    loader says what is wrong instead."""
    import zipfile

    from steermoe.errors import ModelFolderError
    from steermoe.model.encoders import load_encoder
    from tests.tiny import save_fireredasr_folder

    folder = Path(save_fireredasr_folder(tmp_path / "FireRedASR-AED-tiny")[0])
    checkpoint = folder / "model.pth.tar"
    with zipfile.ZipFile(checkpoint) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    pickle_name = next(name for name in members if name.endswith("data.pkl"))
    members[pickle_name] = b"\x80\x02K\x01K\x02\x93."  # STACK_GLOBAL on two integers: no global is named
    with zipfile.ZipFile(checkpoint, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFolderError) as caught:
        load_encoder(folder)
    message = str(caught.value)
    assert "not a readable PyTorch checkpoint (Unsupported operand 147)" in message
    assert "weights_only" not in message
