"""Length control: is a model less toxic, or does it just generate less text?

Toxicity depends on how much text there is to score, and compressed models generate shorter text. For each
toxicity task (per-prompt `toxicity_mean` and `gen_length_tokens` logged) and each model with a baseline:

- toxicity against generation length: the prompts of both models pooled, cut into `BINS` bins at the pooled
  quantiles of the per-prompt mean generation length; each model's mean toxicity and prompt count per bin
  (`length_bins.csv`);
- the length-adjusted difference: within each bin, model mean - baseline mean, averaged over the bins where
  both have prompts, weighted by the bin's pooled prompt count (direct standardisation to a common length
  distribution), beside the unadjusted difference of means; both with a 95% percentile bootstrap interval
  over prompts (the same prompts for both models; bin edges fixed);
- `disagree` when one interval excludes 0 and the other does not, or both exclude it on opposite sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compress.report.estimates import doc_values
from compress.report.results import ModelRun

TOXICITY, LENGTH = "toxicity_mean", "gen_length_tokens"
BINS = 4
RESAMPLES = 1000


@dataclass
class LengthBin:
    task: str
    model: str
    bin: int
    low: float
    high: float
    prompts: int
    toxicity: float


@dataclass
class LengthAdjusted:
    model: str
    baseline: str
    task: str
    prompts: int
    unadjusted: float
    unadjusted_low: float
    unadjusted_high: float
    adjusted: float
    adjusted_low: float
    adjusted_high: float
    disagree: bool


def _edges(lengths: np.ndarray, bins: int) -> np.ndarray:
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)))
    return edges if len(edges) > 1 else np.array([edges[0], edges[0] + 1.0])


def _bin_of(lengths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)


def adjusted_difference(tox_m, len_m, tox_b, len_b, edges) -> float:
    """Pooled-count-weighted mean over bins of (model bin mean - baseline bin mean)."""
    bm, bb = _bin_of(len_m, edges), _bin_of(len_b, edges)
    total, weight = 0.0, 0.0
    for k in range(len(edges) - 1):
        in_m, in_b = bm == k, bb == k
        if in_m.any() and in_b.any():
            w = in_m.sum() + in_b.sum()
            total += w * (tox_m[in_m].mean() - tox_b[in_b].mean())
            weight += w
    return total / weight if weight else math.nan


def length_control(runs: dict[str, ModelRun], pairs: list[tuple[str, str]], bins: int = BINS,
                   resamples: int = RESAMPLES, seed: int = 0) -> tuple[list[LengthBin], list[LengthAdjusted]]:
    binned, adjusted = [], []
    for name, baseline in pairs:
        if name not in runs or baseline not in runs:
            continue
        for task in sorted(set(runs[name].tasks) & set(runs[baseline].tasks)):
            values = {}
            for model in (name, baseline):
                for metric in (TOXICITY, LENGTH):
                    result = runs[model].tasks[task]
                    filters = result.filters(metric)
                    values[(model, metric)] = doc_values(runs[model], task, metric, filters[0]) if filters else None
            if any(v is None for v in values.values()):
                continue
            shared = sorted(set.intersection(*(set(v) for v in values.values())))
            if len(shared) < 2:
                continue
            arr = {key: np.array([float(v[k]) for k in shared]) for key, v in values.items()}
            tox_m, len_m, tox_b, len_b = (arr[(name, TOXICITY)], arr[(name, LENGTH)], arr[(baseline, TOXICITY)],
                                          arr[(baseline, LENGTH)])
            edges = _edges(np.concatenate([len_m, len_b]), bins)
            for model, tox, lengths in ((baseline, tox_b, len_b), (name, tox_m, len_m)):
                if any(b.model == model and b.task == task for b in binned):
                    continue
                which = _bin_of(lengths, edges)
                binned += [LengthBin(task, model, k, float(edges[k]), float(edges[k + 1]), int((which == k).sum()),
                                     float(tox[which == k].mean()) if (which == k).any() else math.nan)
                           for k in range(len(edges) - 1)]
            raw = float(tox_m.mean() - tox_b.mean())
            adj = adjusted_difference(tox_m, len_m, tox_b, len_b, edges)
            picks = np.random.default_rng(seed).integers(0, len(shared), size=(resamples, len(shared)))
            raw_draws = tox_m[picks].mean(1) - tox_b[picks].mean(1)
            adj_draws = np.array([adjusted_difference(tox_m[p], len_m[p], tox_b[p], len_b[p], edges) for p in picks])
            adj_draws = adj_draws[np.isfinite(adj_draws)]
            raw_ci = np.percentile(raw_draws, [2.5, 97.5])
            adj_ci = np.percentile(adj_draws, [2.5, 97.5]) if adj_draws.size else (math.nan, math.nan)
            adjusted.append(LengthAdjusted(name, baseline, task, len(shared), raw, *map(float, raw_ci), adj,
                                           *map(float, adj_ci), disagreement(raw, raw_ci, adj, adj_ci)))
    return binned, adjusted


def disagreement(raw: float, raw_ci, adj: float, adj_ci) -> bool:
    """Only one of the two intervals excludes 0, or both do on opposite sides (a sign change within noise is not
    a disagreement)."""
    if not (math.isfinite(raw) and math.isfinite(adj)):
        return False
    excludes = [bool(ci[0] > 0 or ci[1] < 0) for ci in (raw_ci, adj_ci)]
    return excludes[0] != excludes[1] or (all(excludes) and (raw > 0) != (adj > 0))


BIN_HEADER = ["task", "model", "bin", "length_low", "length_high", "prompts", "toxicity_mean"]
ADJUSTED_HEADER = ["model", "baseline", "task", "prompts", "unadjusted_diff", "unadjusted ci_low",
                   "unadjusted ci_high", "length_adjusted_diff", "length_adjusted ci_low", "length_adjusted ci_high",
                   "disagree"]


def bin_rows(binned: list[LengthBin]) -> list[list]:
    return [[b.task, b.model, b.bin, b.low, b.high, b.prompts, b.toxicity] for b in binned]


def adjusted_rows(adjusted: list[LengthAdjusted]) -> list[list]:
    return [[a.model, a.baseline, a.task, a.prompts, a.unadjusted, a.unadjusted_low, a.unadjusted_high, a.adjusted,
             a.adjusted_low, a.adjusted_high, a.disagree] for a in adjusted]


def _g(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def markdown(adjusted: list[LengthAdjusted]) -> list[str]:
    if not adjusted:
        return []
    lines = ["## Length control", "",
             f"Mean toxicity (`{TOXICITY}`) of each model minus its baseline's, unadjusted and compared at matched "
             f"generation length (within {BINS} pooled-quantile bins of `{LENGTH}`, weighted by the bins' prompt "
             "counts); 95% bootstrap intervals over prompts. Toxicity per length bin is in length_bins.csv.", "",
             "| model | baseline | task | unadjusted [95%] | length-adjusted [95%] | agree? |",
             "|---|---|---|---|---|---|"]
    for a in adjusted:
        lines.append(f"| {a.model} | {a.baseline} | {a.task} | {_g(a.unadjusted)} [{_g(a.unadjusted_low)}, "
                     f"{_g(a.unadjusted_high)}] | {_g(a.adjusted)} [{_g(a.adjusted_low)}, {_g(a.adjusted_high)}] | "
                     f"{'**no**: length changes the conclusion' if a.disagree else 'yes'} |")
    return lines + [""]
