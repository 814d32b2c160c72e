"""Statistics for comparing models on the same documents: intervals, paired tests, corrections, rank correlation.

Every toxicity and bias metric is an aggregate (a mean, a sum, a ratio, or StereoSet's per-target
average) of per-document values that lm-eval logs with `--log_samples`. Two models evaluated on the
same prompts or sentence pairs are compared document by document:

- 95% interval of one model's metric: percentile bootstrap over documents.
- Paired difference model - baseline: percentile bootstrap over matched documents (both models
  resampled with the same indices), and a two-sided paired permutation test (each document's two
  values are swapped with probability 1/2; p = (1 + #{|D*| >= |D|}) / (1 + B)). Identical models give
  p = 1; a model that scores higher on every one of n documents gives p near 2^-n (1 / (1 + B) at least).
- Correction for the number of comparisons: Benjamini-Hochberg (false discovery rate, valid under
  the positive dependence that related metrics of the same models have) by default, or Holm
  (family-wise error rate). With B resamples no p-value falls below 1 / (1 + B); `smallest_p` says so.
- Rank correlation with model size: Spearman's rho, an exact permutation p-value for n <= 8 (the
  t approximation is poor there), and a Fisher-z interval with the Bonett-Wright standard error.

An aggregation works on values of shape (n_docs, k) and is vectorised over a leading resample axis,
so a bootstrap of a mean over 4,000 prompts is one array operation per block of resamples. A record
aggregation (a Python function of a list of per-document records, such as StereoSet's per-target
scores) is called once per resample instead, with fewer resamples; it may return several metrics at
once, so metrics computed from the same records share each call.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 10_000
RECORD_RESAMPLES = 1_000  # a record aggregation runs Python per resample
_BLOCK = 256  # resamples per vectorised block; bounds memory at _BLOCK x n_docs x k


@dataclass(frozen=True)
class Aggregation:
    """How per-document values become a metric: `fn(values[..., n_docs, k]) -> [...]`."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    width: int = 1  # k: numbers per document (2 for (loglikelihood, weight) perplexity pairs)
    linear: bool = False  # fn(a) - fn(b) == fn(a - b): paired work runs on the differences alone
    outputs: tuple[str, ...] | None = None  # names, when fn returns several metrics (shape [..., m])
    encode: Callable[[Sequence], np.ndarray] | None = None  # per-document records -> (n_docs, width)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self.fn(values)


MEAN = Aggregation("mean", lambda v: v[..., 0].mean(axis=-1), linear=True)
SUM = Aggregation("sum", lambda v: v[..., 0].sum(axis=-1), linear=True)


