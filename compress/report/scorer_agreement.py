"""Scorer robustness: do the models rank the same under different toxicity classifiers?

A toxicity task run with several scorers (`--metadata '{"scorer": "detoxify:original,detoxify:unbiased"}'`)
reports each scorer's metrics as `<metric>@<scorer slug>` (compress/toxicity/task.py). For each such task and
headline metric (`HEADLINE`) the report gives every model's value and rank under each scorer (rank 1 = least
toxic), and for each pair of scorers Kendall's tau between the models' values (tau-b; scipy's p-value, exact
for small counts without ties) with a 95% percentile bootstrap interval: prompts resampled with replacement,
the same prompts for every model and both scorers, each model's metric recomputed as the mean over the
resampled prompts (a sum over the same number of prompts ranks the models identically).

It also flags every TCCC task (tox4k, random4k, safe4k) scored by `detoxify:original`: that classifier was
trained on the TCCC comments the prompts are cut from, so on these prompts it scores its own training data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from compress.report.estimates import doc_values
from compress.report.results import ModelRun

HEADLINE = ("toxic_score", "expected_max_toxicity", "toxicity_probability")
TCCC_TASKS = ("compfair_tox4k", "compfair_random4k", "compfair_safe4k")
TCCC_TRAINED = "detoxify:original"
BOOTSTRAP = 2000


@dataclass
class Ranking:
    task: str
    metric: str
    scorer: str
    model: str
    value: float
    rank: int


@dataclass
class Agreement:
    task: str
    metric: str
    scorer_a: str
    scorer_b: str
    models: int
    documents: int
    tau: float
    low: float
    high: float
    p_value: float


def _scored_metrics(runs: dict[str, ModelRun]) -> dict[tuple[str, str, str], set[str]]:
    """(task, filter, metric) -> scorer slugs reported for it by every model that has the task."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for run in runs.values():
        for task, result in run.tasks.items():
            if result.is_group:
                continue
            for name, filter_name in result.metrics:
                metric, _, slug = name.partition("@")
                if slug and metric in HEADLINE:
                    found.setdefault((task, filter_name, metric), set()).add(slug)
    return {key: slugs for key, slugs in found.items() if len(slugs) > 1}


