"""speech-en: English ASR on ordinary sentences (not a template grammar), with an out-of-domain test split.

Text comes from Debian packages, so the corpus builds offline:
  train / dev / test   WordNet 3.0's example sentences (the quoted examples in synset glosses, `wordnet-base`).
                       A synset is a source section: each synset's sentences go to one split, picked by a hash of
                       the synset, so test sentences come from synsets that training never reads.
  test-ood             fortune cookies (`fortunes`, `fortunes-min`: quotations, jokes, aphorisms), another genre,
                       spoken only by voices that no other split uses.
Each sentence is normalised to speakable text (numbers and symbols written out, acronyms and odd symbols dropped,
5 to 20 words) and deduplicated across all splits. The voice reads the normalised sentence with its case and
punctuation (prosody); the target is its words in lower case.

Voices: the piper voice at several rates and sox pitch shifts, and espeak-ng accents with different variants, rates
and pitches. Training utterances are also perturbed (speed, volume, additive noise). Determinism: the sentence
choice, voices and perturbations come from random.Random(seed, split); piper runs without its noise terms, sox with
-R and no dither, and the noise is drawn from a generator seeded per utterance, so the same seed gives
byte-identical files.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import subprocess
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from steermoe.data.audio import SAMPLE_RATE
from steermoe.data.layout import Filters, RawItem, only_splits, prepare_corpus
from steermoe.errors import DataError
from steermoe.fsutil import write_atomic

CORPUS = "speech-en"
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# the cookie files of general prose; left out: verse, ascii art, computing and Star Trek in-jokes, Zippy's
# non-sequiturs, and the files about ethnic groups and the sexes
FORTUNE_FILES = ["art", "cookie", "education", "food", "fortunes", "humorists", "kids", "law", "literature", "love",
                 "medicine", "miscellaneous", "people", "pets", "platitudes", "science", "sports", "wisdom", "work"]
SOURCES = {
    "wordnet": {"package": "wordnet-base", "splits": ["train", "dev", "test"], "section": "synset",
                "text": "WordNet 3.0 example sentences (the quoted examples in synset glosses)",
                "licence": "WordNet 3.0 licence (Princeton University): use, copy, modify and distribute for any "
                           "purpose without fee, keeping the copyright notice; /usr/share/doc/wordnet-base/copyright"},
    "fortunes": {"package": "fortunes", "splits": ["test-ood"], "section": "cookie", "files": FORTUNE_FILES,
                 "text": "fortune-mod cookie files: quotations, jokes and aphorisms",
                 "licence": "BSD (The Regents of the University of California) for fortune-mod and its cookie files; "
                            "/usr/share/doc/fortunes/copyright"},
}
SPLITS = ("train", "dev", "test", "test-ood")
# share of WordNet synsets (per mille) held out for test and dev
TEST_PER_MILLE, DEV_PER_MILLE = 100, 50
MIN_WORDS, MAX_WORDS = 5, 20

# piper:LENGTH_SCALE[:PITCH_CENTS] (pitch shifted by sox) or espeak:VOICE+VARIANT:WORDS_PER_MINUTE:PITCH
TRAIN_VOICES = ["piper:1.0", "piper:0.85", "piper:1.2", "piper:0.95:-150", "piper:1.1:+150",
                "espeak:en-us+m3:165:45", "espeak:en-gb+f3:150:60", "espeak:en-us+m7:175:40",
                "espeak:en-gb-x-rp+m1:160:50", "espeak:en-029+f2:150:55", "espeak:en-gb-x-gbclan+m4:170:35",
                "espeak:en-us+f4:180:65"]
# heard only in test-ood: accents, variants and pitch shifts that no training voice has
TEST_ONLY_VOICES = ["piper:1.05:-350", "piper:0.9:+300", "espeak:en-gb-scotland+m2:155:50",
                    "espeak:en-gb-x-gbcwmd+f1:165:60", "espeak:en-us+m6:145:30"]
SPLIT_VOICES = {"train": TRAIN_VOICES, "dev": TRAIN_VOICES, "test": TRAIN_VOICES, "test-ood": TEST_ONLY_VOICES}
# training perturbations, drawn per utterance: speed factor (pitch moves with it), gain, and the SNR of white noise
SPEEDS = [1.0, 1.0, 0.9, 1.1]
GAIN_DB = (-8.0, 0.0)
NOISE_SNR_DB = [None, None, 30, 20, 15]
DEFAULT_SIZES = {"train": 2400, "dev": 100, "test": 200, "test-ood": 200}


@dataclass(frozen=True)
class Sentence:
    spoken: str  # what the voice reads: numbers and symbols written out, case and punctuation kept
    text: str  # the target: lower-case words and apostrophes
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


# ---- text ------------------------------------------------------------------------------------------------------
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORDINAL_ENDINGS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                   "nine": "ninth", "twelve": "twelfth"}
SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "=": " equals ", "@": " at ", "°": " degrees"}
# what may remain once numbers and symbols are written out; anything else drops the sentence
SPEAKABLE = re.compile(r"[A-Za-z ,.;:!?'()-]+")


def number_words(n: int) -> str:
    """0 <= n < 1,000,000 in words: 2024 -> two thousand twenty four."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    if n < 1_000_000:
        return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))
    raise ValueError(f"number_words covers 0 to 999999, got {n}")


