"""Statistics over seed replicates: one experiment trained once per seed and scored on the same test utterances.

A replicate set's value is the mean over seeds of each seed's corpus rate (errors / reference units). Its 95 % CI
accounts for both sources of variance with a crossed two-way bootstrap: each resample draws S seeds from the S with
replacement and, independently, U utterances from the U, and takes the mean over the drawn seeds of their rates on
the drawn utterances (seeds and utterances are crossed, not nested: every seed decodes every utterance). With one
seed it is the ordinary utterance bootstrap. The paired comparison of two replicate sets pairs seed k of one with
seed k of the other and utterance u with utterance u, and resamples the pairs the same way.
"""
from __future__ import annotations

import numpy as np

from steermoe.metrics import BLOCK_ELEMENTS, two_sided_p

# The training variance measured on the embedded default (experiments/seeds.yaml, RESULTS.md): the standard deviation
# of layer_wise's WER minus linear's on synth-en's test set, in points, over seeds 0, 1 and 2 trained in bf16 and in
# fp32 on the 2-core Xeon (-5.8, -47.0, -9.6 and -3.2, -29.7, -19.3: six trainings of each row, a rough figure)
DEFAULT_DIFFERENCE_SD_POINTS = 16.8


def _matrix(runs: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed per-utterance records -> errors (S, U) and the shared reference units (U,)."""
    if not runs or not runs[0]:
        raise ValueError("no replicates to summarise")
    errors = np.array([[u["errors"] for u in run] for run in runs], dtype=float)
    units = np.array([[u["reference_units"] for u in run] for run in runs], dtype=float)
    if not (units == units[0]).all():
        raise ValueError("the replicates were not scored on the same references (reference units differ)")
    if units[0].sum() <= 0:
        raise ValueError("no reference units: the error rate is undefined")
    return errors, units[0]


def _resampled(errors: np.ndarray, units: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    """(resamples,) bootstrap values of the mean-over-seeds rate, seeds and utterances drawn independently."""
    rng = np.random.default_rng(seed)
    n_seeds, n_utts = errors.shape
    values = []
    rows = max(1, BLOCK_ELEMENTS // (n_utts * n_seeds))
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        utts = rng.integers(0, n_utts, size=(count, n_utts))  # (B, U)
        seeds = rng.integers(0, n_seeds, size=(count, n_seeds))  # (B, S)
        den = units[utts].sum(axis=1)  # (B,)
        rates = errors[:, utts].sum(axis=2) / np.where(den > 0, den, np.nan)  # (S, B): each seed on each draw
        values.append(np.take_along_axis(rates.T, seeds, axis=1).mean(axis=1))  # (B,)
    values = np.concatenate(values)
    return values[~np.isnan(values)]


def bootstrap_values(runs: list[list[dict]], seed: int = 0, resamples: int = 1000) -> np.ndarray:
    """The crossed bootstrap's values of a replicate set's mean rate (the CI's percentiles come from these)."""
    return _resampled(*_matrix(runs), seed, resamples)


def summarise(runs: list[list[dict]], seed: int = 0, resamples: int = 1000) -> dict:
    """Mean, standard deviation across seeds (n - 1) and the crossed-bootstrap 95 % CI of a replicate set."""
    errors, units = _matrix(runs)
    per_seed = errors.sum(axis=1) / units.sum()
    low, high = np.percentile(bootstrap_values(runs, seed, resamples), [2.5, 97.5])
    return {"mean": float(per_seed.mean()), "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
            "ci95": [float(low), float(high)], "seeds": len(per_seed), "per_seed": [float(v) for v in per_seed],
            "resamples": resamples}


def paired(a: list[list[dict]], b: list[list[dict]], seed: int = 0, resamples: int = 1000) -> dict:
    """delta = mean rate(b) - mean rate(a), paired by seed index and utterance; CI and a two-sided p-value as in
    steermoe.metrics.paired_bootstrap (metrics.two_sided_p)."""
    if len(a) != len(b):
        raise ValueError(f"paired replicates need the same seeds: {len(a)} vs {len(b)}")
    errors_a, units = _matrix(a)
    errors_b, units_b = _matrix(b)
    if errors_a.shape != errors_b.shape or not np.array_equal(units, units_b):
        raise ValueError("paired replicates were not scored on the same utterances and references")
    # the difference of two mean rates over the same draws is the mean rate of the per-seed error differences
    deltas = _resampled(errors_b - errors_a, units, seed, resamples)
    low, high = np.percentile(deltas, [2.5, 97.5])
    rate_a, rate_b = errors_a.sum(axis=1) / units.sum(), errors_b.sum(axis=1) / units.sum()
    return {"a": float(rate_a.mean()), "b": float(rate_b.mean()), "delta": float((rate_b - rate_a).mean()),
            "ci95": [float(low), float(high)], "p_value": two_sided_p(deltas),
            "seeds": len(rate_a), "resamples": resamples}


def training_margin(seeds: int, sd_points: float = DEFAULT_DIFFERENCE_SD_POINTS) -> float:
    """The 95 % margin, in points, that training variance alone puts on a paired difference of two rows trained
    with `seeds` seeds each (a normal approximation: 1.96 sd / sqrt(seeds))."""
    return 1.96 * sd_points / seeds ** 0.5


def seeds_per_group(experiments: list) -> dict[str, int]:
    """Each group's fewest seeds per trained row (a replicate set counts its members, a single training 1)."""
    sets: dict[str, dict[str, int]] = {}
    for exp in experiments:
        if exp.group and exp.trains and exp.trained_by is None:
            members = sets.setdefault(exp.group, {})
            name = exp.replicate_of or exp.id
            members[name] = members.get(name, 0) + 1
    return {group: min(members.values()) for group, members in sets.items() if len(members) > 1}
