"""Item-level flips: how many items a model answers the other way from its baseline, beyond the aggregate.

Two models can have the same overall score while a fifth of the items change sides (Hua et al. 2026). For each
model with a baseline and each task whose documents have a binary outcome, on the documents both were
evaluated on (paired by id and content hash):

    up    items the baseline scored 0 and the model 1 (e.g. the model now prefers the stereotype)
    down  items the baseline scored 1 and the model 0

reported as shares of the shared items with exact (Clopper-Pearson) 95% intervals, with the exact McNemar
test of up = down (two-sided binomial test of `up` among the `up + down` discordant items; p = 1 when none).

A task's outcome (`OUTCOMES`): CrowS-Pairs `metric_score` (sent_more preferred), StereoSet's stereotype vs
anti-stereotype choice (read from the `ss` items), WinoBias `anti_rate` (anti-stereotyped sentence preferred),
a toxicity task's `toxicity_probability` (the prompt got a generation with toxicity >= 0.5), lm-eval's
built-in bias tasks' accuracy or `pct_stereotype`; else every metric whose per-document values are all 0/1
or all 0/100. Toxicity is paired per prompt, not per generation: sampled generations of two models are
independent draws, so generation i of one is not the same item as generation i of the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compress.report.estimates import doc_values
from compress.report.results import ModelRun

OUTCOMES = ("metric_score", "ss", "anti_rate", "toxicity_probability", "pct_stereotype", "acc")


@dataclass
class Flips:
    model: str
    baseline: str
    task: str
    outcome: str
    filter: str
    n: int
    up: int
    down: int
    baseline_rate: float
    model_rate: float
    share_up: float
    up_low: float
    up_high: float
    share_down: float
    down_low: float
    down_high: float
    share_flipped: float
    flipped_low: float
    flipped_high: float
    mcnemar_p: float


def binary(value) -> float | None:
    """0.0 or 1.0 for a per-document outcome (0/1, 0/100, bool, or a StereoSet item), else None."""
    if isinstance(value, dict) and {"stereotype", "anti-stereotype"} <= set(value):
        return float(value["stereotype"] > value["anti-stereotype"])
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1, 100):
        return float(value != 0)
    return None


def exact_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion k / n."""
    from scipy.stats import beta

    if n == 0:
        return math.nan, math.nan
    alpha = 1 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def mcnemar_exact(up: int, down: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of `up` successes in `up + down` trials at 1/2."""
    from scipy.stats import binomtest

    if up + down == 0:
        return 1.0
    return float(binomtest(up, up + down, 0.5).pvalue)


def _outcomes(run: ModelRun, task: str, metric: str, filter_name: str) -> dict[str, float] | None:
    values = doc_values(run, task, metric, filter_name)
    if not values:
        return None
    outcomes = {key: binary(v) for key, v in values.items()}
    if any(v is None for v in outcomes.values()):
        return None
    # 0/1 and 0/100 must not mix within a metric, or the values are counts, not outcomes.
    raw = {v for v in values.values() if not isinstance(v, dict)}
    if 1 in raw and 100 in raw:
        return None
    return outcomes


def flip_counts(model: dict[str, float], baseline: dict[str, float]) -> tuple[int, int, int, float, float]:
    """(n shared, up, down, baseline rate, model rate) over the documents both have."""
    shared = sorted(set(model) & set(baseline))
    up = sum(1 for k in shared if baseline[k] == 0 and model[k] == 1)
    down = sum(1 for k in shared if baseline[k] == 1 and model[k] == 0)
    n = len(shared)
    rates = (sum(baseline[k] for k in shared) / n, sum(model[k] for k in shared) / n) if n else (math.nan, math.nan)
    return n, up, down, *rates


def item_flips(runs: dict[str, ModelRun], pairs: list[tuple[str, str]]) -> list[Flips]:
    """Flips of every (model, baseline) pair on every task with a binary per-document outcome."""
    rows = []
    for name, baseline in pairs:
        if name not in runs or baseline not in runs:
            continue
        for task in sorted(set(runs[name].tasks) & set(runs[baseline].tasks)):
            mine, theirs = runs[name].tasks[task], runs[baseline].tasks[task]
            if mine.is_group or mine.samples_file is None or theirs.samples_file is None:
                continue
            keys = sorted(set(mine.metrics) & set(theirs.metrics))
            preferred = [(m, f) for outcome in OUTCOMES for m, f in keys if m == outcome]
            found = []
            for metric, filter_name in preferred or keys:
                a = _outcomes(runs[name], task, metric, filter_name)
                b = _outcomes(runs[baseline], task, metric, filter_name) if a is not None else None
                if a is None or b is None:
                    continue
                found.append((metric, filter_name, a, b))
                if preferred:
                    break
            for metric, filter_name, a, b in found:
                n, up, down, base_rate, model_rate = flip_counts(a, b)
                if n == 0:
                    continue
                rows.append(Flips(name, baseline, task, metric, filter_name, n, up, down, base_rate, model_rate,
                                  up / n, *exact_interval(up, n), down / n, *exact_interval(down, n),
                                  (up + down) / n, *exact_interval(up + down, n), mcnemar_exact(up, down)))
    return rows


CSV_HEADER = ["model", "baseline", "task", "outcome", "filter", "documents", "flips_up", "flips_down",
              "baseline_rate", "model_rate", "share_up", "share_up ci_low", "share_up ci_high", "share_down",
              "share_down ci_low", "share_down ci_high", "share_flipped", "share_flipped ci_low",
              "share_flipped ci_high", "mcnemar_p"]


def csv_rows(flips: list[Flips]) -> list[list]:
    return [[f.model, f.baseline, f.task, f.outcome, f.filter, f.n, f.up, f.down, f.baseline_rate, f.model_rate,
             f.share_up, f.up_low, f.up_high, f.share_down, f.down_low, f.down_high, f.share_flipped,
             f.flipped_low, f.flipped_high, f.mcnemar_p] for f in flips]


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.1f}%"


def markdown(flips: list[Flips]) -> list[str]:
    if not flips:
        return []
    lines = ["## Item-level flips", "",
             "Share of the shared items whose binary outcome changes from the baseline to the model: `up` = 0 -> 1, "
             "`down` = 1 -> 0 (exact 95% intervals), and the exact McNemar p-value of up = down (uncorrected). "
             "A large flip share beside a small change in the rate means the aggregate hides churn.", "",
             "| model | baseline | task / outcome | items | rate: baseline -> model | up [95%] | down [95%] | "
             "flipped [95%] | McNemar p |", "|---|---|---|---|---|---|---|---|---|"]
    for f in flips:
        lines.append(f"| {f.model} | {f.baseline} | {f.task} / {f.outcome} | {f.n} | {_pct(f.baseline_rate)} -> "
                     f"{_pct(f.model_rate)} | {_pct(f.share_up)} [{_pct(f.up_low)}, {_pct(f.up_high)}] | "
                     f"{_pct(f.share_down)} [{_pct(f.down_low)}, {_pct(f.down_high)}] | {_pct(f.share_flipped)} "
                     f"[{_pct(f.flipped_low)}, {_pct(f.flipped_high)}] | {f.mcnemar_p:.3g} |")
    return lines + [""]