def year_words(n: int) -> str:
    """A year as people read it: 1984 -> nineteen eighty four, 1900 -> nineteen hundred, 2005 -> two thousand five."""
    if 2000 <= n < 2010 or n % 1000 == 0:
        return number_words(n)
    high, low = divmod(n, 100)
    return number_words(high) + (" hundred" if low == 0 else " oh " + ONES[low] if low < 10
                                 else " " + number_words(low))


def ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    words[-1] = ORDINAL_ENDINGS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words)


def _number(match: re.Match) -> str:
    digits, suffix = match["digits"].replace(",", ""), (match["suffix"] or "").lower()
    value = int(digits)
    if suffix in ("st", "nd", "rd", "th"):
        return ordinal_words(value)
    if suffix == "s" and len(digits) == 4 and digits.endswith("0"):  # the 1920s -> the nineteen twenties
        return re.sub(r"y$", "ies", year_words(value))
    if suffix:
        raise ValueError(suffix)
    if match["fraction"]:
        return number_words(value) + " point " + " ".join(ONES[int(d)] for d in match["fraction"])
    if len(digits) == 4 and 1100 <= value <= 2099 and "," not in match["digits"]:
        return year_words(value)
    return number_words(value)


NUMBER = re.compile(r"(?<![\w.])(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<fraction>\d+))?(?P<suffix>[A-Za-z]+)?"
                    r"(?![\w])")


def normalise(raw: str) -> Sentence | None:
    """Raw source text -> a speakable sentence, or None where it cannot be read aloud unambiguously or its length
    is outside MIN_WORDS..MAX_WORDS. The section is filled in by the caller."""
    spoken = " ".join(raw.replace("...", ", ").replace("--", ", ").replace("`", "'").split())
    spoken = re.sub(r"\$(\d+)", r"\1 dollars", spoken)
    for symbol, words in SYMBOLS.items():
        spoken = spoken.replace(symbol, words)
    try:
        spoken = NUMBER.sub(_number, spoken)
    except ValueError:  # a number it cannot say for sure (3D, 10x, a million and more)
        return None
    # quotation marks are not spoken; "--" and "..." became commas above, so no space may precede punctuation
    spoken = re.sub(r"\s+([,;:.!?])", r"\1", " ".join(spoken.replace('"', " ").split())).strip(" ,;:")
    if not spoken or not SPEAKABLE.fullmatch(spoken) or re.search(r"\b[A-Z]{2,}\b", spoken):
        return None  # symbols left, or acronyms (spelled out or read as a word: the target cannot tell)
    words = [w.strip("'") for w in re.sub(r"[^a-z']+", " ", spoken.lower()).split()]
    words = [w for w in words if w]
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    return Sentence(spoken=spoken, text=" ".join(words), section="")


