"""speech-zh: Mandarin ASR on ordinary text (not a template grammar), with an out-of-domain test split.

Text comes from Debian packages, so the corpus builds offline:
  train / dev / test   fortunes-zh (proverbs, classical prose, Tang and Song poems, sayings of Debian developers).
                       A fortune is a source section: each fortune's sentences go to one split, picked by a hash of
                       the fortune, so test sentences come from fortunes that training never reads.
  test-ood             the simplified-Chinese manual pages of manpages-zh: modern technical prose, another genre,
                       spoken only by voices that no other split uses.
A sentence is a clause ending in 。！？ or ；, kept when it is Han characters and punctuation only (no digits, Latin
letters or symbols: they have no single reading) and has 6 to 30 characters; sentences are unique across splits.
The voice reads tone-numbered pinyin (pypinyin, which reads a polyphone as in its phrase, e.g. 银行 -> yin2 hang2)
with the punctuation as pauses, through espeak-ng's cmn-latn-pinyin voice; the target is the characters without
punctuation. Planning, speech, perturbation and the build are steermoe.data.speech's.
"""
from __future__ import annotations

import gzip
import re
from functools import cache
from pathlib import Path

from steermoe.data import speech
from steermoe.data.speech import DEFAULT_SIZES, SPLITS, Sentence  # noqa: F401 (the registry and tests read them)
from steermoe.errors import DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ["chinese", "tang300", "song100"]
MANPAGES_DIR = Path("/usr/share/man/zh_CN")
SOURCES = {
    "fortunes-zh": {"package": "fortunes-zh", "splits": ["train", "dev", "test"], "section": "fortune",
                    "files": FORTUNE_FILES,
                    "text": "fortunes-zh: proverbs, classical prose, Tang and Song poems, sayings about Debian",
                    "licence": "GPL-3.0+; /usr/share/doc/fortunes-zh/copyright"},
    "manpages-zh": {"package": "manpages-zh", "splits": ["test-ood"], "section": "manual page",
                    "text": "the simplified-Chinese (zh_CN) manual pages: technical documentation",
                    "licence": "GFDL-1.2+ for most pages (some GPL, BSD or public domain, page by page); "
                               "/usr/share/doc/manpages-zh/copyright"},
}
MIN_CHARACTERS, MAX_CHARACTERS = 6, 30

VOICE = "cmn-latn-pinyin"
TRAIN_VOICES = [f"espeak:{VOICE}+{variant}" for variant in
                ("m1:150:45", "m3:170:30", "m7:135:55", "m4:160:40", "f2:145:65", "f4:165:75", "f5:125:60",
                 "f3:155:70")]
# heard only in test-ood: variants, rates and pitches that no training voice has
TEST_ONLY_VOICES = [f"espeak:{VOICE}+{variant}" for variant in ("m2:140:20", "m6:180:50", "f1:130:85",
                                                                 "m5:150:50")]

HAN = re.compile(r"[\u4e00-\u9fff]+")
PAUSES = {"，": ",", "、": ",", "：": ",", "；": ".", "。": ".", "！": "!", "？": "?"}
QUOTES = re.compile(r"[“”‘’《》「」『』〈〉（）()\s\u3000]")
CLAUSE_END = re.compile(r"(?<=[。！？；])")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def to_pinyin(text: str) -> str | None:
    """Characters and punctuation -> tone-numbered pinyin with punctuation as pauses, or None where pypinyin has
    no reading for a character."""
    from pypinyin import Style, lazy_pinyin

    words = []
    for piece in lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True):
        if piece in PAUSES:
            words[-1:] = [words[-1] + PAUSES[piece]] if words else []
        elif HAN.search(piece) or not re.fullmatch(r"[a-z]+[1-5]", piece):
            return None
        else:
            words.append(piece)
    return " ".join(words)


def normalise(raw: str) -> Sentence | None:
    """One clause -> a speakable sentence, or None where it has anything but Han characters and punctuation or
    its length is outside MIN_CHARACTERS..MAX_CHARACTERS. The section is filled in by the caller."""
    clause = QUOTES.sub("", raw).lstrip("，、：；。！？")
    text = "".join(HAN.findall(clause))
    if not clause or "".join(c for c in clause if c not in PAUSES) != text:
        return None
    if not MIN_CHARACTERS <= len(text) <= MAX_CHARACTERS:
        return None
    spoken = to_pinyin(clause)
    return Sentence(spoken=spoken, text=text, section="") if spoken else None


def clauses(prose: str, section: str) -> list[Sentence]:
    out = []
    for piece in CLAUSE_END.split(prose):
        sentence = normalise(piece)
        if sentence:
            out.append(Sentence(sentence.spoken, sentence.text, section))
    return out


def fortune_sentences(folder: Path = FORTUNES_DIR, files: list[str] = FORTUNE_FILES) -> list[Sentence]:
    """Every usable clause of the fortunes (attributions dropped); section = fortunes-zh:FILE:FORTUNE."""
    out = []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing: speech-zh reads Debian's fortunes-zh package (apt-get install "
                            f"fortunes-zh; scripts/setup.sh installs it)")
        fortunes = re.split(r"^%$", ANSI.sub("", path.read_text(encoding="utf-8", errors="replace")), flags=re.M)
        for number, fortune in enumerate(fortunes):
            lines = [line.strip() for line in fortune.splitlines() if not line.strip().startswith("--")]
            out += clauses("".join(lines), f"fortunes-zh:{name}:{number}")
    return out


def manpage_sentences(folder: Path = MANPAGES_DIR) -> list[Sentence]:
    """Every usable clause of the manual pages' running text (roff requests and escapes dropped); section =
    manpages-zh:SECTION/PAGE."""
    pages = sorted(folder.glob("man*/*.gz"))
    if not pages:
        raise DataError(f"{folder} has no manual pages: speech-zh's out-of-domain test reads Debian's manpages-zh "
                        f"package (apt-get install manpages-zh; scripts/setup.sh installs it)")
    out = []
    for page in pages:
        roff = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
        lines = [line for line in roff.splitlines() if not line.startswith((".", "'"))]
        prose = re.sub(r"\\f[BIRP]|\\\(..|\\[-&e]", "", "".join(lines))
        out += clauses(prose, f"manpages-zh:{page.parent.name}/{page.name.removesuffix('.gz')}")
    return out


# the sources are read once per process: planning asks for the targets of every experiment
CORPUS = speech.SpeechCorpus(
    name="speech-zh", language="zh",
    pools=cache(lambda: speech.sentence_pools(fortune_sentences(), manpage_sentences())),
    train_voices=TRAIN_VOICES, test_only_voices=TEST_ONLY_VOICES, sources=SOURCES,
    normalisation=f"clauses ending in 。！？ or ；; Han characters and punctuation only; {MIN_CHARACTERS} to "
                  f"{MAX_CHARACTERS} characters; unique across splits; spoken as pinyin; target without punctuation")
plan, targets, build_speech_zh = CORPUS.plan, CORPUS.targets, CORPUS.build
