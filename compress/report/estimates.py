"""Each model's value of each metric with a 95% interval: the bootstrap over per-document values, with the
aggregation that reproduces the reported value (see `compress.report.aggregations`), else lm-eval's stderr."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from compress.report import parallel, significance
from compress.report.aggregations import (
    candidate_statistics,
    group_gap_aggregation,
    group_gap_statistic,
    stereoset_aggregation,
    stereoset_statistic,
)
from compress.report.results import ModelRun, read_doc_values

Z95 = 1.959963984540054


@dataclass
class Estimate:
    model: str
    task: str
    metric: str
    filter: str
    value: float
    low: float
    high: float
    interval: str  # bootstrap | stderr | none
    n: int | None
    is_group: bool
    source: str
    show_filter: bool = False  # the task reports this metric under several lm-eval filters

    @property
    def name(self) -> str:
        return self.metric + (f"[{self.filter}]" if self.show_filter else "")

    @property
    def column(self) -> str:
        return f"{self.task}/{self.name}"


@lru_cache(maxsize=64)
def _doc_records(samples_file: Path, filter_name: str) -> dict[str, dict]:
    return read_doc_values(samples_file, filter_name)


def doc_values(run: ModelRun, task: str, metric: str, filter_name: str) -> dict[str, object] | None:
    result = run.tasks.get(task)
    if result is None or result.samples_file is None:
        return None
    records = _doc_records(result.samples_file, filter_name)
    values = {key: record[metric] for key, record in records.items() if metric in record}
    return values or None


@dataclass
class MetricGroup:
    """Metrics of one task and filter computed by one statistic from one metric's per-document values."""

    task: str
    filter: str
    source: str  # the metric whose per-document values feed the statistic
    statistic: significance.Statistic

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.statistic.outputs or (self.source,)


def _reproduced(statistic, values: list, reported: list[float]) -> list[bool]:
    try:
        computed = significance.evaluate_all(statistic, significance.prepare_values(statistic, values))
    except (ValueError, KeyError, TypeError, ZeroDivisionError, IndexError):
        return [False] * len(reported)
    return [math.isclose(c, r, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(c) and math.isnan(r))
            for c, r in zip(computed, reported)]


def find_metric_groups(runs: dict[str, ModelRun], task: str, filter_name: str, metrics: list[str],
                       ) -> list[MetricGroup]:
    """For each metric, the aggregation of its per-document values that reproduces the reported value
    for every model that has both; a metric no aggregation reproduces is left out."""
    observed = defaultdict(dict)  # metric -> model -> per-document values
    for name, run in runs.items():
        result = run.tasks.get(task)
        for metric in metrics:
            if result is not None and (metric, filter_name) in result.metrics:
                values = doc_values(run, task, metric, filter_name)
                if values is not None:
                    observed[metric][name] = list(values.values())

    def reported(metric, name):
        return runs[name].tasks[task].metrics[(metric, filter_name)]

    groups = []
    record_metrics = [m for m in metrics if observed[m] and all(isinstance(v, dict) for vals in observed[m].values()
                                                                  for v in vals)]
    for metric in metrics:
        if not observed[metric] or metric in record_metrics:
            continue
        first = next(iter(observed[metric].values()))
        for statistic in candidate_statistics(first):
            if all(_reproduced(statistic, values, [reported(metric, name)])[0]
                   for name, values in observed[metric].items()):
                groups.append(MetricGroup(task, filter_name, metric, statistic))
                break
    # Per-record metrics: the vectorised StereoSet and BOLD aggregations where they reproduce every reported
    # value, else the reference functions themselves, metric by metric.
    remaining = list(record_metrics)
    for build in (stereoset_aggregation, stereoset_statistic, group_gap_aggregation, group_gap_statistic):
        statistic = build(remaining)
        if statistic is None:
            continue
        keep = list(statistic.outputs)
        for name, values in observed[statistic.outputs[0]].items():
            matches = _reproduced(statistic, values, [reported(m, name) if (m, filter_name) in
                                                      runs[name].tasks[task].metrics else math.nan
                                                      for m in statistic.outputs])
            keep = [m for m, ok in zip(statistic.outputs, matches) if ok and m in keep]
        if keep:
            statistic = build(keep)
            groups.append(MetricGroup(task, filter_name, statistic.outputs[0], statistic))
            remaining = [m for m in remaining if m not in keep]
    return groups


def _task_filters(runs: dict[str, ModelRun]) -> dict[tuple[str, str], list[str]]:
    metrics = defaultdict(set)
    for run in runs.values():
        for task, result in run.tasks.items():
            for metric, filter_name in result.metrics:
                metrics[(task, filter_name)].add(metric)
    return {key: sorted(value) for key, value in sorted(metrics.items())}