def kendall_tau(x, y) -> tuple[float, float]:
    from scipy.stats import kendalltau

    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of `x` with the same row of `y` (what scipy.stats.kendalltau gives one pair of
    rows), NaN where either row is constant: (concordant - discordant) / sqrt(pairs - ties in x) / sqrt(pairs -
    ties in y), over every pair of columns at once."""
    i, j = np.triu_indices(x.shape[-1], k=1)
    # signs by comparison, not subtraction, so two equal infinities tie, as in scipy
    dx = (x[..., i] > x[..., j]).astype(float) - (x[..., i] < x[..., j])
    dy = (y[..., i] > y[..., j]).astype(float) - (y[..., i] < y[..., j])
    with np.errstate(invalid="ignore", divide="ignore"):
        # in scipy's order of operations, so a tau equal to scipy's point estimate is equal to the last bit
        tau = (dx * dy).sum(-1) / np.sqrt(len(i) - (dx == 0).sum(-1)) / np.sqrt(len(i) - (dy == 0).sum(-1))
    missing = np.isnan(x).any(axis=-1) | np.isnan(y).any(axis=-1)  # scipy propagates NaN
    return np.where(missing, np.nan, np.clip(tau, -1.0, 1.0))


def scorer_agreement(runs: dict[str, ModelRun], resamples: int = BOOTSTRAP, seed: int = 0,
                     ) -> tuple[list[Ranking], list[Agreement]]:
    rankings, agreements = [], []
    for (task, filter_name, metric), slugs in sorted(_scored_metrics(runs).items()):
        slugs = sorted(slugs)
        values = {}  # slug -> model -> task value
        for slug in slugs:
            for name, run in runs.items():
                result = run.tasks.get(task)
                if result is not None and (f"{metric}@{slug}", filter_name) in result.metrics:
                    values.setdefault(slug, {})[name] = result.metrics[(f"{metric}@{slug}", filter_name)]
        for slug in slugs:
            ordered = sorted(values.get(slug, {}).items(), key=lambda kv: (kv[1], kv[0]))
            rankings += [Ranking(task, metric, slug, model, value, i + 1) for i, (model, value) in enumerate(ordered)]
        for a, b in combinations(slugs, 2):
            models = sorted(set(values.get(a, {})) & set(values.get(b, {})))
            if len(models) < 3:
                continue
            tau, p = kendall_tau([values[a][m] for m in models], [values[b][m] for m in models])
            low, high, n_docs = _bootstrap_tau(runs, task, filter_name, metric, a, b, models, resamples, seed)
            agreements.append(Agreement(task, metric, a, b, len(models), n_docs, tau, low, high, p))
    return rankings, agreements


def _bootstrap_tau(runs, task, filter_name, metric, a, b, models, resamples, seed) -> tuple[float, float, int]:
    per_doc = {}
    for slug in (a, b):
        for model in models:
            per_doc[(slug, model)] = doc_values(runs[model], task, f"{metric}@{slug}", filter_name) or {}
    shared = sorted(set.intersection(*(set(v) for v in per_doc.values())))
    if len(shared) < 2:
        return math.nan, math.nan, len(shared)
    arrays = {slug: np.array([[float(per_doc[(slug, m)][k]) for k in shared] for m in models]) for slug in (a, b)}
    picks = np.random.default_rng(seed).integers(0, len(shared), size=(resamples, len(shared)))
    # each block of resamples: every model's mean over its resampled prompts, (resamples, models)
    blocks = np.array_split(picks, max(1, resamples // 256))
    taus = np.concatenate([kendall_tau_b(arrays[a][:, rows].mean(axis=-1).T, arrays[b][:, rows].mean(axis=-1).T)
                           for rows in blocks])
    taus = taus[np.isfinite(taus)]  # a resample where one scorer ties every model has no tau
    if taus.size == 0:
        return math.nan, math.nan, len(shared)
    return float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5)), len(shared)


def task_scorers(run: ModelRun, task: str) -> list[str]:
    """The scorer specs a toxicity task's documents name (from the first logged sample), else []."""
    result = run.tasks.get(task)
    if result is None or result.samples_file is None:
        return []
    with open(result.samples_file, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                doc = json.loads(line).get("doc") or {}
                spec = doc.get("scorer")
                return [s.strip() for s in str(spec).split(",") if s.strip()] if spec else []
    return []


def tccc_flags(runs: dict[str, ModelRun]) -> list[str]:
    """One line per TCCC task whose generations were scored by detoxify:original."""
    flagged = {}
    for name, run in runs.items():
        for task in TCCC_TASKS:
            if TCCC_TRAINED in task_scorers(run, task):
                flagged.setdefault(task, []).append(name)
    return [f"{task} was scored by {TCCC_TRAINED} ({', '.join(sorted(models))}), which was trained on the TCCC "
            "comments these prompts are cut from: its scores there are on its own training data; compare with a "
            "scorer trained elsewhere (e.g. scorer: detoxify:original,detoxify:unbiased)"
            for task, models in sorted(flagged.items())]


RANKING_HEADER = ["task", "metric", "scorer", "model", "value", "rank"]
AGREEMENT_HEADER = ["task", "metric", "scorer_a", "scorer_b", "models", "documents", "kendall_tau", "ci_low",
                    "ci_high", "p_value"]


def ranking_rows(rankings: list[Ranking]) -> list[list]:
    return [[r.task, r.metric, r.scorer, r.model, r.value, r.rank] for r in rankings]


def agreement_rows(agreements: list[Agreement]) -> list[list]:
    return [[a.task, a.metric, a.scorer_a, a.scorer_b, a.models, a.documents, a.tau, a.low, a.high, a.p_value]
            for a in agreements]


def _g(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def markdown(rankings: list[Ranking], agreements: list[Agreement], flags: list[str]) -> list[str]:
    if not rankings and not flags:
        return []
    lines = ["## Toxicity scorer robustness", ""]
    if flags:
        lines += [f"- **Flag**: {flag}." for flag in flags] + [""]
    if rankings:
        lines += ["Each model's value and rank (1 = least toxic) under each scorer; Kendall's tau says how far the "
                  "scorers agree on the models' order (95% bootstrap interval over prompts).", ""]
    by_metric: dict[tuple[str, str], list[Ranking]] = {}
    for r in rankings:
        by_metric.setdefault((r.task, r.metric), []).append(r)
    for (task, metric), items in by_metric.items():
        scorers = sorted({r.scorer for r in items})
        models = sorted({r.model for r in items})
        cell = {(r.model, r.scorer): r for r in items}
        lines += [f"### {task} / {metric}", "", "| model | " + " | ".join(scorers) + " |",
                  "|---|" + "---|" * len(scorers)]
        for model in models:
            lines.append(f"| {model} | " + " | ".join(
                f"{_g(cell[(model, s)].value)} (#{cell[(model, s)].rank})" if (model, s) in cell else "–"
                for s in scorers) + " |")
        for a in agreements:
            if (a.task, a.metric) == (task, metric):
                lines.append(f"\nKendall's tau, {a.scorer_a} vs {a.scorer_b}: {_g(a.tau)} [{_g(a.low)}, {_g(a.high)}] "
                             f"over {a.models} models (p {_g(a.p_value)}, {a.documents} prompts).")
        lines.append("")
    return lines