def weighted_ratio(v: np.ndarray) -> np.ndarray:
    """sum of v[..., 0] / sum of v[..., 1] over documents. A resample holding no weight (e.g. none of the few
    prompts of a BOLD group) has no finite value (0 / 0), which the percentiles leave out, without a warning."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return v[..., 0].sum(-1) / v[..., 1].sum(-1)


# lm-eval's weighted_perplexity and bits_per_byte over (loglikelihood, words-or-bytes) pairs.
PERPLEXITY = Aggregation("weighted_perplexity", lambda v: np.exp(-weighted_ratio(v)), width=2)
BITS_PER_BYTE = Aggregation("bits_per_byte", lambda v: -weighted_ratio(v) / math.log(2), width=2)


@dataclass(frozen=True)
class RecordAggregation:
    """Metrics computed by Python from a list of per-document records (dicts).

    `fn(records)` returns one number per name in `outputs`, so metrics that come from the same
    records (StereoSet's ss, lms and icat, overall and per domain) share every resample's call.
    """

    name: str
    fn: Callable[[list], Sequence[float]]
    outputs: tuple[str, ...] = ("value",)


Statistic = Aggregation | RecordAggregation


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    value: float  # metric of the model
    baseline: float  # metric of the baseline, on the same matched documents
    diff: float  # value - baseline
    low: float  # 95% bootstrap interval of diff
    high: float
    p_value: float
    n: int  # matched documents
    resamples: int


def as_array(values: Sequence, width: int) -> np.ndarray:
    """Per-document values as a float array of shape (n_docs, width)."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"expected {width} number(s) per document, got shape {array.shape}")
    return array


def outputs(statistic: Statistic) -> tuple[str, ...]:
    return statistic.outputs or (statistic.name,)


def prepare_values(statistic: Statistic, values):
    if isinstance(statistic, RecordAggregation):
        return list(values)
    if statistic.encode is not None:
        return as_array(statistic.encode(list(values)), statistic.width)
    return as_array(values, statistic.width)


def _on_rows(statistic: Statistic, values, rows: np.ndarray) -> np.ndarray:
    """The statistic on each row of document indices: shape (rows, outputs)."""
    if isinstance(statistic, Aggregation):
        return np.asarray(statistic(values[rows]), dtype=float).reshape(len(rows), -1)
    return np.array([statistic.fn([values[j] for j in row]) for row in rows], dtype=float).reshape(len(rows), -1)


def evaluate_all(statistic: Statistic, values) -> np.ndarray:
    """The statistic on prepared values: one number per output."""
    if isinstance(statistic, Aggregation):
        return np.asarray(statistic(values), dtype=float).reshape(-1)
    return np.asarray(statistic.fn(values), dtype=float).reshape(-1)


def evaluate_statistic(statistic: Statistic, values) -> float:
    return float(evaluate_all(statistic, values)[0])


def _resamples(statistic: Statistic, resamples: int | None) -> int:
    if resamples is not None:
        return resamples
    return DEFAULT_RESAMPLES if isinstance(statistic, Aggregation) else RECORD_RESAMPLES


def _bootstrap_draws(statistic: Statistic, samples: Sequence, rng: np.random.Generator, resamples: int) -> list:
    """The statistic on `resamples` bootstrap resamples of the documents, for each of `samples`.

    Every sample (one model's values, or the model's and the baseline's) is resampled with the same
    document indices, drawn block by block so that memory stays at _BLOCK x n_docs. Shape of each
    result: (resamples, outputs).
    """
    n = len(samples[0])
    draws = [np.empty((resamples, len(outputs(statistic))), dtype=float) for _ in samples]
    for start in range(0, resamples, _BLOCK):
        rows = rng.integers(0, n, size=(min(_BLOCK, resamples - start), n))
        for values, out in zip(samples, draws):
            out[start:start + len(rows)] = _on_rows(statistic, values, rows)
    return draws


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_intervals(values: Sequence, statistic: Statistic = MEAN, resamples: int | None = None,
                        level: float = 0.95, seed: int = 0) -> list[Interval]:
    """Percentile bootstrap intervals over documents of one model's metrics (one per output)."""
    values = prepare_values(statistic, values)
    n = len(values)
    observed = evaluate_all(statistic, values)
    if n < 2:
        return [Interval(float(v), math.nan, math.nan, n) for v in observed]
    (draws,) = _bootstrap_draws(statistic, [values], np.random.default_rng(seed), _resamples(statistic, resamples))
    return [Interval(float(v), *_percentiles(draws[:, k], level), n) for k, v in enumerate(observed)]


def bootstrap_interval(values: Sequence, statistic: Statistic = MEAN, resamples: int | None = None,
                       level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval over documents of one model's metric."""
    return bootstrap_intervals(values, statistic, resamples, level, seed)[0]


def paired_comparisons(model_values: Sequence, baseline_values: Sequence, statistic: Statistic = MEAN,
                       resamples: int | None = None, level: float = 0.95, seed: int = 0) -> list[PairedComparison]:
    """Model minus baseline on matched documents (same order in both sequences), one per output.

    The interval resamples documents (both models with the same indices); the p-value comes from
    swapping each document's pair of values at random, which is the null hypothesis that the two
    models are exchangeable on every document.
    """
    a, b = prepare_values(statistic, model_values), prepare_values(statistic, baseline_values)
    if len(a) != len(b):
        raise ValueError(f"paired values need the same documents: {len(a)} vs {len(b)}")
    n = len(a)
    value, baseline = evaluate_all(statistic, a), evaluate_all(statistic, b)
    diff = value - baseline
    resamples = _resamples(statistic, resamples)
    if n == 0:
        return [PairedComparison(float(v), float(w), float(d), math.nan, math.nan, math.nan, 0, resamples)
                for v, w, d in zip(value, baseline, diff)]
    rng = np.random.default_rng(seed)

    linear = isinstance(statistic, Aggregation) and statistic.linear
    if linear:
        (boot,) = _bootstrap_draws(statistic, [a - b], rng, resamples)
    else:
        boot_a, boot_b = _bootstrap_draws(statistic, [a, b], rng, resamples)
        boot = boot_a - boot_b

    swapped = np.empty((resamples, len(diff)), dtype=float)
    for start in range(0, resamples, _BLOCK):
        swap = rng.random((min(_BLOCK, resamples - start), n)) < 0.5
        if linear:  # swapping a document's pair flips the sign of its difference
            swapped[start:start + len(swap), 0] = statistic(np.where(swap[..., None], b - a, a - b))
        else:
            swapped[start:start + len(swap)] = _swapped_differences(statistic, a, b, swap)
    results = []
    for k in range(len(diff)):
        # Ties (e.g. identical models, every swap gives 0) count as at least as extreme; a small
        # tolerance keeps float noise in sums from breaking them.
        tolerance = 1e-9 * max(1.0, abs(diff[k]))
        extreme = np.count_nonzero(np.abs(swapped[:, k]) >= abs(diff[k]) - tolerance)
        p_value = float((1 + extreme) / (1 + resamples)) if np.isfinite(diff[k]) else math.nan
        results.append(PairedComparison(float(value[k]), float(baseline[k]), float(diff[k]),
                                        *_percentiles(boot[:, k], level), p_value, n, resamples))
    return results


def paired_comparison(model_values: Sequence, baseline_values: Sequence, statistic: Statistic = MEAN,
                      resamples: int | None = None, level: float = 0.95, seed: int = 0) -> PairedComparison:
    """Model minus baseline on matched documents; see `paired_comparisons`."""
    return paired_comparisons(model_values, baseline_values, statistic, resamples, level, seed)[0]


def _swapped_differences(statistic: Statistic, a, b, swap: np.ndarray) -> np.ndarray:
    """statistic(swapped a) - statistic(swapped b) per row of the swap mask: shape (rows, outputs)."""
    if isinstance(statistic, Aggregation):
        mask = swap[..., None]
        return (statistic(np.where(mask, b, a)) - statistic(np.where(mask, a, b))).reshape(len(swap), -1)
    out = []
    for row in swap:
        first = [b[j] if s else a[j] for j, s in enumerate(row)]
        second = [a[j] if s else b[j] for j, s in enumerate(row)]
        out.append(np.asarray(statistic.fn(first), dtype=float) - np.asarray(statistic.fn(second), dtype=float))
    return np.array(out, dtype=float).reshape(len(swap), -1)


def smallest_p(resamples: int) -> float:
    """The smallest p-value a permutation test with this many resamples can give."""
    return 1 / (1 + resamples)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error rate); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * p[i] / (rank + 1))
        adjusted[i] = running
    return adjusted.tolist()


