"""Spoken corpora of ordinary sentences (speech-en, speech-zh): what they share once their text is chosen.

A corpus module declares a SpeechCorpus: its text (per split, the candidate Sentences), voices, sources and
licences. The SpeechCorpus plans the utterances of each split, speaks them (piper, espeak-ng, sox pitch shifts),
perturbs the training audio (speed, volume, additive noise) and prepares the splits into the common layout with a
manifest.

Determinism: the sentence choice, voices and perturbations come from random.Random(seed, split); piper runs
without its noise terms, sox with -R and no dither, and the noise is drawn from a generator seeded per utterance,
so the same seed gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from steermoe.data.layout import Filters, RawItem, only_splits, prepare_corpus
from steermoe.declare.settings import SAMPLE_RATE
from steermoe.errors import DataError
from steermoe.fsutil import write_atomic

# training first, evaluation last; test-ood is another genre of text, spoken only by voices no other split uses
OOD_SPLIT = "test-ood"
SPLITS = ("train", "dev", "test", OOD_SPLIT)
DEFAULT_SIZES = {"train": 2400, "dev": 100, "test": 200, OOD_SPLIT: 200}
# share of the in-domain source's sections (per mille) held out for test and dev
TEST_PER_MILLE, DEV_PER_MILLE = 100, 50
# training perturbations, drawn per utterance: speed factor (pitch moves with it), gain, and the SNR of white noise
SPEEDS = [1.0, 1.0, 0.9, 1.1]
GAIN_DB = (-8.0, 0.0)
NOISE_SNR_DB = [None, None, 30, 20, 15]
PERTURBED_SPLITS = ("train",)


@dataclass(frozen=True)
class Sentence:
    spoken: str  # what the voice reads (English words with case and punctuation; tone-numbered pinyin)
    text: str  # the target (lower-case words; characters without punctuation)
    section: str  # the source section it came from, e.g. wordnet:noun:02084071 or fortunes:wisdom:17


@dataclass(frozen=True)
class Utterance:
    id: str
    voice: str
    sentence: Sentence
    speed: float = 1.0
    gain_db: float = 0.0
    snr_db: float | None = None  # additive white noise; None: none
    noise_seed: int = 0


def unique_across_splits(by_split: dict[str, list[Sentence]]) -> dict[str, list[Sentence]]:
    """Per split, its sentences without any text that a later split of SPLITS has: a text found in several splits
    stays only in the last, so evaluation sentences are never trained on."""
    taken: set[str] = set()
    pools = {}
    for split in reversed(SPLITS):
        pool = []
        for sentence in by_split.get(split, []):
            if sentence.text not in taken:
                taken.add(sentence.text)
                pool.append(sentence)
        pools[split] = pool
    return pools


def section_split(section: str) -> str:
    """The split a section of the in-domain source belongs to: fixed by a hash of it, whatever the seed and sizes."""
    bucket = int(hashlib.sha256(section.encode()).hexdigest(), 16) % 1000
    return "test" if bucket < TEST_PER_MILLE else "dev" if bucket < TEST_PER_MILLE + DEV_PER_MILLE else "train"


def sentence_pools(in_domain: list[Sentence], other_genre: list[Sentence]) -> dict[str, list[Sentence]]:
    """Per split, the candidate sentences: the in-domain source's go to train, dev or test by their section
    (section_split), the other genre's to test-ood; then unique across splits (unique_across_splits)."""
    by_split: dict[str, list[Sentence]] = {split: [] for split in SPLITS}
    by_split[OOD_SPLIT] += other_genre
    for sentence in in_domain:
        by_split[section_split(sentence.section)].append(sentence)
    return unique_across_splits(by_split)


