"""Honest evaluation metrics: corpus-level WER/CER, QA accuracy, bootstrap confidence intervals.

Rates are corpus-level (total errors / total reference units), never a mean of per-utterance rates.
Every headline value comes with a 95% percentile-bootstrap interval over utterances. QA is scored against the
majority answer; "matches any annotator" and the original code's lenient substring score are kept only as
separately labelled secondary numbers.

English normalisation is Whisper's EnglishTextNormalizer (the transformers port, functionally
identical to openai/whisper's `whisper/normalizers/english.py`), so WERs are comparable with
published Whisper-style numbers. Its British->American spelling table `normalizer_english.json`
is vendored unchanged from openai-whisper 20250625 (`whisper/normalizers/english.json`,
MIT License, Copyright (c) 2022 OpenAI).
"""
from __future__ import annotations

import json
import string
from collections import Counter
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jiwer
import numpy as np

SPELLING_MAPPING = Path(__file__).with_name("normalizer_english.json")
ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
# bound the bootstrap's index matrix (elements per block) so large test sets do not need GBs
BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------- normalisation

@lru_cache(maxsize=None)
def english_normalizer():
    """Whisper's EnglishTextNormalizer with the vendored spelling table, built once."""
    # imported lazily: transformers is heavy and only English WER needs it
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(json.loads(SPELLING_MAPPING.read_text(encoding="utf-8")))


def normalize_english(text: str) -> str:
    """Whisper English normalisation: lowercase, no punctuation/fillers, digits, American spelling.

    One addition to Whisper's: tokens without a letter or digit are dropped, because Whisper's
    leaves e.g. "wait..." as "wait ." and that stray "." would count as a word error.
    """
    return " ".join(word for word in english_normalizer()(text).split()
                    if any(c.isalnum() for c in word))


def _is_punctuation(char: str) -> bool:
    # ASCII symbols such as $+<=>|~ are not Unicode category P but are punctuation to a reader
    return char in string.punctuation or unicodedata.category(char).startswith("P")


@lru_cache(maxsize=1)
def _to_simplified():
    import opencc

    return opencc.OpenCC("t2s")


def normalize_chinese(text: str) -> str:
    """NFKC (full-width letters/digits -> ASCII), case-folded, traditional characters written simplified (OpenCC's
    t2s), then all punctuation and whitespace dropped.

    Latin letters and digits inside Chinese text stay, one character each like a Chinese character: "iPhone" is six
    units, and "iPhone" against "iphone" is no error (as in the field's CER tools). 總 against 总 is no error
    either: Whisper often writes Mandarin in traditional characters, a choice of script, not a misrecognition.
    """
    return "".join(c for c in _to_simplified().convert(unicodedata.normalize("NFKC", text).casefold())
                   if not (c.isspace() or _is_punctuation(c)))


def majority_answer(answers: list[str]) -> str:
    """The normalised answer most annotators gave. A tie goes to the tied answer listed first (datasets list their
    own target answer first); empty answers never count."""
    normalised = [normalize_answer(a) for a in answers]
    votes = Counter(a for a in normalised if a)
    if not votes:
        return ""
    most = max(votes.values())
    return next(a for a in normalised if votes.get(a) == most)


def normalize_answer(text: str) -> str:
    """SQuAD-style answer normalisation, plus number words zero..twenty -> digits."""
    # punctuation is deleted, not replaced by a space, as in the SQuAD evaluation script
    text = "".join(c for c in text.lower() if not _is_punctuation(c))
    words = (NUMBER_WORDS.get(word, word) for word in text.split())
    return " ".join(word for word in words if word not in ARTICLES)


# ---------------------------------------------------------------- alignment counts

@dataclass
class Counts:
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_units: int
    hypothesis_units: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def _insertions_only(hypothesis_units: int) -> Counts:
    # an empty reference has no alignment: every hypothesis unit is an insertion
    # (jiwer 3.x raises on empty references, so never hand one to it)
    return Counts(0, 0, hypothesis_units, 0, 0, hypothesis_units)


def _from_jiwer(out) -> Counts:
    s, d, i, h = out.substitutions, out.deletions, out.insertions, out.hits
    return Counts(s, d, i, h, reference_units=s + d + h, hypothesis_units=s + i + h)


def word_counts(reference: str, hypothesis: str) -> Counts:
    """Word-level alignment counts (words are whitespace-separated tokens)."""
    # jiwer only collapses runs of whitespace and splits on " ", so a lone tab would glue two words
    reference, hypothesis = " ".join(reference.split()), " ".join(hypothesis.split())
    if not reference:
        return _insertions_only(len(hypothesis.split()))
    return _from_jiwer(jiwer.process_words(reference, hypothesis))


def char_counts(reference: str, hypothesis: str) -> Counts:
    """Character-level alignment counts; inner spaces are characters, outer whitespace is not."""
    # jiwer strips both strings itself; stripping here keeps the empty-reference check consistent
    reference, hypothesis = reference.strip(), hypothesis.strip()
    if not reference:
        return _insertions_only(len(hypothesis))
    return _from_jiwer(jiwer.process_characters(reference, hypothesis))


