"""Each model against its baseline on the same documents: paired bootstrap, permutation p, correction."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

from compress.report import significance
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
    """Every (model, baseline) pair's paired tests, the pairs run side by side on the CPU's cores: the tests are
    numpy work that releases the GIL, and each seeds its own generator, so the results do not depend on the
    order the pairs finish in (they are collected in pair order)."""
    pairs = baseline_pairs(infos)
    with ThreadPoolExecutor(max_workers=min(len(pairs), os.cpu_count() or 1) or 1) as pool:
        done = pool.map(lambda pair: _compare_pair(runs, *pair, groups, resamples, seed), pairs)
        results = list(tqdm(done, total=len(pairs), desc="paired tests", unit="model", disable=None))
    comparisons = []
    for pair_comparisons, pair_notes in results:
        comparisons += pair_comparisons
        notes += pair_notes
    return comparisons


def _compare_pair(runs: dict[str, ModelRun], name: str, baseline: str, groups: list[MetricGroup],
                  resamples: int | None, seed: int) -> tuple[list[Comparison], list[str]]:
    comparisons, notes = [], []
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
        results = significance.paired_comparisons([mine[k] for k in shared], [theirs[k] for k in shared],
                                                  group.statistic, resamples, seed=seed)
        for metric, result in zip(group.metrics, results):
            if math.isnan(result.p_value):
                continue
            comparisons.append(Comparison(name, baseline, group.task, metric, group.filter, result.value,
                                          result.baseline, result.diff, result.low, result.high, result.p_value,
                                          result.n))
    return comparisons, notes


def apply_correction(items: list, method: str, alpha: float) -> None:
    adjusted = significance.correct([item.p_value for item in items], method)
    for item, p in zip(items, adjusted):
        item.p_adjusted = p
        item.significant = bool(p < alpha)
