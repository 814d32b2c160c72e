"""Spearman rank correlation of each metric with parameter count, within each lineage and each baseline's family."""

from __future__ import annotations

import math
from dataclasses import dataclass

from compress.report import significance
from compress.report.estimates import Estimate
from compress.report.models import ModelInfo, families


@dataclass
class Correlation:
    family: str
    task: str
    metric: str
    filter: str
    rho: float
    low: float
    high: float
    p_value: float
    n: int
    p_adjusted: float = math.nan
    significant: bool = False


def size_correlations(infos: dict[str, ModelInfo], estimates: list[Estimate],
                      mix_families: bool = False) -> list[Correlation]:
    table = {(e.model, e.task, e.metric, e.filter): e.value for e in estimates}
    keys = sorted({(e.task, e.metric, e.filter) for e in estimates})
    rows = []
    for family, members in families(infos, mix_families).items():
        sized = [m for m in members if infos[m].parameters]
        if len(sized) < 3:
            continue
        for task, metric, filter_name in keys:
            present = [m for m in sized if (m, task, metric, filter_name) in table]
            if len(present) < 3:
                continue
            result = significance.spearman([infos[m].parameters for m in present],
                                           [table[(m, task, metric, filter_name)] for m in present])
            if math.isnan(result.rho):
                continue
            rows.append(Correlation(family, task, metric, filter_name, result.rho, result.low, result.high,
                                    result.p_value, result.n))
    return rows