# ---------------------------------------------------------------- bootstrap

def index_blocks(n: int, seed: int, resamples: int):
    """Resampled utterance indices, (rows, n) blocks totalling `resamples` rows; a block holds at most
    BLOCK_ELEMENTS elements (one row at least)."""
    rng = np.random.default_rng(seed)
    rows = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def _rates(errors: np.ndarray, units: np.ndarray, index: np.ndarray) -> np.ndarray:
    num, den = errors[index].sum(axis=1), units[index].sum(axis=1)
    # a resample made only of empty references has no defined rate: NaN, ignored by nanpercentile
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _arrays(errors, units) -> tuple[np.ndarray, np.ndarray]:
    errors, units = np.asarray(errors, dtype=float), np.asarray(units, dtype=float)
    if errors.shape != units.shape or errors.ndim != 1:
        raise ValueError(f"errors and units must be 1-D of equal length, got {errors.shape} and {units.shape}")
    if units.sum() <= 0:
        raise ValueError("no reference units: the error rate is undefined")
    return errors, units


def bootstrap_ci(errors: np.ndarray, units: np.ndarray, seed: int = 0, resamples: int = 1000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of sum(errors)/sum(units), resampling utterances with replacement."""
    errors, units = _arrays(errors, units)
    rates = np.concatenate([_rates(errors, units, index)
                            for index in index_blocks(len(errors), seed, resamples)])
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(rates, [tail, 100 - tail])
    return float(low), float(high)


def two_sided_p(deltas: np.ndarray) -> float:
    """min(1, 2 (k + 1) / (B + 1)), k being the number of the B resampled deltas on the rarer side of zero."""
    beyond_zero = min(int(np.sum(deltas <= 0)), int(np.sum(deltas >= 0)))
    return min(1.0, 2 * (beyond_zero + 1) / (len(deltas) + 1))


def paired_bootstrap(a: list[dict], b: list[dict], seed: int = 0, resamples: int = 1000) -> dict:
    """Paired bootstrap of delta = rate(b) - rate(a) on the same utterances (per_utterance lists).

    Both systems are scored on the same resampled utterance sets. `ci95` is the 2.5/97.5
    percentile interval of the resampled deltas. `p_value` is two-sided, min(1, 2 (k + 1) / (B + 1)), k being the
    number of the B resamples whose delta lies on the far side of zero (<= 0 or >= 0, whichever is rarer). The +1s
    (Davison & Hinkley's estimate) keep it an honest bound: when no resample reaches zero it is 2 / (B + 1), the
    smallest p that B resamples can resolve, never 0. Identical systems give 1.0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same utterances: {len(a)} vs {len(b)} items")
    errors_a, units = _arrays([u["errors"] for u in a], [u["reference_units"] for u in a])
    errors_b, units_b = _arrays([u["errors"] for u in b], [u["reference_units"] for u in b])
    # different reference units mean different references or normalisation: not a paired comparison
    if not np.array_equal(units, units_b):
        raise ValueError("paired bootstrap: reference units differ per utterance; "
                         "a and b were not scored on the same references")
    rate_a, rate_b = errors_a.sum() / units.sum(), errors_b.sum() / units.sum()
    deltas = np.concatenate([_rates(errors_b, units, index) - _rates(errors_a, units, index)
                             for index in index_blocks(len(units), seed, resamples)])
    deltas = deltas[~np.isnan(deltas)]
    low, high = np.percentile(deltas, [2.5, 97.5])
    p_value = two_sided_p(deltas)
    return {"a": float(rate_a), "b": float(rate_b), "delta": float(rate_b - rate_a),
            "ci95": [float(low), float(high)], "p_value": float(p_value), "resamples": resamples}


# ---------------------------------------------------------------- scoring

def _summary(counts: list[Counts], seed: int, resamples: int) -> dict:
    errors = [c.errors for c in counts]
    units = [c.reference_units for c in counts]
    total = sum(units)
    if total == 0:
        raise ValueError(f"all {len(counts)} references are empty after normalisation: "
                         "the error rate is undefined")
    return {"value": sum(errors) / total,
            "ci95": list(bootstrap_ci(errors, units, seed, resamples)),
            "substitutions": sum(c.substitutions for c in counts),
            "deletions": sum(c.deletions for c in counts),
            "insertions": sum(c.insertions for c in counts),
            "reference_units": total}


def score_asr(references: list[str], hypotheses: list[str], metric: str, seed: int = 0,
              resamples: int = 1000) -> dict:
    """Corpus-level WER (Whisper-normalised, raw beside it) or CER (Chinese-normalised)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if metric == "wer":
        counts = [word_counts(normalize_english(r), normalize_english(h))
                  for r, h in zip(references, hypotheses)]
        result = {"metric": "wer", **_summary(counts, seed, resamples)}
        # raw: exactly what the model wrote (case, punctuation, spelling all count)
        raw = [word_counts(r, h) for r, h in zip(references, hypotheses)]
        result["raw"] = _summary(raw, seed, resamples)
    elif metric == "cer":
        counts = [char_counts(normalize_chinese(r), normalize_chinese(h))
                  for r, h in zip(references, hypotheses)]
        result = {"metric": "cer", **_summary(counts, seed, resamples)}
    else:
        raise ValueError(f"unknown ASR metric {metric!r}: use 'wer' or 'cer'")
    result["utterances"] = len(references)
    result["per_utterance"] = [{"errors": c.errors, "reference_units": c.reference_units}
                               for c in counts]
    return result


def lenient_match(target: str, hypothesis: str) -> bool:
    """The original code's QA score: one normalised string inside the other (either way); empty never matches."""
    target, hypothesis = normalize_answer(target), normalize_answer(hypothesis)
    return bool(target) and bool(hypothesis) and (target in hypothesis or hypothesis in target)


def score_as_the_original_code(metric: str, references: list[str], answers: list[list[str]],
                           hypotheses_by_seed: list[list[str]], seed: int = 0, resamples: int = 1000) -> dict:
    """The original protocol's score (steermoe/declare/protocols.py): raw WER or CER (no normalisation at all), or QA
    with one row per annotator's answer scored by the lenient substring match. Each utterance's counts are summed over
    the sampling seeds, so `value` is the mean over seeds and `ci95` resamples utterances; `seed_values` has each seed's
    own value."""
    count = {"wer": word_counts, "cer": char_counts}.get(metric)
    errors, units, per_seed = np.zeros(len(references)), np.zeros(len(references)), []
    for hypotheses in hypotheses_by_seed:
        if metric == "qa_accuracy":
            pairs = [(sum(not lenient_match(a, h) for a in refs), len(refs)) for refs, h in zip(answers, hypotheses)]
        else:
            pairs = [(c.errors, c.reference_units) for c in map(count, references, hypotheses)]
        seed_errors, seed_units = (np.array(column, dtype=float) for column in zip(*pairs))
        rate = seed_errors.sum() / seed_units.sum()
        per_seed.append(1 - rate if metric == "qa_accuracy" else rate)
        errors, units = errors + seed_errors, units + seed_units
    low, high = bootstrap_ci(errors, units, seed, resamples)
    rate = errors.sum() / units.sum()
    value, ci = (1 - rate, [1 - high, 1 - low]) if metric == "qa_accuracy" else (rate, [low, high])
    return {"metric": metric, "value": float(value),
            "ci95": [float(ci[0]), float(ci[1])], "seed_values": [float(v) for v in per_seed],
            "seed_std": float(np.std(per_seed)), "utterances": len(references),
            "reference_units": int(units.sum() // max(1, len(hypotheses_by_seed))),
            "per_utterance": [{"errors": int(e), "reference_units": int(u)} for e, u in zip(errors, units)]}


def _accuracy(correct: list[bool], seed: int, resamples: int) -> dict:
    """Share of correct items with its CI; each item is one reference unit."""
    if not correct:
        return {"value": None, "ci95": None, "correct": 0, "utterances": 0, "reference_units": 0}
    hits = np.asarray(correct, dtype=float)
    return {"value": float(hits.mean()), "ci95": list(bootstrap_ci(hits, np.ones_like(hits), seed, resamples)),
            "correct": int(hits.sum()), "utterances": len(correct), "reference_units": len(correct)}


def score_qa(answers: list[list[str]], hypotheses: list[str], seed: int = 0, resamples: int = 1000) -> dict:
    """QA accuracy: exact match of the normalised hypothesis with the majority answer (headline), the same on the
    yes/no questions, "matches any annotator", and the original code's lenient substring score.

    answers[i] lists item i's annotators' answers; the target is their majority after normalisation
    (majority_answer). An empty hypothesis is never correct.
    any_annotator: the hypothesis equals any annotator's answer. It is not an accuracy: on a question split 2-1
    between "yes" and "no", both answers count.
    lenient_substring: target in hypothesis or hypothesis in target, as normalised strings; it credits e.g. "no"
    inside "i do not know".
    """
    if len(answers) != len(hypotheses):
        raise ValueError(f"{len(answers)} answer lists but {len(hypotheses)} hypotheses")
    if not answers:
        raise ValueError("no QA items to score")
    if any(not refs for refs in answers):
        raise ValueError("every QA item needs at least one reference answer")
    exact, any_annotator, lenient, yes_no = [], [], [], []
    for refs, hyp in zip(answers, hypotheses):
        hyp, target = normalize_answer(hyp), majority_answer(refs)
        correct = bool(hyp) and hyp == target
        exact.append(correct)
        any_annotator.append(bool(hyp) and hyp in {normalize_answer(r) for r in refs})
        lenient.append(lenient_match(target, hyp))
        if target in ("yes", "no"):
            yes_no.append(correct)
    return {"metric": "qa_accuracy", **_accuracy(exact, seed, resamples),
            "yes_no": _accuracy(yes_no, seed, resamples),
            "any_annotator": _accuracy(any_annotator, seed, resamples),
            "lenient_substring": _accuracy(lenient, seed, resamples),
            "per_utterance": [{"errors": int(not c), "reference_units": 1} for c in exact]}
