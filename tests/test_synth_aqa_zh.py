"""The synthetic corpora: synth-aqa (sox scenes + questions) and synth-zh (espeak-ng Mandarin)."""
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from steermoe.data.audio import decode
from steermoe.data.layout import read_split
from steermoe.data.synth_aqa import (BEEP_HZ, HIGH_TONE_HZ, LOW_TONE_HZ, NUMBER_WORDS, Scene, Segment, build_synth_aqa,
                                     make_scene, plan_split, questions_for, render_scene)
from steermoe.data.synth_zh import DEFAULT_SIZES as ZH_DEFAULT_SIZES
from steermoe.data.synth_zh import build_synth_zh, plan_splits, vocabulary
from steermoe.declare.settings import SAMPLE_RATE

SIZES = {"train": 12, "dev": 3, "test": 6}


@pytest.fixture(scope="module")
def aqa_builds(tmp_path_factory):
    """Two builds with the same seed and different worker counts: (first folder, second folder)."""
    root = tmp_path_factory.mktemp("aqa")
    build_synth_aqa(root / "a", SIZES, seed=3, workers=1, progress=False)
    build_synth_aqa(root / "b", SIZES, seed=3, workers=2, progress=False)
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def zh_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("zh")
    build_synth_zh(root / "a", SIZES, seed=3, workers=1, progress=False)
    build_synth_zh(root / "b", SIZES, seed=3, workers=2, progress=False)
    return root / "a", root / "b"


def assert_identical_folders(first: Path, second: Path):
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {f"{split}.parquet" for split in SIZES} | {"manifest.json", "rejects.jsonl"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def frames(audio: np.ndarray, size: int = 320, hop: int = 160) -> np.ndarray:
    """(samples,) -> (frames, size): 20 ms frames every 10 ms at 16 kHz."""
    count = 1 + (len(audio) - size) // hop
    return np.stack([audio[i * hop:i * hop + size] for i in range(count)])


def count_beeps(audio: np.ndarray) -> int:
    """Runs of frames whose energy is mostly within 100 Hz of the beep frequency."""
    spectra = np.abs(np.fft.rfft(frames(audio) * np.hanning(320), axis=1)) ** 2  # (frames, 161)
    freqs = np.fft.rfftfreq(320, 1 / SAMPLE_RATE)
    band = spectra[:, np.abs(freqs - BEEP_HZ) <= 100].sum(axis=1)
    total = spectra.sum(axis=1)
    beeping = (total > 1e-6) & (band > 0.5 * np.maximum(total, 1e-12))
    return int(np.sum(beeping[1:] & ~beeping[:-1]) + beeping[0])


def active_rms(audio: np.ndarray) -> float:
    """RMS over the frames that are not silence, so the amount of silence in a scene does not matter."""
    energy = np.mean(frames(audio).astype(np.float64) ** 2, axis=1)
    return float(np.sqrt(np.mean(energy[energy > 1e-7])))


def expected_answers(scene: Scene) -> dict[str, set[str]]:
    """Each question's acceptable answers, worked out from the raw segment list (not from Scene's helpers)."""
    sounds = [s for s in scene.segments if s.kind != "silence"]
    beeps = sum(s.kind == "beep" for s in sounds)
    tones = [s.freq for s in sounds if s.kind == "tone"]
    yes_no = {"Is there a high-pitched tone?": any(f >= HIGH_TONE_HZ[0] for f in tones),
              "Is there a low-pitched tone?": any(f <= LOW_TONE_HZ[1] for f in tones),
              "Is there any noise?": any(s.kind == "noise" for s in sounds),
              "Can you hear noise in the recording?": any(s.kind == "noise" for s in sounds),
              "Are there any beeps?": beeps > 0,
              "Is the sound loud?": scene.loud,
              "Is the sound quiet?": not scene.loud,
              # beeps form one run, so the number of sounds is the non-beep sounds plus one run
              "Is there more than one sound?": sum(s.kind != "beep" for s in sounds) + (beeps > 0) > 1}
    expected = {question: {"yes" if truth else "no"} for question, truth in yes_no.items()}
    if beeps:
        expected["How many beeps are there?"] = expected["How many times does it beep?"] = {NUMBER_WORDS[beeps],
                                                                                          str(beeps)}

    def names(segment: Segment) -> set[str]:
        if segment.kind == "tone":
            pitch = "high" if segment.freq >= HIGH_TONE_HZ[0] else "low"
            return {"a tone", f"a {pitch} tone", f"a {pitch}-pitched tone"}
        return {"noise", "static", "hissing"} if segment.kind == "noise" else {"a beep", "beeping", "beeps"}

    expected["What kind of sound comes first?"] = expected["What kind of sound is heard first?"] = names(sounds[0])
    expected["What kind of sound comes last?"] = names(sounds[-1])
    return expected


# synth-aqa

def test_aqa_builds_are_byte_identical(aqa_builds):
    assert_identical_folders(*aqa_builds)


def test_aqa_answers_match_scenes():
    kinds, yes_no = Counter(), Counter()
    for index in range(400):
        rng = random.Random(index)
        scene = make_scene(rng)
        qas = questions_for(scene, rng)
        beeps = [s for s in scene.segments if s.kind == "beep"]
        assert len(beeps) <= 5 and all(s.duration > 0 for s in scene.segments)
        expected = expected_answers(scene)
        assert {qa.question for qa in qas} == set(expected), scene
        for qa in qas:
            kinds[qa.kind] += 1
            assert len(qa.answers) == 3 and set(qa.answers) <= expected[qa.question], (scene, qa)
            assert qa.answer in expected[qa.question] and qa.answers.count(qa.answer) >= 2, (scene, qa)
            if qa.kind == "count":
                assert qa.answer == NUMBER_WORDS[len(beeps)], (scene, qa)  # the majority is always the word
            if qa.kind == "yes/no":
                yes_no[qa.answer] += 1
                assert len(set(qa.answers)) == 1, qa  # yes/no annotators agree
    assert set(kinds) == {"yes/no", "count", "which"}
    assert min(yes_no.values()) > 0.3 * sum(yes_no.values()), yes_no  # neither "yes" nor "no" dominates


def test_aqa_rows_follow_the_plan(aqa_builds):
    for split, size in SIZES.items():
        rows = read_split(aqa_builds[0], split).to_pylist()
        plan = plan_split(split, size, seed=3)
        assert [r["id"] for r in rows] == [e.id for e in plan] == [f"aqa-{split}-{i:06d}" for i in range(size)]
        for row, example in zip(rows, plan):
            assert (row["prompt"], row["text"], tuple(row["answers"])) == (example.qa.question, example.qa.answer,
                                                                          example.qa.answers)
            assert Counter(row["answers"]).most_common(1)[0][0] == row["text"]
            assert (row["language"], row["speaker"]) == ("en", "sox")
            assert row["duration"] == pytest.approx(example.scene.duration, abs=0.002)
            assert count_beeps(decode(row["audio"])) == sum(s.kind == "beep" for s in example.scene.segments), row


def test_aqa_loudness_and_pitch_are_audible():
    rng = random.Random(7)
    scenes = [make_scene(rng) for _ in range(30)]
    loud = [active_rms(decode(render_scene(s))) for s in scenes if s.loud]
    quiet = [active_rms(decode(render_scene(s))) for s in scenes if not s.loud]
    assert loud and quiet and min(loud) > 5 * max(quiet), (loud, quiet)

    def dominant_hz(freq: float) -> float:
        scene = Scene((Segment("silence", 0.2), Segment("tone", 1.0, freq=freq), Segment("silence", 0.2)), loud=True)
        audio = decode(render_scene(scene))
        return float(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(audio)))])

    assert dominant_hz(300) == pytest.approx(300, abs=5)
    assert dominant_hz(2400) == pytest.approx(2400, abs=5)


