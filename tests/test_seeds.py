"""Statistics over seed replicates, checked against distributions computed by hand."""
import numpy as np
import pytest

from steermoe.report.seeds import bootstrap_values, paired, summarise


def records(errors: list[int], units=(2, 2)) -> list[dict]:
    return [{"errors": e, "reference_units": n} for e, n in zip(errors, units)]


# two seeds x two utterances of 2 reference words each: seed 0 makes 1 + 0 errors, seed 1 makes 2 + 1
RUNS = [records([1, 0]), records([2, 1])]


def frequencies(values: np.ndarray) -> dict:
    support, counts = np.unique(np.round(values, 9), return_counts=True)
    return {float(v): c / len(values) for v, c in zip(support, counts)}


def test_the_seed_summary_is_the_mean_and_spread_of_the_per_seed_rates():
    out = summarise(RUNS, resamples=2000)
    assert out["per_seed"] == [0.25, 0.75] and out["mean"] == 0.5
    assert out["std"] == pytest.approx(np.sqrt(2 * 0.25 ** 2))  # n - 1 in the denominator
    assert out["seeds"] == 2


def test_the_crossed_bootstrap_draws_seeds_and_utterances_independently():
    # By hand: the utterance draw (0,0) gives seed rates (0.5, 1.0), (0,1) or (1,0) give (0.25, 0.75), (1,1) gives
    # (0, 0.5); the seed draw (s0,s0), (s1,s1) or mixed (p 1/4, 1/4, 1/2) averages them. Over all 16 outcomes:
    exact = {0.0: 1 / 16, 0.25: 4 / 16, 0.5: 6 / 16, 0.75: 4 / 16, 1.0: 1 / 16}
    values = bootstrap_values(RUNS, seed=1, resamples=40_000)
    observed = frequencies(values)
    assert set(observed) == set(exact)
    for value, p in exact.items():
        assert observed[value] == pytest.approx(p, abs=0.01), value
    # 6.25 % of the mass sits on each end, so the 95 % interval spans the whole support
    assert summarise(RUNS, resamples=4000)["ci95"] == [0.0, 1.0]


def test_one_seed_reduces_to_the_utterance_bootstrap():
    values = bootstrap_values(RUNS[:1], seed=0, resamples=40_000)
    exact = {0.0: 1 / 4, 0.25: 1 / 2, 0.5: 1 / 4}  # utterance draws (1,1), mixed, (0,0)
    for value, p in exact.items():
        assert frequencies(values)[value] == pytest.approx(p, abs=0.01)
    assert summarise(RUNS[:1])["std"] == 0.0


def test_the_paired_comparison_pairs_seeds_and_utterances():
    better = [records([0, 0]), records([1, 1])]  # rates 0 and 0.5: 0.25 below RUNS on each seed
    out = paired(RUNS, better, resamples=40_000)
    assert out["a"] == 0.5 and out["b"] == 0.25 and out["delta"] == -0.25
    # the per-seed error differences are (-1, 0) for both seeds: the delta is -0.5, -0.25 or 0 with p 1/4, 1/2, 1/4
    assert out["ci95"] == [-0.5, 0.0]
    assert out["p_value"] == pytest.approx(0.5, abs=0.02)  # a quarter of the draws reach zero, doubled


def test_replicates_scored_on_other_references_or_seeds_are_refused():
    with pytest.raises(ValueError, match="same references"):
        summarise([records([1, 0]), records([1, 0], units=(2, 3))])
    with pytest.raises(ValueError, match="same seeds"):
        paired(RUNS, RUNS[:1])
