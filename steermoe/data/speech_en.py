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
and pitches. Planning, speech, perturbation and the build are steermoe.data.speech's.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from steermoe.data import speech
from steermoe.data.speech import DEFAULT_SIZES, SPLITS, Sentence  # noqa: F401 (the registry and tests read them)
from steermoe.errors import DataError

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
MIN_WORDS, MAX_WORDS = 5, 20

# piper:LENGTH_SCALE[:PITCH_CENTS] (pitch shifted by sox) or espeak:VOICE+VARIANT:WORDS_PER_MINUTE:PITCH
TRAIN_VOICES = ["piper:1.0", "piper:0.85", "piper:1.2", "piper:0.95:-150", "piper:1.1:+150",
                "espeak:en-us+m3:165:45", "espeak:en-gb+f3:150:60", "espeak:en-us+m7:175:40",
                "espeak:en-gb-x-rp+m1:160:50", "espeak:en-029+f2:150:55", "espeak:en-gb-x-gbclan+m4:170:35",
                "espeak:en-us+f4:180:65"]
# heard only in test-ood: accents, variants and pitch shifts that no training voice has
TEST_ONLY_VOICES = ["piper:1.05:-350", "piper:0.9:+300", "espeak:en-gb-scotland+m2:155:50",
                    "espeak:en-gb-x-gbcwmd+f1:165:60", "espeak:en-us+m6:145:30"]

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


# the sources are read once per process: planning asks for the targets of every experiment
CORPUS = speech.SpeechCorpus(
    name="speech-en", language="en",
    pools=cache(lambda: speech.sentence_pools(wordnet_sentences(), fortune_sentences())),
    train_voices=TRAIN_VOICES, test_only_voices=TEST_ONLY_VOICES, sources=SOURCES,
    normalisation=f"numbers and symbols written out; sentences with acronyms or other symbols dropped; {MIN_WORDS} "
                  f"to {MAX_WORDS} words; unique across splits; target in lower case without punctuation")
plan, targets, build_speech_en = CORPUS.plan, CORPUS.targets, CORPUS.build
