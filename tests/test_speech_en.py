"""speech-en: ordinary sentences, split by source section; test-only voices; deterministic, intelligible audio."""
import json
import re

import jiwer
import pytest
import torch

from steermoe.data.audio import decode
from steermoe.data.layout import read_split
from steermoe.data.speech_en import (DEFAULT_SIZES, SPLITS, TEST_ONLY_VOICES, TRAIN_VOICES, build_speech_en,
                                     fortune_sentences, normalise, plan, sentence_pools, wordnet_sentences)
from steermoe.errors import DataError
from steermoe.features import AudioFeatures

SIZES = {"train": 14, "dev": 4, "test": 6, "test-ood": 10}


@pytest.fixture(scope="module")
def pools():
    return sentence_pools(wordnet_sentences(), fortune_sentences())


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds with the same seed and different worker counts: (first folder, second folder)."""
    root = tmp_path_factory.mktemp("speech-en")
    build_speech_en(root / "a", SIZES, seed=5, workers=2, progress=False)
    build_speech_en(root / "b", SIZES, seed=5, workers=1, progress=False)
    return root / "a", root / "b"


def test_numbers_and_symbols_are_written_out():
    cases = {
        "In 1984 he paid $5 for it": "in nineteen eighty four he paid five dollars for it",
        "she came 21st of 1,200 runners": "she came twenty first of one thousand two hundred runners",
        "prices rose 3.5% in the 1920s": "prices rose three point five percent in the nineteen twenties",
        "it was built in 1905 & sold in 2005": "it was built in nineteen oh five and sold in two thousand five",
        "he counted to 40 and then to 112": "he counted to forty and then to one hundred twelve",
    }
    for raw, text in cases.items():
        assert normalise(raw).text == text, raw
    spoken = normalise("I'd love to go -- but \"not\" today, said the 3rd man.").spoken
    assert spoken == "I'd love to go, but not today, said the third man."


def test_unspeakable_or_badly_sized_sentences_are_dropped():
    assert normalise("the NASA launch was delayed again today") is None  # acronym: letters or a word?
    assert normalise("the 3D printer jammed again this morning") is None  # a number it cannot say for sure
    assert normalise("see chapter <7> of the big manual") is None  # a symbol left over
    assert normalise("far too short") is None
    assert normalise(" ".join(["word"] * 21)) is None
    assert normalise(" ".join(["word"] * 20)) is not None


def test_the_sources_give_thousands_of_sentences_and_words(pools):
    assert len(pools["train"]) >= 20000 and len(pools["test"]) >= 2000 and len(pools["test-ood"]) >= 5000
    train = plan(DEFAULT_SIZES, seed=0, pools=pools)["train"]
    assert len({w for u in train for w in u.sentence.text.split()}) >= 4000  # measured 5,605 words


def test_splits_share_no_sentence_and_no_source_section(pools):
    texts = {split: {s.text for s in pool} for split, pool in pools.items()}
    sections = {split: {s.section for s in pool} for split, pool in pools.items()}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            assert not texts[first] & texts[second], (first, second)
            assert not sections[first] & sections[second], (first, second)
    assert all(s.startswith("fortunes:") for s in sections["test-ood"])
    assert all(s.startswith("wordnet:") for split in ("train", "dev", "test") for s in sections[split])
    assert all(len(pool) == len({s.text for s in pool}) for pool in pools.values())  # deduplicated


def test_test_only_voices_speak_only_the_out_of_domain_test(pools):
    plans = plan(DEFAULT_SIZES, seed=0, pools=pools)
    heard = {split: {u.voice for u in rows} for split, rows in plans.items()}
    assert heard["test-ood"] == set(TEST_ONLY_VOICES)
    assert heard["train"] == set(TRAIN_VOICES) and not heard["train"] & set(TEST_ONLY_VOICES)
    assert not (heard["dev"] | heard["test"]) & set(TEST_ONLY_VOICES)
    assert sum(v.startswith("piper") for v in heard["train"]) >= 3 and len(heard["train"]) >= 10


def test_only_training_audio_is_perturbed(pools):
    plans = plan(DEFAULT_SIZES, seed=0, pools=pools)
    train = plans["train"]
    assert {u.speed for u in train} == {0.9, 1.0, 1.1} and any(u.snr_db for u in train)
    assert len({u.gain_db for u in train}) > 10
    for split in ("dev", "test", "test-ood"):
        assert all(u.speed == 1.0 and u.gain_db == 0.0 and u.snr_db is None for u in plans[split]), split


def test_one_split_size_never_changes_another_split(pools):
    small = plan({"train": 100, "dev": 20, "test": 30, "test-ood": 30}, seed=1, pools=pools)
    large = plan({"train": 400, "dev": 20, "test": 30, "test-ood": 60}, seed=1, pools=pools)
    assert small["dev"] == large["dev"] and small["test"] == large["test"]
    assert large["train"][:100] == small["train"] and large["test-ood"][:30] == small["test-ood"]
    assert plan({"train": 100}, seed=2, pools=pools)["train"] != small["train"]  # the seed matters


def test_unknown_splits_and_oversized_requests_are_refused(pools):
    with pytest.raises(DataError, match="unknown split.*'tset'"):
        plan({"train": 10, "tset": 5}, seed=0, pools=pools)
    with pytest.raises(DataError, match="test-ood sentences asked for"):
        plan({"test-ood": len(pools["test-ood"]) + 1}, seed=0, pools=pools)


def test_build_is_byte_identical_whatever_the_worker_count(builds):
    first, second = builds
    names = sorted(p.name for p in first.iterdir())
    assert {f"{split}.parquet" for split in SIZES} | {"manifest.json", "rejects.jsonl"} <= set(names)
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_built_splits_are_disjoint_and_keep_test_only_voices_out_of_training(builds):
    rows = {split: read_split(builds[0], split).to_pylist() for split in SIZES}
    assert {split: len(r) for split, r in rows.items()} == SIZES
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    for i, first in enumerate(SIZES):
        for second in list(SIZES)[i + 1:]:
            assert not texts[first] & texts[second], (first, second)
    assert not {r["speaker"] for r in rows["train"]} & set(TEST_ONLY_VOICES)
    assert {r["speaker"] for r in rows["test-ood"]} == set(TEST_ONLY_VOICES)


def test_manifest_records_sources_licences_voices_and_sizes(builds):
    manifest = json.loads((builds[0] / "manifest.json").read_text())
    assert manifest["corpus"] == "speech-en" and manifest["seed"] == 5
    assert {name: source["package"] for name, source in manifest["sources"].items()} == {
        "wordnet": "wordnet-base", "fortunes": "fortunes"}
    assert manifest["sources"]["wordnet"]["licence"].startswith("WordNet 3.0 licence")
    assert manifest["sources"]["fortunes"]["licence"].startswith("BSD")
    assert all("/usr/share/doc/" in source["licence"] for source in manifest["sources"].values())  # the full text
    assert {split: info["rows"] for split, info in manifest["splits"].items()} == SIZES
    assert set(manifest["voices"]["test-ood"]) == set(TEST_ONLY_VOICES)
    assert manifest["perturbation"]["splits"] == ["train"]


@pytest.mark.slow
def test_whisper_base_understands_the_perturbed_training_and_the_out_of_domain_audio(tmp_path, embedded_models):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    out = tmp_path / "speech-en"
    build_speech_en(out, {"train": 24, "test-ood": 20}, seed=0, progress=False)
    folder = embedded_models["whisper-base"]
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = WhisperTokenizer.from_pretrained(folder)

    def words(text):
        return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())

    for split in ("train", "test-ood"):
        rows = read_split(out, split).to_pylist()
        feats, _ = AudioFeatures("whisper", 80, "30s")([decode(r["audio"]) for r in rows])
        with torch.no_grad():
            tokens = model.generate(feats, language="en", task="transcribe", max_new_tokens=80)
        hyps = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        wer = jiwer.wer([words(r["text"]) for r in rows], [words(h) for h in hyps])
        # measured on 60 utterances of a default-size build: train 35.0 % (piper 9.9 %, espeak 54.7 %: rare words
        # in robotic voices, perturbed), test-ood 23.5 %; unintelligible audio (a broken pitch shift or speed change, a
        # wrong sample rate) gives WER near 100 %
        assert wer <= 0.5, f"{split}: WER {wer:.1%}"
