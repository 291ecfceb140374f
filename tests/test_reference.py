"""Reference rows (method `reference`): the frozen encoder's own model decoded with no training, scored like every
other row; configs that cannot be a reference row are refused before any weights load."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import torch
import yaml

from steermoe.declare.runconfig import load_run_config
from steermoe.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A prepared synth-en corpus whose test split has 4 utterances."""
    from steermoe.data.synth_en import build_synth_en

    out = tmp_path_factory.mktemp("reference") / "synth-en"
    build_synth_en(out, {"train": 1, "dev": 1, "test": 4}, seed=3, workers=1, progress=False)
    return out


def reference_config(folder: Path, whisper, parquet, name="reference_whisper_own_synthen_test", **sections) -> Path:
    """A reference row's config as a user writes it: the Whisper folder, the test data and where to write; no
    llm_decoder, steering or training section. Keyword arguments replace or add sections."""
    config = {"method": "reference", "whisper_encoder": {"model_path": str(whisper)}, "parquet_dirs": [str(parquet)],
              "evaluation": {"output_dir": str(folder / "eval"), "batch_size": 3, "max_new_tokens": 40,
                             "bootstrap_resamples": 200}}
    config.update(sections)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def own_generate(folder, audio: list, **options) -> list[str]:
    """What the frozen model's own pipeline writes: its folder's feature extractor, generate, its tokenizer."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    features = WhisperFeatureExtractor.from_pretrained(folder)(audio, sampling_rate=16000,
                                                               return_tensors="pt").input_features  # (B, 80, 3000)
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        tokens = model.generate(features, max_new_tokens=40, **options)
    return [text.strip() for text in WhisperTokenizer.from_pretrained(folder).batch_decode(tokens,
                                                                                          skip_special_tokens=True)]


@pytest.mark.parametrize("model, options, language", [
    ("whisper-tiny.en", {}, "en (an English-only model: no language token)"),
    ("whisper-base", {"language": "en", "task": "transcribe"}, "en"),  # multilingual: told the rows' language
], ids=["english-only", "multilingual"])
def test_a_reference_rows_metrics_are_those_of_the_frozen_models_own_generate_on_that_test_set(
        embedded_models, corpus, tmp_path, model, options, language):
    from steermoe import metrics
    from steermoe.data.audio import decode
    from steermoe.data.layout import read_split
    from steermoe.run.evaluate import evaluate

    folder = embedded_models[model]
    rows = read_split(corpus, "test").to_pylist()
    expected = own_generate(folder, [decode(r["audio"]) for r in rows], **options)
    refs = [r["text"] for r in rows]

    # fp32 on the CPU, as the direct side decodes (a GPU job would choose bf16)
    config = reference_config(tmp_path, folder, corpus / "test.parquet", training={"bf16": False})
    result = evaluate(load_run_config(config), device=torch.device("cpu"), log=lambda *_: None)
    lines = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [r["id"] for r in rows]
    assert [x["hypothesis"] for x in lines] == expected
    # scored exactly as every other row, and as jiwer scores the same words
    score = metrics.score_asr(refs, expected, "wer", seed=0, resamples=200)
    score.pop("per_utterance")
    assert {key: result[key] for key in score} == score
    normalised = [metrics.normalize_english(text) for text in refs], [metrics.normalize_english(h) for h in expected]
    assert result["value"] == pytest.approx(jiwer.wer(*normalised))
    assert result["raw"]["value"] == pytest.approx(jiwer.wer(refs, expected))
    assert result["value"] < 0.5, expected  # the model heard the speech: equal outputs are not equally empty ones
    assert (result["method"], result["checkpoint"], result["trainable_parameters"]) == ("reference", None, 0)
    assert (result["decoder"], result["reference_model"], result["language"]) == ("whisper's own", str(folder),
                                                                                  language)
    assert result["decoding"]["strategy"] == "greedy" and result["precision"] == "fp32"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["metrics.json", "predictions.jsonl"]


def test_train_and_check_refuse_a_reference_training_config_and_check_loads_no_weights(embedded_models, corpus,
                                                                                      tiny, tmp_path, monkeypatch):
    from steermoe.run import train as training

    broken = tmp_path / "whisper-broken"  # whisper-tiny.en's files, its weights unreadable: nothing may load them
    shutil.copytree(embedded_models["whisper-tiny.en"], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    test = corpus / "test.parquet"
    trains = reference_config(tmp_path, broken, test, name="reference_whisper_own_synthen_train")
    monkeypatch.setattr(training, "load_model", lambda *_: pytest.fail("train loaded weights"))
    with pytest.raises(ConfigError, match=f"{trains}: method reference trains nothing .*evaluate it with `steermoe "
                                          f"evaluate`"):
        training.train(load_run_config(trains), log=lambda *_: None)

    evaluates = reference_config(tmp_path, broken, test)
    unnamed = reference_config(tmp_path, broken, test, name="whisper_frozen")  # `method: reference` says it all
    no_tokenizer = reference_config(tmp_path, tiny["encoder"], test, name="reference_tiny_own_synthen_test")
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "check", trains, evaluates, unnamed, no_tokenizer],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("steermoe: error: ")]
    assert len(errors) == 2 and "Traceback" not in out.stderr, out.stderr
    assert errors[0].startswith(f"steermoe: error: {trains}: method reference trains nothing")
    assert f"{no_tokenizer}: whisper_encoder.model_path: {tiny['encoder']} has no tokenizer.json or vocab.json" \
        in errors[1]
    assert f"{evaluates}: ok (evaluation config, reference)" in out.stdout
    assert f"{unnamed}: ok (evaluation config, reference)" in out.stdout


def test_a_reference_config_needs_no_llm_decoder_and_ignores_steering_and_training(tmp_path):
    run = load_run_config(reference_config(tmp_path, "/m/whisper", "/d/test"))
    assert (run.method, run.mode, run.encoder_kind, run.decoder.model_name) == ("reference", "eval", "whisper", None)
    assert run.eval_dir == tmp_path / "eval"
    # as a template renders it: every section present, the decoder empty, steering and LoRA settings irrelevant
    rendered = load_run_config(reference_config(
        tmp_path, "/m/whisper", "/d/test", name="whisper_frozen", llm_decoder={"model_name": None},
        steering={"num_experts": 4}, lora={"r": 4}, training={"output_dir": "/r/out", "bf16": False},
        evaluation={"metric": "wer"}))
    assert rendered.method == "reference" and rendered.training.bf16 is False and rendered.decoder.model_name is None
    assert str(rendered.eval_dir) == "/r/out/eval"  # training.output_dir is where it goes when evaluation says not
    with pytest.raises(ConfigError, match="unknown key 'llm_decoder.model'"):  # an ignored section is still checked
        load_run_config(reference_config(tmp_path, "/m/whisper", "/d/test", llm_decoder={"model": "/m/qwen"}))
    with pytest.raises(ConfigError, match="'evaluation.output_dir' is required: method reference trains nothing"):
        load_run_config(reference_config(tmp_path, "/m/whisper", "/d/test", evaluation={}))
    with pytest.raises(ConfigError, match="protocol: original.* evaluate it with protocol honest"):
        load_run_config(reference_config(tmp_path, "/m/whisper", "/d/test",
                                         evaluation={"output_dir": "/r/eval", "protocol": "original"}))
    # the other methods still need their decoder
    with pytest.raises(ConfigError, match="the 'llm_decoder' section is missing"):
        load_run_config(reference_config(tmp_path, "/m/whisper", "/d/test", name="linear_whisper_qwen_x_test",
                                         method="linear", training={"output_dir": "/r/out"}))


def test_a_reference_row_with_a_conformer_encoder_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "reference_conformer_own_aishell_test.yaml"
    path.write_text(yaml.safe_dump({"conformer_encoder": {"model_path": "/m/fireredasr"}, "parquet_dirs": ["/d/test"],
                                    "evaluation": {"output_dir": "/r/eval"}}))
    with pytest.raises(ConfigError, match=f"{path}: 'conformer_encoder' with method reference: reference decoding "
                                          f"is available for Whisper encoders only"):
        load_run_config(path)


def test_a_reference_row_builds_no_steermoe_model_and_loads_no_checkpoint(tmp_path, tiny):
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.run.evaluate import evaluate

    with pytest.raises(ConfigError, match="method: reference builds no SteerMoE model"):
        SteerMoEConfig(method="reference")
    run = load_run_config(reference_config(tmp_path, "/m/whisper", f"{tiny['corpus']}/test.parquet"))
    with pytest.raises(ConfigError, match="method reference loads no checkpoint"):
        evaluate(run, checkpoint=tmp_path / "final", log=lambda *_: None)


def test_a_multilingual_reference_model_is_told_each_rows_language():
    from steermoe.model.reference import language_plan

    assert language_plan(False, ["zh", None], "test") == (False, "en (an English-only model: no language token)")
    assert language_plan(True, ["zh", "en", "zh"], "test") == (True, "en, zh")
    assert language_plan(True, [None, None], "test") == (False, "detected by the model (the test rows carry no "
                                                                "language)")
    with pytest.raises(DataError, match="test: 1 of 2 rows carry no language"):
        language_plan(True, ["zh", None], "test")


def test_a_reference_row_decodes_an_utterance_longer_than_30_s_in_windows(embedded_models, corpus, tmp_path):
    """Two test sentences 30 s apart in one 36-s utterance: Whisper's own decoder hears it as two 18-s windows
    (what its pipeline writes for each half, joined), not cut at 30 s, where the second sentence would be lost."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steermoe.data.audio import decode, encode_flac
    from steermoe.data.layout import read_split
    from steermoe.run.evaluate import evaluate

    folder = embedded_models["whisper-tiny.en"]
    first, second = read_split(corpus, "test").to_pylist()[:2]
    audio = [decode(first["audio"]), decode(second["audio"])]
    long = np.zeros(36 * 16000, dtype=np.float32)
    long[:len(audio[0])] = audio[0]
    long[-len(audio[1]):] = audio[1]
    pq.write_table(pa.Table.from_pylist([{"id": "long", "audio": encode_flac(long), "duration": 36.0,
                                          "text": f"{first['text']} {second['text']}"}]), tmp_path / "long.parquet")
    expected = " ".join(own_generate(folder, [long[:18 * 16000], long[18 * 16000:]]))

    config = reference_config(tmp_path, folder, tmp_path / "long.parquet", training={"bf16": False})
    result = evaluate(load_run_config(config), device=torch.device("cpu"), log=lambda *_: None)
    [line] = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert line["hypothesis"] == expected
    assert result["windowed"] == {"utterances": 1, "window_seconds": 30.0, "most_windows": 2, "ids": ["long"]}