def estimate_metrics(runs: dict[str, ModelRun], resamples: int | None, seed: int, notes: list[str],
                     ) -> tuple[list[Estimate], list[MetricGroup]]:
    tasks = {key: (metrics, find_metric_groups(runs, *key, metrics)) for key, metrics in _task_filters(runs).items()}
    # every model's bootstrap intervals for every metric group, side by side on the CPU's cores
    wanted, pieces = [], []  # (task, filter, group, model) and its intervals, in the same order
    for (task, filter_name), (_, groups) in tasks.items():
        for group in groups:
            for name, run in runs.items():
                values = doc_values(run, task, group.source, filter_name)
                if values is None or (group.source, filter_name) not in run.tasks[task].metrics:
                    continue
                wanted.append((task, filter_name, group, name))
                pieces.append(partial(significance.bootstrap_intervals, list(values.values()),
                                                group.statistic, resamples, seed=seed))
    intervals = {}  # (task, filter, model, metric) -> Interval
    for (task, filter_name, group, name), found in zip(wanted, parallel.run_all(pieces, "intervals"), strict=True):
        intervals.update({(task, filter_name, name, m): i for m, i in zip(group.metrics, found)})
    estimates, all_groups = [], []
    for (task, filter_name), (metrics, groups) in tasks.items():
        all_groups += groups
        grouped = {m for g in groups for m in g.metrics}
        has_samples = any(run.tasks.get(task) and run.tasks[task].samples_file for run in runs.values())
        for metric in metrics:
            if metric not in grouped and has_samples:
                notes.append(f"{task}/{metric}: no aggregation of its per-document values reproduces the reported "
                             "value; its interval is lm-eval's standard error and it gets no paired test")
            for name, run in runs.items():
                result = run.tasks.get(task)
                if result is None or (metric, filter_name) not in result.metrics:
                    continue
                value = result.metrics[(metric, filter_name)]
                low = high = math.nan
                method, n = "none", result.n_samples
                if (task, filter_name, name, metric) in intervals:
                    interval = intervals[(task, filter_name, name, metric)]
                    low, high, method, n = interval.low, interval.high, "bootstrap", interval.n
                elif (metric, filter_name) in result.stderr:
                    se = result.stderr[(metric, filter_name)]
                    low, high, method = value - Z95 * se, value + Z95 * se, "stderr"
                estimates.append(Estimate(name, task, metric, filter_name, value, low, high, method, n,
                                          result.is_group, str(result.results_file)))
    filters = defaultdict(set)
    for e in estimates:
        filters[(e.task, e.metric)].add(e.filter)
    for e in estimates:
        e.show_filter = len(filters[(e.task, e.metric)]) > 1
    return estimates, all_groups


# StereoSet's official headline, `evaluate(intersentence + intrasentence)`: per target term over the union of
# both splits. lm-eval cannot compute it (a group only averages its tasks), so the report does, from the
# logged items of both tasks. Note: compfair's intersentence score is zero-shot (the candidate's mean
# log-probability given the context), not the trained next-sentence head of the official GPT-2 numbers.
STEREOSET_SPLIT_TASKS = ("compfair_stereoset_intrasentence", "compfair_stereoset_intersentence")
STEREOSET_OVERALL_TASK = "compfair_stereoset_overall"
STEREOSET_OVERALL_METRICS = ("ss", "lms", "icat")


def stereoset_overall(runs: dict[str, ModelRun], resamples: int | None, seed: int, notes: list[str],
                      ) -> list[Estimate]:
    """ss, lms and icat over the union of both StereoSet splits, with bootstrap intervals, for every model that
    logged the items of both tasks."""
    from compress.report.aggregations import stereoset_aggregation

    statistic = stereoset_aggregation(list(STEREOSET_OVERALL_METRICS))
    models, pieces = [], []
    for name, run in runs.items():
        per_task = [doc_values(run, task, "ss", "none") for task in STEREOSET_SPLIT_TASKS]
        if any(values is None for values in per_task):
            if all(task in run.tasks for task in STEREOSET_SPLIT_TASKS):
                notes.append(f"{name}: both StereoSet tasks ran but without --log_samples; no official overall")
            continue
        items = [item for values in per_task for item in values.values()]
        if not all(isinstance(item, dict) for item in items):
            continue
        models.append(name)
        pieces.append(partial(significance.bootstrap_intervals, items, statistic, resamples, seed=seed))
    estimates = []
    for name, found in zip(models, parallel.run_all(pieces, "StereoSet overall"), strict=True):
        source = ";".join(str(runs[name].tasks[task].results_file) for task in STEREOSET_SPLIT_TASKS)
        for metric, interval in zip(STEREOSET_OVERALL_METRICS, found, strict=True):
            estimates.append(Estimate(name, STEREOSET_OVERALL_TASK, metric, "none", interval.value, interval.low,
                                      interval.high, "bootstrap", interval.n, True, source))
    if estimates:
        notes.append(f"{STEREOSET_OVERALL_TASK}: StereoSet's official overall (per target term over the union of "
                     "both splits), computed from the logged items; its intersentence half is compfair's zero-shot "
                     "score (mean log-probability of the candidate given the context), not the trained "
                     "next-sentence head behind the published GPT-2 intersentence and overall numbers")
    return estimates
