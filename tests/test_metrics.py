"""Metrics: normalisers, alignment counts, corpus-level WER/CER, QA scores, bootstrap intervals.

Expected values are worked out by hand in the comments, not copied from the code's output.
"""
import json

import numpy as np
import pytest

from steermoe import metrics
from steermoe.metrics import (Counts, bootstrap_ci, char_counts, normalize_answer, normalize_chinese, normalize_english,
                              paired_bootstrap, score_asr, score_qa, word_counts)

# ---------------------------------------------------------------- English normalisation


@pytest.mark.parametrize("text,expected", [
    ("Twelve", "12"),                                           # number words -> digits
    ("one hundred and five", "105"),
    ("twenty-one", "21"),                                       # hyphen -> space, then "twenty one" -> 21
    ("Nineteen ninety-nine", "1999"),
    ("ten percent", "10%"),                                     # "percent" becomes a suffix of the number
    ("The colour of the theatre", "the color of the theater"),  # British -> American (vendored table)
    ("Grey centre", "gray center"),
    ("Hello, World!", "hello world"),                           # case and punctuation
    ("  HELLO   world... ", "hello world"),                     # whitespace collapsed, outer stripped
    ("I won't go; they can't stay.", "i will not go they can not stay"),
    ("They've left and we're here", "they have left and we are here"),
    ("I'm sure it'll rain", "i am sure it will rain"),
    # Whisper's known quirks, kept for comparability: "'s" always reads as "is", "mr" is expanded
    ("Mr. Smith's dog", "mister smith is dog"),
    ("Um, yes, uh, fine", "yes fine"),                          # fillers dropped
    ("[noise] hello (laughs)", "hello"),                        # bracketed/parenthesised text dropped
    ("Café naïve", "cafe naive"),                               # diacritics dropped
    # Whisper alone leaves "wait ." (only the last dot of "..." survives): the stray "." is dropped
    ("Wait...", "wait"),
    ("It costs $.", "it costs"),
    ("$20.50 and 50%", "$20.50 and 50%"),                       # symbols attached to numbers stay
])
def test_normalize_english(text, expected):
    assert normalize_english(text) == expected


def test_english_normaliser_built_once():
    assert metrics.english_normalizer() is metrics.english_normalizer()


def test_spelling_table_is_vendored():
    mapping = json.loads(metrics.SPELLING_MAPPING.read_text(encoding="utf-8"))
    assert mapping["colour"] == "color" and len(mapping) > 1000


# ---------------------------------------------------------------- Chinese normalisation

@pytest.mark.parametrize("text,expected", [
    ("你好，世界！", "你好世界"),                      # CJK full-width comma and exclamation
    ("“测试”……《书》、【注】。", "测试书注"),          # CJK quotes, ellipsis, brackets, enumeration comma
    ("hi, there! (ok)? $5+1", "hithereok51"),          # ASCII punctuation and symbols
    ("ＡＢＣ１２３", "abc123"),                        # NFKC full-width folding, then case folding
    ("ＡＢＣ，１２３！", "abc123"),                    # full-width comma/exclamation fold to ASCII, then go
    ("我用iPhone拍照", "我用iphone拍照"),              # Latin letters stay, one unit each, case-folded
    ("你 好\t世\n界　啊", "你好世界啊"),               # ASCII spaces, tab, newline, ideographic space U+3000
    ("總當前行開始，向前搜索。", "总当前行开始向前搜索"),  # traditional characters written simplified
])
def test_normalize_chinese(text, expected):
    assert normalize_chinese(text) == expected


# ---------------------------------------------------------------- QA normalisation