def wordnet_sentences(folder: Path = WORDNET_DIR) -> list[Sentence]:
    """Every usable example sentence of WordNet, in file order; section = wordnet:POS:SYNSET_OFFSET."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"{path} is missing: speech-en reads WordNet's example sentences from Debian's "
                            f"wordnet-base package (apt-get install wordnet-base; scripts/setup.sh installs it)")
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header
            offset, gloss = line.split(" ", 1)[0], line.split(" | ", 1)[1]
            for example in re.findall(r'"([^"]+)"', gloss):
                sentence = normalise(example)
                if sentence:
                    out.append(Sentence(sentence.spoken, sentence.text, f"wordnet:{pos}:{offset}"))
    return out


def fortune_sentences(folder: Path = FORTUNES_DIR, files: list[str] = FORTUNE_FILES) -> list[Sentence]:
    """Every usable sentence of the chosen cookie files (attributions dropped); section = fortunes:FILE:COOKIE."""
    out = []
    for name in files:
        path = folder / f"{name}.u8"
        if not path.is_file():
            raise DataError(f"{path} is missing: speech-en's out-of-domain test reads Debian's fortunes package "
                            f"(apt-get install fortunes; scripts/setup.sh installs it)")
        cookies = re.split(r"^%$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M)
        for number, cookie in enumerate(cookies):
            lines = [line for line in cookie.splitlines() if not line.strip().startswith("--")]
            prose = " ".join(" ".join(lines).split())
            for piece in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", prose):
                sentence = normalise(piece.strip("\"'() "))
                if sentence:
                    out.append(Sentence(sentence.spoken, sentence.text, f"fortunes:{name}:{number}"))
    return out


def wordnet_split(section: str) -> str:
    """The split a WordNet synset belongs to: fixed by a hash of it, whatever the seed and sizes."""
    bucket = int(hashlib.sha256(section.encode()).hexdigest(), 16) % 1000
    return "test" if bucket < TEST_PER_MILLE else "dev" if bucket < TEST_PER_MILLE + DEV_PER_MILLE else "train"


def sentence_pools(wordnet: list[Sentence], fortunes: list[Sentence]) -> dict[str, list[Sentence]]:
    """Per split, the candidate sentences, unique across all splits: a text found in more than one split stays only
    in the first of test-ood, test, dev, train (so evaluation sentences are never trained on)."""
    by_split: dict[str, list[Sentence]] = {split: [] for split in SPLITS}
    for sentence in fortunes:
        by_split["test-ood"].append(sentence)
    for sentence in wordnet:
        by_split[wordnet_split(sentence.section)].append(sentence)
    taken: set[str] = set()
    pools = {}
    for split in ("test-ood", "test", "dev", "train"):
        pool = []
        for sentence in by_split[split]:
            if sentence.text not in taken:
                taken.add(sentence.text)
                pool.append(sentence)
        pools[split] = pool
    return pools


def plan(sizes: dict[str, int], seed: int,
         pools: dict[str, list[Sentence]] | None = None) -> dict[str, list[Utterance]]:
    """Per split, its utterances. Each split draws from its own random.Random(seed, split), so one split's size
    never changes another's sentences, and a larger split is a superset of a smaller one (a prefix of one shuffle)."""
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise DataError(f"{CORPUS}: unknown split(s) {unknown} in the sizes; its splits are {list(SPLITS)}")
    pools = pools or sentence_pools(wordnet_sentences(), fortune_sentences())
    out = {}
    for split in [s for s in SPLITS if s in sizes]:
        pool = list(pools[split])
        if sizes[split] > len(pool):
            raise DataError(f"{CORPUS}: {sizes[split]} {split} sentences asked for, the sources give {len(pool)}; "
                            f"ask for fewer in the sizes")
        rng = random.Random(f"{seed}:{split}")
        rng.shuffle(pool)
        voices = SPLIT_VOICES[split]
        rows = []
        for index, sentence in enumerate(pool[:sizes[split]]):
            voice = voices[index % len(voices)]
            uid = f"{CORPUS}-{split}-{index:05d}"
            if split == "train":
                rows.append(Utterance(uid, voice, sentence, speed=rng.choice(SPEEDS),
                                      gain_db=round(rng.uniform(*GAIN_DB), 1), snr_db=rng.choice(NOISE_SNR_DB),
                                      noise_seed=rng.randrange(2**32)))
            else:
                rows.append(Utterance(uid, voice, sentence))
        out[split] = rows
    return out


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
        from steermoe.tts import piper_speak

        audio = piper_speak(text, length_scale=float(params[0]))
        return _sox_pitch(audio, int(params[1])) if len(params) > 1 else audio
    if kind == "espeak":
        from steermoe.data.audio import decode

        name, speed, pitch = params
        wav = subprocess.run(["espeak-ng", "-v", name, "-s", speed, "-p", pitch, "--stdout", text],
                             capture_output=True, check=True).stdout
        return decode(wav)
    raise DataError(f"{CORPUS}: unknown voice {voice!r} (piper:... or espeak:...)")


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


def build_speech_en(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
                    workers: int | None = None, progress: bool = True, only: list[str] | None = None) -> dict:
    """Speak and prepare every split (or the `only` ones, as a full build would) into out_dir (the common
    layout); returns the manifest, which also records the text sources and their licences, the voices of each
    split, the perturbations and the normalisation."""
    from tqdm import tqdm

    plans = only_splits(plan(sizes or DEFAULT_SIZES, seed), only)
    jobs = [u for rows in plans.values() for u in rows]
    workers = workers or 2
    with get_context("spawn").Pool(workers) as pool:
        audio = list(tqdm(pool.imap(speak, jobs, chunksize=4), total=len(jobs), desc=f"{CORPUS} speech",
                          unit="utt", disable=not progress))
    splits, position = {}, 0
    for split, rows in plans.items():
        splits[split] = [RawItem(u.id, audio[position + i], u.sentence.text, u.sentence.section, speaker=u.voice,
                                 language="en") for i, u in enumerate(rows)]
        position += len(rows)
    manifest = prepare_corpus(CORPUS, splits, out_dir, Filters(max_audio_length=30.0, max_text_characters=448),
                              workers=workers, progress=progress)
    manifest["sources"] = SOURCES
    manifest["voices"] = {split: sorted({u.voice for u in rows}) for split, rows in plans.items()}
    manifest["sections"] = {split: len({u.sentence.section for u in rows}) for split, rows in plans.items()}
    manifest["perturbation"] = {"splits": ["train"], "speed": sorted(set(SPEEDS)), "gain_db": list(GAIN_DB),
                                "white_noise_snr_db": sorted(s for s in set(NOISE_SNR_DB) if s is not None)}
    manifest["normalisation"] = (f"numbers and symbols written out; sentences with acronyms or other symbols "
                                 f"dropped; {MIN_WORDS} to {MAX_WORDS} words; unique across splits; target in "
                                 f"lower case without punctuation")
    manifest["seed"] = seed
    write_atomic(Path(out_dir) / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