# synth-zh

def test_zh_builds_are_byte_identical(zh_builds):
    assert_identical_folders(*zh_builds)


def test_zh_rows(zh_builds):
    texts = {}
    for split, size in SIZES.items():
        rows = read_split(zh_builds[0], split).to_pylist()
        assert [r["id"] for r in rows] == [f"zh-{split}-{i:06d}" for i in range(size)]
        for row in rows:
            assert re.fullmatch(r"[\u4e00-\u9fff]{3,}", row["text"]), row["text"]
            assert row["language"] == "zh" and row["speaker"].startswith("espeak-")
            assert row["duration"] > 0.3
            audio = decode(row["audio"])
            voiced = np.sqrt(np.mean(frames(audio) ** 2, axis=1)) > 0.02  # (frames,)
            assert voiced.mean() > 0.3 and np.abs(audio).max() > 0.1, (row["id"], voiced.mean())
        texts[split] = {r["text"] for r in rows}
        assert len(texts[split]) == size  # no sentence repeats within a split
    assert not texts["test"] & texts["train"] and not texts["dev"] & texts["train"]
    assert len({r["speaker"] for r in read_split(zh_builds[0], "train").to_pylist()}) > 1


def test_zh_plan_at_default_sizes():
    """No audio: the default splits are disjoint, the pinyin is tone-numbered, the vocabulary is large."""
    planned = plan_splits(ZH_DEFAULT_SIZES, seed=0)
    texts = {split: [e.text for e in examples] for split, examples in planned.items()}
    assert {split: len(set(t)) for split, t in texts.items()} == ZH_DEFAULT_SIZES
    assert not set(texts["test"]) & set(texts["train"]) and not set(texts["dev"]) & set(texts["train"])
    for example in planned["test"]:
        syllables = example.pinyin.split()
        assert len(syllables) == len(example.text)  # one tone-numbered syllable per character
        assert all(re.fullmatch(r"[a-z]+[1-5]", s) for s in syllables), example.pinyin
    assert len(vocabulary()) >= 150