CORRECTIONS = {"bh": benjamini_hochberg, "holm": holm}
CORRECTION_NAMES = {"bh": "Benjamini-Hochberg (false discovery rate)", "holm": "Holm-Bonferroni (family-wise error)"}


def correct(p_values: Sequence[float], method: str = "bh") -> list[float]:
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    return CORRECTIONS[method](p_values)


@dataclass(frozen=True)
class RankCorrelation:
    rho: float
    low: float
    high: float
    p_value: float
    n: int
    exact: bool


def spearman(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> RankCorrelation:
    """Spearman's rho of y with x, with a p-value and a Fisher-z interval; NaN where n is too small."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
    n = len(pairs)
    if n < 3:
        return RankCorrelation(math.nan, math.nan, math.nan, math.nan, n, False)
    rx, ry = stats.rankdata([a for a, _ in pairs]), stats.rankdata([b for _, b in pairs])
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:  # a constant has no rank correlation
        return RankCorrelation(math.nan, math.nan, math.nan, math.nan, n, False)
    rho = float(np.corrcoef(rx, ry)[0, 1])
    exact = n <= 8
    if exact:
        observed = abs(rho) - 1e-12
        hits = sum(abs(np.corrcoef(rx, perm)[0, 1]) >= observed for perm in itertools.permutations(ry))
        p_value = hits / math.factorial(n)
    else:
        p_value = float(stats.spearmanr(rx, ry).pvalue)
    low = high = math.nan
    if n > 3:
        z = math.atanh(max(-0.999999, min(0.999999, rho)))
        se = math.sqrt((1 + rho ** 2 / 2) / (n - 3))
        half = stats.norm.ppf(0.5 + level / 2) * se
        low, high = math.tanh(z - half), math.tanh(z + half)
    return RankCorrelation(rho, low, high, p_value, n, exact)