@dataclass(frozen=True)
class SpeechCorpus:
    """One spoken corpus of SPLITS: its name and language, its sentences (`pools`: per split, the candidates, from
    sentence_pools), the voices of train, dev and test and those heard only in test-ood (piper:LENGTH_SCALE
    [:PITCH_CENTS], the pitch shifted by sox, or espeak:VOICE+VARIANT:WORDS_PER_MINUTE:PITCH), and what the manifest
    says of its text."""
    name: str
    language: str
    pools: Callable[[], dict[str, list[Sentence]]]
    train_voices: list[str]
    test_only_voices: list[str]
    sources: dict[str, dict]  # per text source: package, splits, section, text, licence
    normalisation: str

    def voices(self, split: str) -> list[str]:
        return self.test_only_voices if split == OOD_SPLIT else self.train_voices

    def plan(self, sizes: dict[str, int], seed: int,
             pools: dict[str, list[Sentence]] | None = None) -> dict[str, list[Utterance]]:
        """Per split, its utterances. Each split draws from its own random.Random(seed, split), so one split's size
        never changes another's sentences, and a larger split is a superset of a smaller one (a prefix of one
        shuffle)."""
        unknown = sorted(set(sizes) - set(SPLITS))
        if unknown:
            raise DataError(f"{self.name}: unknown split(s) {unknown} in the sizes; its splits are {list(SPLITS)}")
        pools = pools or self.pools()
        out = {}
        for split in [s for s in SPLITS if s in sizes]:
            pool = list(pools[split])
            if sizes[split] > len(pool):
                raise DataError(f"{self.name}: {sizes[split]} {split} sentences asked for, the sources give "
                                f"{len(pool)}; ask for fewer in the sizes")
            rng = random.Random(f"{seed}:{split}")
            rng.shuffle(pool)
            voices = self.voices(split)
            rows = []
            for index, sentence in enumerate(pool[:sizes[split]]):
                voice = voices[index % len(voices)]
                uid = f"{self.name}-{split}-{index:05d}"
                if split in PERTURBED_SPLITS:
                    rows.append(Utterance(uid, voice, sentence, speed=rng.choice(SPEEDS),
                                          gain_db=round(rng.uniform(*GAIN_DB), 1), snr_db=rng.choice(NOISE_SNR_DB),
                                          noise_seed=rng.randrange(2**32)))
                else:
                    rows.append(Utterance(uid, voice, sentence))
            out[split] = rows
        return out

    def targets(self, sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
        return {split: [u.sentence.text for u in rows] for split, rows in self.plan(sizes, seed).items()}

    def build(self, out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
              workers: int | None = None, progress: bool = True, only: list[str] | None = None) -> dict:
        """Speak and prepare every split (or the `only` ones, as a full build would) into out_dir (the common
        layout); returns the manifest, which also records the text sources and their licences, the voices of each
        split, the perturbations and the normalisation."""
        from tqdm import tqdm

        plans = only_splits(self.plan(sizes or DEFAULT_SIZES, seed), only)
        jobs = [u for rows in plans.values() for u in rows]
        workers = workers or 2
        with get_context("spawn").Pool(workers) as pool:
            audio = list(tqdm(pool.imap(speak, jobs, chunksize=4), total=len(jobs), desc=f"{self.name} speech",
                              unit="utt", disable=not progress))
        splits, position = {}, 0
        for split, rows in plans.items():
            splits[split] = [RawItem(u.id, audio[position + i], u.sentence.text, u.sentence.section,
                                     speaker=u.voice, language=self.language) for i, u in enumerate(rows)]
            position += len(rows)
        manifest = prepare_corpus(self.name, splits, out_dir,
                                  Filters(max_audio_length=30.0, max_text_characters=448), workers=workers,
                                  progress=progress)
        manifest["sources"] = self.sources
        manifest["voices"] = {split: sorted({u.voice for u in rows}) for split, rows in plans.items()}
        manifest["sections"] = {split: len({u.sentence.section for u in rows}) for split, rows in plans.items()}
        manifest["perturbation"] = {"splits": list(PERTURBED_SPLITS), "speed": sorted(set(SPEEDS)),
                                    "gain_db": list(GAIN_DB),
                                    "white_noise_snr_db": sorted(s for s in set(NOISE_SNR_DB) if s is not None)}
        manifest["normalisation"] = self.normalisation
        manifest["seed"] = seed
        write_atomic(Path(out_dir) / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return manifest


# ---- speech ----------------------------------------------------------------------------------------------------
def _sox_pitch(audio: np.ndarray, cents: int) -> np.ndarray:
    """Shift pitch without changing tempo; -R and -D (no dither) make sox repeatable."""
    command = ["sox", "-R", "-D", "-V1", "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-",
               "-t", "f32", "-", "pitch", str(cents)]
    result = subprocess.run(command, input=audio.astype(np.float32).tobytes(), capture_output=True, check=True)
    return np.frombuffer(result.stdout, dtype=np.float32)


def voice_audio(voice: str, text: str) -> np.ndarray:
    """float32 mono at SAMPLE_RATE of `voice` reading `text`."""
    kind, *params = voice.split(":")
    if kind == "piper":
        from steermoe.data.tts import piper_speak

        audio = piper_speak(text, length_scale=float(params[0]))
        return _sox_pitch(audio, int(params[1])) if len(params) > 1 else audio
    if kind == "espeak":
        from steermoe.data.audio import decode

        name, speed, pitch = params
        wav = subprocess.run(["espeak-ng", "-v", name, "-s", speed, "-p", pitch, "--stdout", text],
                             capture_output=True, check=True).stdout
        return decode(wav)
    raise DataError(f"unknown voice {voice!r} (piper:... or espeak:...)")


def perturb(audio: np.ndarray, utterance: Utterance) -> np.ndarray:
    """Speed (resampling: tempo and pitch move together, as in Kaldi's speed perturbation), gain, white noise."""
    import soxr

    if utterance.speed != 1.0:
        audio = soxr.resample(audio, round(SAMPLE_RATE * utterance.speed), SAMPLE_RATE, quality="HQ")
    audio = audio * np.float32(10 ** (utterance.gain_db / 20))
    if utterance.snr_db is not None:
        power = float(np.mean(audio.astype(np.float64) ** 2)) or 1e-10
        noise = np.random.default_rng(utterance.noise_seed).standard_normal(len(audio))
        audio = audio + (noise * np.sqrt(power / 10 ** (utterance.snr_db / 10))).astype(np.float32)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def speak(utterance: Utterance) -> bytes:
    """An utterance -> 16-bit WAV bytes at SAMPLE_RATE. Runs in pool workers; each keeps its own piper voice."""
    import soundfile as sf

    audio = perturb(voice_audio(utterance.voice, utterance.sentence.spoken), utterance)
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()

