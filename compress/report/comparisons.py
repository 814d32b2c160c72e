"""Each model against its baseline on the same documents: paired bootstrap, permutation p, correction."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from compress.report import parallel, significance
from compress.report.estimates import MetricGroup, doc_values
from compress.report.models import ModelInfo
from compress.report.results import ModelRun


@dataclass
class Comparison:
    model: str
    baseline: str
    task: str
    metric: str
    filter: str
    value: float
    baseline_value: float
    diff: float
    low: float
    high: float
    p_value: float
    n: int
    p_adjusted: float = math.nan
    significant: bool = False


def baseline_pairs(infos: dict[str, ModelInfo]) -> list[tuple[str, str]]:
    """(model, baseline) for every model with one, then each depth control."""
    return [(name, info.baseline) for name, info in infos.items() if info.baseline] + depth_controls(infos)


def depth_controls(infos: dict[str, ModelInfo]) -> list[tuple[str, str]]:
    """(dropped, student): each layer-dropped model against a distilled student of the same teacher and depth.

    Dropping blocks without training is the natural control for distillation to the same depth: the two models
    have the same shape and the same origin, so their difference is what the training bought (or cost).
    """
    return [(name, student) for name, info in infos.items() if info.method == "layer dropping" and info.baseline
            for student, other in infos.items() if other.method == "distillation"
            and other.baseline == info.baseline and other.blocks == info.blocks]


def compare_with_baselines(runs: dict[str, ModelRun], infos: dict[str, ModelInfo], groups: list[MetricGroup],
                           resamples: int | None, seed: int, notes: list[str]) -> list[Comparison]:
    """Every (model, baseline) pair's paired tests on every metric group both have, on the shared documents; the
    tests run side by side on the CPU's cores (`compress.report.parallel`)."""
    tests, pieces = [], []  # (model, baseline, group) and its paired test, in the same order
    for name, baseline in baseline_pairs(infos):
        for group in groups:
            mine = doc_values(runs[name], group.task, group.source, group.filter)
            theirs = doc_values(runs[baseline], group.task, group.source, group.filter)
            if mine is None or theirs is None:
                continue
            shared = sorted(set(mine) & set(theirs))
            if len(shared) < len(mine) or len(shared) < len(theirs):
                notes.append(f"{name} vs {baseline} on {group.task}: {len(shared)} shared documents of {len(mine)} "
                             f"and {len(theirs)}; the tests use the shared ones")
            if len(shared) < 2:
                continue
            tests.append((name, baseline, group))
            pieces.append(functools.partial(significance.paired_comparisons, [mine[k] for k in shared],
                                            [theirs[k] for k in shared], group.statistic, resamples, seed=seed))
    comparisons = []
    for (name, baseline, group), results in zip(tests, parallel.run_all(pieces, "paired tests"), strict=True):
        for metric, result in zip(group.metrics, results):
            if math.isnan(result.p_value):
                continue
            comparisons.append(Comparison(name, baseline, group.task, metric, group.filter, result.value,
                                          result.baseline, result.diff, result.low, result.high, result.p_value,
                                          result.n))
    return comparisons


def apply_correction(items: list, method: str, alpha: float) -> None:
    adjusted = significance.correct([item.p_value for item in items], method)
    for item, p in zip(items, adjusted):
        item.p_adjusted = p
        item.significant = bool(p < alpha)