@pytest.mark.parametrize("text,expected", [
    ("The Two dogs!", "2 dogs"),
    ("An apple, a pear.", "apple pear"),
    ("  Yes. ", "yes"),
    ("zero", "0"),
    ("Twenty", "20"),
    ("twenty-one", "twentyone"),   # punctuation is deleted (SQuAD), and only single words 0..20 map
    ("It’s there", "its there"),   # Unicode apostrophe is punctuation too
    ("theory", "theory"),          # articles only as whole words
    ("the", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# ---------------------------------------------------------------- alignment counts

@pytest.mark.parametrize("ref,hyp,expected", [
    ("the cat sat", "the bat sat", Counts(1, 0, 0, 2, 3, 3)),        # cat -> bat
    ("the cat sat", "the sat", Counts(0, 1, 0, 2, 3, 2)),            # cat deleted
    ("the cat sat", "the cat sat down", Counts(0, 0, 1, 3, 3, 4)),   # down inserted
    ("the cat sat", "", Counts(0, 3, 0, 0, 3, 0)),
    ("", "oh no", Counts(0, 0, 2, 0, 0, 2)),                         # empty reference: all insertions
    ("a\tb", "a  b", Counts(0, 0, 0, 2, 2, 2)),                      # any whitespace separates words
])
def test_word_counts(ref, hyp, expected):
    assert word_counts(ref, hyp) == expected


@pytest.mark.parametrize("ref,hyp,expected", [
    ("你好世界", "你好视界", Counts(1, 0, 0, 3, 4, 4)),
    ("你好世界", "你好", Counts(0, 2, 0, 2, 4, 2)),
    ("你好", "你们好", Counts(0, 0, 1, 2, 2, 3)),
    ("ab cd", "ab cd", Counts(0, 0, 0, 5, 5, 5)),                    # the inner space is a character
    (" ", "啊", Counts(0, 0, 1, 0, 0, 1)),
])
def test_char_counts(ref, hyp, expected):
    assert char_counts(ref, hyp) == expected


# ---------------------------------------------------------------- ASR scoring

NATO = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"


def test_wer_is_corpus_level_not_mean_of_rates():
    # 0 errors / 10 words and 1 substitution / 1 word: corpus 1/11, mean of rates (0 + 1) / 2 = 0.5
    result = score_asr([NATO, "hello"], [NATO, "goodbye"], "wer")
    assert result["value"] == pytest.approx(1 / 11)
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (1, 0, 0)
    assert result["reference_units"] == 11 and result["utterances"] == 2
    assert result["per_utterance"] == [{"errors": 0, "reference_units": 10},
                                       {"errors": 1, "reference_units": 1}]


def test_wer_counts_each_error_type():
    # S: cat->bat; D: sat; I: down, now -> 4 errors over 3 + 3 + 2 = 8 reference words
    result = score_asr(["the cat sat", "a dog sat", "go home"], ["the bat sat", "a dog", "go home down now"], "wer")
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (1, 1, 2)
    assert result["value"] == pytest.approx(4 / 8)


def test_raw_and_normalised_wer_differ():
    refs = ["Hello, World!", "The colour is grey."]
    hyps = ["hello world", "the color is gray"]
    result = score_asr(refs, hyps, "wer")
    assert result["metric"] == "wer"
    assert result["value"] == 0.0          # identical after normalisation
    # raw: Hello,/hello World!/world The/the colour/color grey./gray -> 5 substitutions, "is" hits
    raw = result["raw"]
    assert (raw["substitutions"], raw["deletions"], raw["insertions"]) == (5, 0, 0)
    assert raw["reference_units"] == 6
    assert raw["value"] == pytest.approx(5 / 6)
    assert raw["ci95"][0] <= raw["value"] <= raw["ci95"][1]
    json.dumps(result)                     # the whole dict is JSON-serialisable


def test_raw_wer_only_collapses_whitespace():
    result = score_asr(["a  b\tc"], ["a b c"], "wer")
    assert result["raw"]["value"] == 0.0 and result["raw"]["reference_units"] == 3


def test_cer_normalises_then_counts_characters():
    # refs -> 你好世界 (4) and abc123 (6); hyps -> 你好视界 (1 substitution) and abc123 (0: case does not count)
    result = score_asr(["你好，世界。", "ＡＢＣ１２３"], ["你好 视界", "abc123"], "cer")
    assert result["metric"] == "cer"
    assert result["value"] == pytest.approx(1 / 10)
    assert result["reference_units"] == 10
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (1, 0, 0)
    assert "raw" not in result
    assert result["per_utterance"] == [{"errors": 1, "reference_units": 4},
                                       {"errors": 0, "reference_units": 6}]


def test_empty_reference_counts_insertions():
    # "[noise]" normalises to nothing: its two hypothesis words are insertions over 0 reference words
    result = score_asr(["hello world", "[noise]"], ["hello world", "good morning"], "wer")
    assert result["per_utterance"][1] == {"errors": 2, "reference_units": 0}
    assert result["insertions"] == 2 and result["reference_units"] == 2
    assert result["value"] == pytest.approx(2 / 2)


@pytest.mark.parametrize("refs,metric", [(["", "[noise]"], "wer"), (["，。", " "], "cer")])
def test_all_references_empty_raises(refs, metric):
    with pytest.raises(ValueError, match="references are empty"):
        score_asr(refs, ["a", "b"], metric)


def test_score_asr_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown ASR metric"):
        score_asr(["a"], ["a"], "bleu")
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score_asr(["a", "b"], ["a"], "wer")


# ---------------------------------------------------------------- QA scoring

QA_ANSWERS = [["yes", "yes", "no"], ["dog", "a dog", "cat"], ["three", "3", "several"],
              ["no", "no", "no"], ["birds", "bird", "birds chirping"]]
QA_HYPOTHESES = ["Yes.", "The dog is barking", "3", "I do not know", "a bird"]


def test_score_qa_majority_any_annotator_yes_no_and_lenient():
    result = score_qa(QA_ANSWERS, QA_HYPOTHESES)
    # majorities: yes (2 of 3), dog (dog, a dog -> dog), 3 (three -> 3), no, and birds (three answers one vote each:
    # the first listed). Exact: yes=yes; "dog is barking" is not dog; 3=3; "i do not know" is not no; "bird" is not
    # birds -> 2 of 5
    assert result["metric"] == "qa_accuracy"
    assert (result["value"], result["correct"], result["utterances"]) == (pytest.approx(0.4), 2, 5)
    assert result["reference_units"] == 5  # one unit per question, as in per_utterance
    assert result["per_utterance"] == [{"errors": e, "reference_units": 1} for e in (0, 1, 0, 1, 1)]
    # any annotator: "bird" is the second annotator's answer -> 3 of 5
    assert (result["any_annotator"]["correct"], result["any_annotator"]["utterances"]) == (3, 5)
    # yes/no subset: items 1 (target yes, correct) and 4 (target no, wrong)
    assert result["yes_no"]["value"] == pytest.approx(0.5)
    assert (result["yes_no"]["correct"], result["yes_no"]["utterances"]) == (1, 2)
    # lenient: "dog" in "dog is barking", "no" in "i do not know" (inside "not"!), "bird" in "birds"
    # -> all 5, where exact gives 3
    assert result["lenient_substring"]["value"] == pytest.approx(1.0)
    assert result["lenient_substring"]["correct"] == 5
    lo, hi = result["ci95"]
    assert lo <= result["value"] <= hi and lo < hi
    json.dumps(result)


def test_lenient_counts_where_exact_does_not():
    result = score_qa([["dog"]], ["the dog barks"])
    assert result["value"] == 0.0
    assert result["lenient_substring"]["value"] == 1.0


def test_lenient_uses_target_only_and_both_directions():
    # hypothesis "car" is inside target "race car" (hyp in target); "truck" is only in a non-target answer
    result = score_qa([["race car"], ["bus", "truck"]], ["car", "truck"])
    assert result["lenient_substring"]["correct"] == 1
    assert result["correct"] == 0  # bus and truck tie: the first listed, bus, is the target
    assert result["any_annotator"]["correct"] == 1  # "truck" matches the second annotator


def test_a_split_question_has_one_right_answer_the_majoritys():
    # annotators split 2-1 between yes and no: only "yes" is correct; "no" matches an annotator but is wrong.
    # Answering "yes" to everything scores 1 of 2 here (the second question's majority is no), not 2 of 2.
    answers = [["yes", "yes", "no"], ["no", "yes", "no"]]
    always_yes = score_qa(answers, ["yes", "yes"])
    assert (always_yes["correct"], always_yes["yes_no"]["correct"]) == (1, 1)
    assert always_yes["any_annotator"]["correct"] == 2
    assert score_qa(answers, ["no", "no"])["correct"] == 1
    assert score_qa(answers, ["Yes.", "NO!"])["correct"] == 2


@pytest.mark.parametrize("answers,majority", [
    (["A dog", "dog", "cat"], "dog"),  # normalised before counting: "a dog" and "dog" are one answer with 2 votes
    (["cat", "dog", "Dog."], "dog"),
    (["cat", "dog"], "cat"),  # a tie: the first listed
    (["", "the", "dog"], "dog"),  # empty answers (also after normalisation) never win
    (["the"], ""),
])
def test_the_majority_is_counted_after_normalisation_and_ties_go_to_the_first_listed(answers, majority):
    assert metrics.majority_answer(answers) == majority


def test_qa_without_yes_no_items():
    # only the majority (here the first of three tied answers) decides membership of the yes/no subset
    result = score_qa([["dog", "yes", "no"]], ["yes"])
    assert result["correct"] == 0 and result["any_annotator"]["correct"] == 1
    assert result["yes_no"] == {"value": None, "ci95": None, "correct": 0, "utterances": 0, "reference_units": 0}


def test_empty_answer_never_correct():
    # reference "the" and hypothesis "" both normalise to "": no credit from either score
    result = score_qa([["the"]], [""])
    assert result["correct"] == 0 and result["lenient_substring"]["correct"] == 0


def test_score_qa_rejects_bad_input():
    with pytest.raises(ValueError, match="2 answer lists but 1 hypotheses"):
        score_qa([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        score_qa([[]], ["a"])
    with pytest.raises(ValueError, match="no QA items"):
        score_qa([], [])


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_constant_rate_has_zero_width():
    # every utterance has rate 0.1, so every resample's sum(errors)/sum(units) is exactly 0.1
    assert bootstrap_ci(np.array([1, 2, 3]), np.array([10, 20, 30])) == (0.1, 0.1)


def test_bootstrap_is_seeded_and_level_matters():
    rng = np.random.default_rng(1)
    units = rng.integers(5, 20, size=50)
    errors = rng.binomial(units, 0.2)
    assert bootstrap_ci(errors, units, seed=3) == bootstrap_ci(errors, units, seed=3)
    lo95, hi95 = bootstrap_ci(errors, units, level=0.95)
    lo50, hi50 = bootstrap_ci(errors, units, level=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_bootstrap_rejects_zero_units():
    with pytest.raises(ValueError, match="no reference units"):
        bootstrap_ci(np.array([1, 2]), np.array([0, 0]))


def test_bootstrap_blocks_give_the_full_resample_count(monkeypatch):
    # tiny blocks force many index blocks; the interval must still come from all resamples
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 7)
    blocks = list(metrics.index_blocks(n=3, seed=0, resamples=10))
    assert sum(len(b) for b in blocks) == 10 and all(b.shape[1] == 3 for b in blocks)


def test_bootstrap_ci_coverage():
    # 200 datasets of 100 utterances with a true word error rate of 0.1: a 95% interval should
    # cover 0.1 in about 95% of them (binomial sd ~1.5 points), and always contain its own estimate
    rng = np.random.default_rng(2024)
    true_rate, covered = 0.1, 0
    for dataset in range(200):
        units = rng.integers(3, 30, size=100)
        errors = rng.binomial(units, true_rate)
        lo, hi = bootstrap_ci(errors, units, seed=dataset)
        estimate = errors.sum() / units.sum()
        assert lo <= estimate <= hi
        covered += lo <= true_rate <= hi
    assert 0.88 <= covered / 200 <= 0.99


# ---------------------------------------------------------------- paired bootstrap

def per_utterance(errors, units):
    return [{"errors": int(e), "reference_units": int(u)} for e, u in zip(errors, units)]


def test_paired_identical_systems():
    rng = np.random.default_rng(5)
    units = rng.integers(5, 20, size=40)
    system = per_utterance(rng.binomial(units, 0.2), units)
    result = paired_bootstrap(system, system)
    assert result["delta"] == 0.0 and result["ci95"] == [0.0, 0.0]
    assert result["p_value"] == 1.0 and result["a"] == result["b"]
    assert result["resamples"] == 1000


def test_paired_clearly_better_system():
    # a: 2, 4, 2, 4, ... errors of 10 words (rate 0.3); b: 2, 0, 2, 0, ... (rate 0.1).
    # b is never worse on any utterance, so every resample's delta is < 0 (unless it drew only
    # even-indexed utterances: probability 2**-100)
    units = [10] * 100
    a = per_utterance([2, 4] * 50, units)
    b = per_utterance([2, 0] * 50, units)
    result = paired_bootstrap(a, b)
    assert result["a"] == pytest.approx(0.3) and result["b"] == pytest.approx(0.1)
    assert result["delta"] == pytest.approx(-0.2)
    lo, hi = result["ci95"]
    assert lo <= -0.2 <= hi < 0
    assert result["p_value"] == pytest.approx(2 / 1001)  # no resample reaches zero: the smallest p 1000 resolve
    # swapping the systems mirrors the interval (same seed, same resamples)
    swapped = paired_bootstrap(b, a)
    assert swapped["delta"] == pytest.approx(0.2)
    assert swapped["ci95"] == pytest.approx([-hi, -lo])


def test_paired_no_difference_on_average():
    # each system wins half the utterances: observed delta 0, interval straddles 0, p far from 0
    units = [1] * 100
    result = paired_bootstrap(per_utterance([1, 0] * 50, units), per_utterance([0, 1] * 50, units))
    assert result["delta"] == 0.0
    lo, hi = result["ci95"]
    assert lo < 0 < hi
    assert result["p_value"] > 0.5


def test_paired_on_scored_systems():
    refs = [NATO] * 30
    better = score_asr(refs, [NATO] * 30, "wer")
    worse = score_asr(refs, [NATO.replace("golf", "gulf")] * 30, "wer")
    result = paired_bootstrap(worse["per_utterance"], better["per_utterance"])
    assert result["delta"] == pytest.approx(-0.1)   # 1 substitution per 10 words removed


def test_paired_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap(per_utterance([1, 2], [5, 5]), per_utterance([1], [5]))
    with pytest.raises(ValueError, match="reference units differ"):
        paired_bootstrap(per_utterance([1, 2], [5, 5]), per_utterance([1, 2], [5, 6]))


# ---------------------------------------------------------------- the original protocol (the original code's scoring)

@pytest.mark.parametrize("rows", [20, 101, 1234])
def test_the_original_subset_is_exactly_what_the_datasets_library_selects(rows):
    from datasets import Dataset

    from steermoe.declare.protocols import original_subset

    expected = Dataset.from_dict({"row": list(range(rows))}).train_test_split(test_size=0.05, seed=42)["test"]["row"]
    assert original_subset(rows) == list(expected)


def test_original_protocol_asr_is_raw_and_averaged_over_sampling_seeds():
    refs = ["HELLO WORLD", "A B C"]
    by_seed = [["hello world", "A B C"],  # case counts: 2 substitutions of 5 words -> 0.4
               ["HELLO WORLD", "A X C"]]  # 1 substitution -> 0.2
    result = metrics.score_as_the_original_code("wer", refs, [[r] for r in refs], by_seed, resamples=200)
    assert result["metric"] == "wer" and result["value"] == pytest.approx(0.3)
    assert result["seed_values"] == pytest.approx([0.4, 0.2]) and result["seed_std"] == pytest.approx(0.1)
    assert result["per_utterance"] == [{"errors": 2, "reference_units": 4}, {"errors": 1, "reference_units": 6}]
    assert result["reference_units"] == 5 and result["utterances"] == 2


def test_original_protocol_qa_scores_one_row_per_annotator_leniently():
    answers = [["yes", "yes", "no"], ["dog", "a dog"]]
    by_seed = [["Yes", "the dog barks"],  # rows: yes yes no -> 2 of 3; dog in "dog barks" twice -> 2 of 2: 4/5
               ["no", "cat"]]  # 1 of 3 and 0 of 2: 1/5
    result = metrics.score_as_the_original_code("qa_accuracy", ["yes", "dog"], answers, by_seed, resamples=200)
    assert result["metric"] == "qa_accuracy" and result["value"] == pytest.approx(0.5)
    assert result["seed_values"] == pytest.approx([0.8, 0.2])
    assert result["per_utterance"] == [{"errors": 3, "reference_units": 6}, {"errors": 2, "reference_units": 4}]
