"""The statistics on constructed cases whose answer is known."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from compress.report import significance as sig


@pytest.fixture
def baseline():
    return np.random.default_rng(7).random(60)


def test_identical_models_are_not_significantly_different(baseline):
    result = sig.paired_comparison(baseline, baseline.copy(), sig.MEAN, resamples=2000)
    assert result.diff == 0
    assert result.p_value == 1.0
    assert result.low == result.high == 0


def test_a_model_higher_on_every_prompt_is_significant(baseline):
    higher = baseline + np.random.default_rng(8).uniform(0.01, 0.2, size=len(baseline))
    result = sig.paired_comparison(higher, baseline, sig.SUM, resamples=2000)
    assert result.diff == pytest.approx(float(np.sum(higher - baseline)))
    assert result.p_value == sig.smallest_p(2000)  # no swap gets as far from zero as the observed difference
    assert 0 < result.low <= result.diff <= result.high


def test_exchangeable_models_are_not_significant():
    rng = np.random.default_rng(3)
    a, b = rng.random(500), rng.random(500)
    result = sig.paired_comparison(a, b, sig.MEAN, resamples=2000)
    assert result.p_value > 0.05
    assert result.low < 0 < result.high


def test_paired_p_value_agrees_with_the_paired_t_test_on_a_large_sample():
    rng = np.random.default_rng(4)
    base = rng.random(1000)
    other = base + rng.normal(0.02, 0.2, size=1000)
    result = sig.paired_comparison(other, base, sig.MEAN, resamples=5000)
    expected = stats.ttest_rel(other, base).pvalue
    assert result.p_value == pytest.approx(expected, abs=0.02)


def exact_two_sided_sign_flip_p(differences):
    """All 2^n sign flips of the per-document differences: the share whose mean is as far from 0 as observed."""
    d = np.asarray(differences, dtype=float)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs(signs @ d)
    return float(np.mean(flipped >= abs(d.sum()) - 1e-12))


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["above", "below"])
def test_permutation_p_is_two_sided_and_matches_full_enumeration(direction):
    """12 documents, 4096 sign flips enumerated: a model above its baseline and one below get the same p."""
    rng = np.random.default_rng(11)
    base = rng.random(12)
    # 9 documents one way, 3 the other, distinct sizes: neither a certain nor a hopeless difference
    differences = direction * np.array([0.31, 0.12, 0.27, -0.09, 0.18, 0.22, -0.15, 0.05, 0.36, -0.21, 0.14, 0.08])
    model = base + differences
    exact = exact_two_sided_sign_flip_p(model - base)
    assert 0.05 < exact < 0.2  # precondition: a one-sided test would give about half of this, or near 1 below
    result = sig.paired_comparison(model, base, sig.MEAN, resamples=20_000)
    assert result.diff == pytest.approx(float(np.mean(differences)))
    assert (result.diff < 0) == (direction < 0)
    # 20,000 resamples: standard error of the estimate about 0.0025
    assert result.p_value == pytest.approx(exact, abs=0.01)


def test_bootstrap_interval_of_a_mean_matches_the_normal_interval():
    values = np.random.default_rng(5).random(2000)
    interval = sig.bootstrap_interval(values, sig.MEAN, resamples=4000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert interval.value == pytest.approx(values.mean())
    assert interval.low == pytest.approx(values.mean() - half, rel=0.01)
    assert interval.high == pytest.approx(values.mean() + half, rel=0.01)
    # the endpoints sit near 0.5 either way; the half-width tells 95% (1.96 sd) from 90% (1.64) or 80% (1.28)
    assert (interval.high - interval.low) / 2 == pytest.approx(half, rel=0.05)
    summed = sig.bootstrap_interval(values, sig.SUM, resamples=4000)
    assert summed.low == pytest.approx(interval.low * len(values))


def test_bootstrap_interval_covers_the_true_mean_95_percent_of_the_time():
    """1000 samples of 100 uniform values (true mean 0.5): the 95% interval should hold 0.5 in about 950 of them
    (a percentile bootstrap runs slightly under its level at this size; a 90% interval would hold it ~900 times)."""
    rng = np.random.default_rng(12)
    trials = 1000
    covered = 0
    for _ in range(trials):
        interval = sig.bootstrap_interval(rng.random(100), sig.MEAN, resamples=1000)
        covered += interval.low <= 0.5 <= interval.high
    # binomial standard error at 0.95: 0.007; the band is [0.925, 0.970]
    assert 0.925 <= covered / trials <= 0.97, covered


def test_perplexity_aggregation_is_lm_evals_weighted_perplexity():
    pairs = [(-10.0, 4), (-3.0, 1), (-7.5, 3)]
    interval = sig.bootstrap_interval(pairs, sig.PERPLEXITY, resamples=500)
    assert interval.value == pytest.approx(math.exp(20.5 / 8))
    assert interval.low <= interval.value <= interval.high
    assert sig.evaluate_statistic(sig.BITS_PER_BYTE, sig.prepare_values(sig.BITS_PER_BYTE, pairs)) == pytest.approx(
        20.5 / 8 / math.log(2))


def test_record_statistics_follow_the_same_resamples_as_vectorised_ones(baseline):
    records_a = [{"x": v} for v in baseline + 0.05]
    records_b = [{"x": v} for v in baseline[::-1]]
    by_record = sig.RecordAggregation("mean x", lambda recs: [sum(r["x"] for r in recs) / len(recs)])
    slow = sig.paired_comparison(records_a, records_b, by_record, resamples=300)
    fast = sig.paired_comparison(baseline + 0.05, baseline[::-1], sig.MEAN, resamples=300)
    assert slow.diff == pytest.approx(fast.diff)
    assert slow.p_value == pytest.approx(fast.p_value)
    assert (slow.low, slow.high) == pytest.approx((fast.low, fast.high))


def test_corrections_match_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert sig.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert sig.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    with_nan = sig.correct([0.01, math.nan, 0.02], "holm")
    assert math.isnan(with_nan[1]) and with_nan[0] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="unknown correction"):
        sig.correct(p, "bonferroni-ish")


def test_spearman_exact_for_small_samples_and_scipy_for_large():
    perfect = sig.spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert perfect.rho == pytest.approx(1.0)
    assert perfect.exact and perfect.p_value == pytest.approx(2 / math.factorial(5))
    rng = np.random.default_rng(6)
    x, y = rng.random(25), rng.random(25)
    large = sig.spearman(x, y)
    reference = stats.spearmanr(x, y)
    assert large.rho == pytest.approx(reference.statistic)
    assert large.p_value == pytest.approx(reference.pvalue)
    assert large.low < large.rho < large.high
    # scipy's p for n > 8 is the t approximation: recompute it by hand
    t = large.rho * math.sqrt((25 - 2) / (1 - large.rho ** 2))
    assert large.p_value == pytest.approx(2 * stats.t.sf(abs(t), 25 - 2), rel=1e-6)
    assert math.isnan(sig.spearman([1, 2], [3, 4]).rho)
    assert math.isnan(sig.spearman([1, 2, 3], [5, 5, 5]).rho)


def test_spearman_exact_p_and_fisher_z_interval_by_hand():
    """n = 5, not perfectly ordered: rho from the d^2 formula, p from all 120 orderings, Bonett-Wright interval."""
    x, y = [10, 20, 30, 40, 50], [2.0, 1.0, 4.0, 3.0, 5.0]
    result = sig.spearman(x, y)
    n = 5

    def rho_of(ranks):  # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
        return 1 - 6 * sum((i + 1 - r) ** 2 for i, r in enumerate(ranks)) / (n * (n * n - 1))

    rho = rho_of([2, 1, 4, 3, 5])
    assert rho == pytest.approx(0.8)
    assert result.rho == pytest.approx(rho) and result.n == 5 and result.exact
    as_extreme = sum(abs(rho_of(perm)) >= abs(rho) - 1e-12 for perm in itertools.permutations(range(1, 6)))
    assert result.p_value == pytest.approx(as_extreme / 120)
    assert result.p_value < 1 and as_extreme > 2  # not the perfect-order case
    # Fisher z with Bonett and Wright's standard error sqrt((1 + rho^2 / 2) / (n - 3))
    z, se = math.atanh(rho), math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    assert (result.low, result.high) == pytest.approx((math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)),
                                                      rel=1e-5)
    # n = 25 uses the same interval
    rng = np.random.default_rng(6)
    a, b = rng.random(25), rng.random(25)
    large = sig.spearman(a, b)
    z, se = math.atanh(large.rho), math.sqrt((1 + large.rho ** 2 / 2) / 22)
    assert (large.low, large.high) == pytest.approx((math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)),
                                                    rel=1e-5)


def test_paired_values_must_cover_the_same_documents():
    with pytest.raises(ValueError, match="same documents"):
        sig.paired_comparison([1.0, 2.0], [1.0], sig.MEAN)
    with pytest.raises(ValueError, match="2 number"):
        sig.bootstrap_interval([1.0, 2.0], sig.PERPLEXITY)


def test_multi_output_record_statistics_share_one_call_per_resample(baseline):
    records = [{"x": v} for v in baseline]
    calls = []

    def mean_and_max(recs):
        calls.append(1)
        xs = [r["x"] for r in recs]
        return [sum(xs) / len(xs), max(xs)]

    both = sig.RecordAggregation("x", mean_and_max, ("mean", "max"))
    mean_interval, max_interval = sig.bootstrap_intervals(records, both, resamples=200)
    assert len(calls) == 1 + 200
    expected = sig.bootstrap_interval(baseline, sig.MEAN, resamples=200)
    assert (mean_interval.value, mean_interval.low, mean_interval.high) == pytest.approx(
        (expected.value, expected.low, expected.high))
    assert max_interval.value == pytest.approx(baseline.max()) and max_interval.high <= baseline.max()
