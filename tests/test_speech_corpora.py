"""speech-en and speech-zh alike: splits disjoint by sentence and source section, test-only voices, perturbed
training audio only, deterministic builds whose manifest records the sources and their licences."""
import json
from dataclasses import dataclass

import pytest

from steermoe.data import speech_en, speech_zh
from steermoe.data.layout import read_split
from steermoe.data.speech import DEFAULT_SIZES, SPLITS
from steermoe.errors import DataError

SIZES = {"train": 12, "dev": 4, "test": 6, "test-ood": 8}


@dataclass(frozen=True)
class Case:
    module: object
    packages: dict  # text source -> Debian package
    licences: dict  # text source -> how its licence line starts
    in_domain: str  # the source of train, dev and test
    ood: str  # the source of test-ood


CASES = {
    "speech-en": Case(speech_en, {"wordnet": "wordnet-base", "fortunes": "fortunes"},
                      {"wordnet": "WordNet 3.0 licence", "fortunes": "BSD"}, "wordnet", "fortunes"),
    "speech-zh": Case(speech_zh, {"fortunes-zh": "fortunes-zh", "manpages-zh": "manpages-zh"},
                      {"fortunes-zh": "GPL-3.0+", "manpages-zh": "GFDL-1.2+"}, "fortunes-zh", "manpages-zh"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    return CASES[request.param]


@pytest.fixture(scope="module")
def pools(case):
    return case.module.CORPUS.pools()


@pytest.fixture(scope="module")
def builds(case, tmp_path_factory):
    """Two builds with the same seed and different worker counts: (first folder, second folder)."""
    root = tmp_path_factory.mktemp(case.module.CORPUS.name)
    case.module.CORPUS.build(root / "a", SIZES, seed=5, workers=2, progress=False)
    case.module.CORPUS.build(root / "b", SIZES, seed=5, workers=1, progress=False)
    return root / "a", root / "b"


def test_splits_share_no_sentence_and_no_source_section(case, pools):
    texts = {split: {s.text for s in pool} for split, pool in pools.items()}
    sections = {split: {s.section for s in pool} for split, pool in pools.items()}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            assert not texts[first] & texts[second], (first, second)
            assert not sections[first] & sections[second], (first, second)
    assert all(s.startswith(f"{case.ood}:") for s in sections["test-ood"])
    assert all(s.startswith(f"{case.in_domain}:") for split in ("train", "dev", "test") for s in sections[split])
    assert all(len(pool) == len({s.text for s in pool}) for pool in pools.values())  # deduplicated


def test_test_only_voices_speak_only_the_out_of_domain_test(case, pools):
    corpus = case.module.CORPUS
    heard = {split: {u.voice for u in rows} for split, rows in corpus.plan(DEFAULT_SIZES, 0, pools).items()}
    assert heard["test-ood"] == set(corpus.test_only_voices)
    assert heard["train"] == set(corpus.train_voices) and not heard["train"] & set(corpus.test_only_voices)
    assert not (heard["dev"] | heard["test"]) & set(corpus.test_only_voices)
    assert len(heard["train"]) >= 8


def test_only_training_audio_is_perturbed(case, pools):
    plans = case.module.CORPUS.plan(DEFAULT_SIZES, 0, pools)
    train = plans["train"]
    assert {u.speed for u in train} == {0.9, 1.0, 1.1} and any(u.snr_db for u in train)
    assert len({u.gain_db for u in train}) > 10
    for split in ("dev", "test", "test-ood"):
        assert all(u.speed == 1.0 and u.gain_db == 0.0 and u.snr_db is None for u in plans[split]), split


def test_one_split_size_never_changes_another_split(case, pools):
    plan = case.module.CORPUS.plan
    small = plan({"train": 100, "dev": 20, "test": 30, "test-ood": 30}, 1, pools)
    large = plan({"train": 400, "dev": 20, "test": 30, "test-ood": 60}, 1, pools)
    assert small["dev"] == large["dev"] and small["test"] == large["test"]
    assert large["train"][:100] == small["train"] and large["test-ood"][:30] == small["test-ood"]
    assert plan({"train": 100}, 2, pools)["train"] != small["train"]  # the seed matters


def test_unknown_splits_and_oversized_requests_are_refused(case, pools):
    plan = case.module.CORPUS.plan
    with pytest.raises(DataError, match="unknown split.*'tset'"):
        plan({"train": 10, "tset": 5}, 0, pools)
    with pytest.raises(DataError, match="test-ood sentences asked for"):
        plan({"test-ood": len(pools["test-ood"]) + 1}, 0, pools)


def test_build_is_byte_identical_whatever_the_worker_count(builds):
    first, second = builds
    names = sorted(p.name for p in first.iterdir())
    assert {f"{split}.parquet" for split in SIZES} | {"manifest.json", "rejects.jsonl"} <= set(names)
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_built_splits_are_disjoint_and_keep_test_only_voices_out_of_training(case, builds):
    corpus = case.module.CORPUS
    rows = {split: read_split(builds[0], split).to_pylist() for split in SIZES}
    assert {split: len(r) for split, r in rows.items()} == SIZES
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    for i, first in enumerate(SIZES):
        for second in list(SIZES)[i + 1:]:
            assert not texts[first] & texts[second], (first, second)
    assert not {r["speaker"] for r in rows["train"]} & set(corpus.test_only_voices)
    assert {r["speaker"] for r in rows["test-ood"]} <= set(corpus.test_only_voices)
    assert {r["language"] for split_rows in rows.values() for r in split_rows} == {corpus.language}


def test_manifest_records_sources_licences_voices_and_sizes(case, builds):
    manifest = json.loads((builds[0] / "manifest.json").read_text())
    assert manifest["corpus"] == case.module.CORPUS.name and manifest["seed"] == 5
    assert {name: source["package"] for name, source in manifest["sources"].items()} == case.packages
    for name, start in case.licences.items():
        assert manifest["sources"][name]["licence"].startswith(start), name
    assert all("/usr/share/doc/" in source["licence"] for source in manifest["sources"].values())  # the full text
    assert {split: info["rows"] for split, info in manifest["splits"].items()} == SIZES
    assert set(manifest["voices"]["test-ood"]) <= set(case.module.CORPUS.test_only_voices)
    assert manifest["perturbation"]["splits"] == ["train"]


@pytest.mark.parametrize("read,package", [
    (speech_en.wordnet_sentences, "wordnet-base"), (speech_en.fortune_sentences, "fortunes"),
    (speech_zh.fortune_sentences, "fortunes-zh"), (speech_zh.manpage_sentences, "manpages-zh")])
def test_a_missing_text_source_names_its_folder_and_the_package_to_install(read, package, tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}.*apt-get install {package}\b"):
        read(tmp_path)
