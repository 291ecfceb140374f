"""speech-zh: ordinary Chinese text, split by source section; test-only voices; deterministic, speakable audio."""
import json

import pytest
from pypinyin import lazy_pinyin

from steermoe.data.layout import read_split
from steermoe.data.speech_zh import (DEFAULT_SIZES, SPLITS, TEST_ONLY_VOICES, TRAIN_VOICES, build_speech_zh,
                                     fortune_sentences, manpage_sentences, normalise, plan, sentence_pools)

SIZES = {"train": 12, "dev": 4, "test": 6, "test-ood": 8}


@pytest.fixture(scope="module")
def pools():
    return sentence_pools(fortune_sentences(), manpage_sentences())


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds with the same seed and different worker counts: (first folder, second folder)."""
    root = tmp_path_factory.mktemp("speech-zh")
    build_speech_zh(root / "a", SIZES, seed=5, workers=2, progress=False)
    build_speech_zh(root / "b", SIZES, seed=5, workers=1, progress=False)
    return root / "a", root / "b"


def test_a_clause_is_spoken_as_pinyin_with_its_pauses_and_its_target_is_the_characters():
    sentence = normalise("“有田不耕仓廪虚，有书不读子孙愚。”")
    assert sentence.text == "有田不耕仓廪虚有书不读子孙愚"
    assert sentence.spoken == "you3 tian2 bu4 geng1 cang1 lin3 xu1, you3 shu1 bu4 du2 zi3 sun1 yu2."
    assert normalise("我去银行取钱。").spoken == "wo3 qu4 yin2 hang2 qu3 qian2."  # a polyphone read as in its phrase


def test_clauses_with_digits_latin_letters_or_a_bad_length_are_dropped():
    assert normalise("使用 bash 命令运行这个程序。") is None
    assert normalise("第3章讲的是这个问题。") is None
    assert normalise("不怕慢。") is None  # 3 characters
    assert normalise("天" * 31 + "。") is None
    assert normalise("天" * 30 + "。").text == "天" * 30


def test_the_sources_give_thousands_of_sentences_and_characters(pools):
    assert min(len(pools[split]) for split in SPLITS) >= 500
    assert len({c for s in pools["train"] for c in s.text}) >= 3000
    train = plan(DEFAULT_SIZES, seed=0, pools=pools)["train"]
    assert len({u.sentence.section for u in train}) >= 1000  # many fortunes, not a few long ones


def test_splits_share_no_sentence_and_no_source_section(pools):
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            assert not {s.text for s in pools[first]} & {s.text for s in pools[second]}, (first, second)
            assert not {s.section for s in pools[first]} & {s.section for s in pools[second]}, (first, second)
    assert {s.section.split(":")[0] for s in pools["test-ood"]} == {"manpages-zh"}
    assert {s.section.split(":")[0] for split in ("train", "dev", "test") for s in pools[split]} == {"fortunes-zh"}


def test_test_only_voices_speak_only_the_out_of_domain_test(pools):
    plans = plan(DEFAULT_SIZES, seed=0, pools=pools)
    assert not set(TRAIN_VOICES) & set(TEST_ONLY_VOICES)
    for split in ("train", "dev", "test"):
        assert {u.voice for u in plans[split]} <= set(TRAIN_VOICES), split
    assert {u.voice for u in plans["test-ood"]} == set(TEST_ONLY_VOICES)


def test_build_is_byte_identical_whatever_the_worker_count(builds):
    first, second = builds
    names = sorted(p.name for p in first.iterdir())
    assert {f"{split}.parquet" for split in SIZES} | {"manifest.json", "rejects.jsonl"} <= set(names)
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_built_splits_are_disjoint_and_speak_about_a_syllable_per_character(builds):
    rows = {split: read_split(builds[0], split).to_pylist() for split in SIZES}
    assert {split: len(r) for split, r in rows.items()} == SIZES
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    for i, first in enumerate(SIZES):
        for second in list(SIZES)[i + 1:]:
            assert not texts[first] & texts[second], (first, second)
    assert not {r["speaker"] for r in rows["train"]} & set(TEST_ONLY_VOICES)
    for split, split_rows in rows.items():
        # espeak-ng reads 125-180 syllables a minute (0.33-0.48 s each) plus pauses; pinyin read letter by letter,
        # or audio at a wrong sample rate, is far outside 0.2-0.8 s a syllable
        for row in split_rows:
            seconds_per_syllable = row["duration"] / len(lazy_pinyin(row["text"]))
            assert 0.2 <= seconds_per_syllable <= 0.8, (split, row["text"], seconds_per_syllable)


def test_manifest_records_sources_licences_voices_and_sizes(builds):
    manifest = json.loads((builds[0] / "manifest.json").read_text())
    assert manifest["corpus"] == "speech-zh" and manifest["seed"] == 5
    assert {name: source["package"] for name, source in manifest["sources"].items()} == {
        "fortunes-zh": "fortunes-zh", "manpages-zh": "manpages-zh"}
    assert manifest["sources"]["fortunes-zh"]["licence"].startswith("GPL-3.0+")
    assert manifest["sources"]["manpages-zh"]["licence"].startswith("GFDL-1.2+")
    assert {split: info["rows"] for split, info in manifest["splits"].items()} == SIZES
    assert set(manifest["voices"]["test-ood"]) <= set(TEST_ONLY_VOICES)
    assert manifest["perturbation"]["splits"] == ["train"]
