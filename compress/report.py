"""The study's report: which compressed models are more or less toxic and biased, by how much, and whether it is real.

    compfair-report RESULTS_DIR... --out REPORT_DIR [--compare MODEL=BASELINE] [--correction bh|holm]

reads lm-eval output directories (see `compress.eval_results`) and writes to REPORT_DIR:

- `summary.csv`: one row per model: how it was made (method, baseline, blocks, heads, parameters),
  perplexity, and every metric lm-eval reported, each with a 95% interval (`<task>/<metric>`,
  `<task>/<metric> ci_low`, `... ci_high`). Point values are copied from the results files unchanged.
- `comparisons.csv`: each model against its baseline (the teacher it was distilled or pruned from,
  or a `--compare` pair) on the same documents: difference, 95% paired-bootstrap interval, permutation
  p-value and the p-value corrected over every comparison in the report.
- `correlations.csv`: Spearman rank correlation of each metric with parameter count, over all models
  and within each family (a baseline and the models compared with it).
- `perplexity_matched.csv`: each model's headline metrics against perplexity: the value a reference
  model (not distilled) of the same perplexity is predicted to have, and the model's residual.
- `summary.md`: the tables above in words, and `plots/*.png`.

Intervals come from the per-document values in `--log_samples` files. How a metric's documents add
up (mean, sum, lm-eval's weighted perplexity, or a per-record function such as StereoSet's) is found
by recomputing the reported value each way and keeping the way that reproduces it for every model;
a metric that no way reproduces keeps lm-eval's standard error (value +- 1.96 stderr) and no test.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from compress import significance
from compress.atomic_files import write_atomically
from compress.eval_results import ModelRun, find_model_runs, read_doc_values

Z95 = 1.959963984540054
PERPLEXITY_METRIC = "word_perplexity"
PREFERRED_PERPLEXITY_TASKS = ("wikitext",)
# Metrics that stand for a task in the perplexity plots and the perplexity-matched table, best first.
HEADLINE_METRICS = ("toxic_score", "expected_max_toxicity", "ss", "anti_rate")
# The metrics summary.md tables show (summary.csv has every metric); a task with none of them shows all.
KEY_METRICS = ("toxic_count", "toxic_score", "expected_max_toxicity", "toxicity_probability", "gen_length_tokens",
               "ss", "lms", "icat", "stereotype_count", "anti_stereotype_count", "unrelated_count", "anti_count",
               "anti_rate", "pro_rate", "bias_gap", "word_perplexity")
METHOD_ORDER = {"original": 0, "distillation": 1, "head pruning": 2}


@dataclass
class ModelInfo:
    """How a model was made, and its size."""

    name: str
    model: str
    method: str  # original | distillation | head pruning
    baseline: str | None = None  # the name of the model it is compared against
    baseline_source: str | None = None  # where that came from: distillation.json, pruning.json, --compare
    init: str | None = None  # distillation: teacher | random
    blocks: int | None = None
    heads: int | None = None
    parameters: int | None = None
    perplexity: float | None = None
    perplexity_source: str | None = None
    trainer_perplexity: float | None = None
    prune_subset: int | None = None
    heads_per_iteration: list = field(default_factory=list)
    perplexity_per_iteration: list = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.method == "distillation" and self.init:
            return f"{self.name} ({self.blocks} blocks, {self.init} init)"
        if self.method == "head pruning":
            return f"{self.name} (pruned to {self.heads} heads)"
        return self.name


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


@dataclass
class MatchedRow:
    model: str
    method: str
    perplexity: float
    task: str
    metric: str
    value: float
    low: float
    high: float
    predicted: float
    residual: float
    residual_low: float
    residual_high: float
    reference: str  # which models the prediction line was fitted on
    extrapolated: bool  # the model's perplexity lies outside the references' range


@dataclass
class Report:
    models: list[ModelInfo]
    estimates: list[Estimate]
    comparisons: list[Comparison]
    correlations: list[Correlation]
    matched: list[MatchedRow]
    notes: list[str]
    correction: str
    alpha: float
    resamples: int
    runs: dict[str, ModelRun]

    def estimate(self, model: str, task: str, metric: str) -> Estimate | None:
        for e in self.estimates:
            if e.model == model and e.task == task and e.metric == metric:
                return e
        return None


# ---------------------------------------------------------------- how a model was made


def _config_shape(config: dict | None) -> tuple[int | None, int | None]:
    """(blocks, attention heads) from a config.json, for GPT-2-style and encoder-decoder models."""
    if not config:
        return None, None
    layers = config.get("n_layer") or config.get("num_hidden_layers")
    heads = config.get("n_head") or config.get("num_attention_heads")
    if layers is None and config.get("decoder_layers") is not None:  # encoder-decoder: count both stacks
        layers = config.get("encoder_layers", 0) + config["decoder_layers"]
        heads_total = (config.get("encoder_layers", 0) * config.get("encoder_attention_heads", 0)
                       + config["decoder_layers"] * config.get("decoder_attention_heads", 0))
        return layers, heads_total or None
    kept = config.get("kept_heads")
    if isinstance(kept, list) and all(isinstance(h, list) for h in kept):  # compact pruned GPT-2: heads per layer
        return layers or len(kept), sum(len(h) for h in kept)
    if isinstance(heads, list):
        return layers or len(heads), int(sum(heads))
    return layers, (layers * heads if layers and heads else None)


def _hub_config(model: str) -> dict | None:
    """The config of a hub model from the local cache only (lm-eval downloaded it); never the network."""
    if Path(model).exists():
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, local_files_only=True).to_dict()
    except Exception:  # not cached, or not a transformers model: the shape stays unknown
        return None


def describe_model(run: ModelRun) -> ModelInfo:
    info = ModelInfo(run.name, run.model, "original", parameters=run.num_parameters)
    config = run.config if run.config is not None else _hub_config(run.model)
    info.blocks, info.heads = _config_shape(config)
    if run.distillation:
        record = run.distillation
        info.method = "distillation"
        info.blocks = record.get("student_layers", info.blocks)
        info.init = "teacher" if record.get("init_from_teacher", True) else "random"
        info.parameters = record.get("student_parameters") or info.parameters
        info.trainer_perplexity = _finite(record.get("perplexity"))
        info.baseline = record.get("teacher")
        info.baseline_source = "distillation.json"
    elif run.pruning:
        record = run.pruning
        info.method = "head pruning"
        heads = record.get("heads_per_iteration") or []
        info.heads_per_iteration = list(heads)
        info.heads = heads[-1] if heads else info.heads
        info.perplexity_per_iteration = list(record.get("perplexity_per_iteration") or [])
        if info.perplexity_per_iteration:
            info.trainer_perplexity = _finite(info.perplexity_per_iteration[-1])
        counts = record.get("parameter_count")
        if isinstance(counts, dict) and counts.get("pruned"):
            info.parameters = counts["pruned"]
        info.prune_subset = record.get("num_samples")
        info.baseline = record.get("model_name_or_path")
        info.baseline_source = "pruning.json"
    return info


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _same_model(reference: str, run: ModelRun) -> bool:
    """Whether a teacher named in a trainer record is this run's model (hub name or path)."""
    if reference in (run.model, run.name):
        return True
    ref, own = Path(reference).expanduser(), Path(run.model).expanduser()
    if ref.exists() and own.exists():
        return ref.resolve() == own.resolve()
    return False


def resolve_baselines(infos: dict[str, ModelInfo], runs: dict[str, ModelRun], pairs: dict[str, str],
                      notes: list[str]) -> None:
    """Turn each trainer record's teacher into the name of a model in the report, or drop it with a note."""
    for name, info in infos.items():
        if name in pairs:
            info.baseline, info.baseline_source = pairs[name], "--compare"
            continue
        if info.baseline is None:
            continue
        match = [other for other, run in runs.items() if other != name and _same_model(info.baseline, run)]
        if match:
            info.baseline = match[0]
        else:
            notes.append(f"{name}: its {info.baseline_source} names {info.baseline!r} as the model it came from, "
                         "which is not among the results; no paired test for it")
            info.baseline = None
    for model, baseline in pairs.items():
        if model not in infos or baseline not in infos:
            missing = model if model not in infos else baseline
            raise SystemExit(f"error: --compare {model}={baseline}: no model named {missing!r} in the results "
                             f"(models: {', '.join(sorted(infos))})")


# ---------------------------------------------------------------- per-document values


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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, str)


WEIGHTED_MEAN = significance.Aggregation("weighted_mean", lambda v: v[..., 0].sum(-1) / v[..., 1].sum(-1), width=2)


def candidate_statistics(values: list) -> list[significance.Aggregation]:
    """Ways per-document numbers can add up to a task's value, most common first."""
    if all(_is_number(v) for v in values):
        return [significance.MEAN, significance.SUM]
    if all(isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)) for v in values):
        return [significance.PERPLEXITY, significance.BITS_PER_BYTE, WEIGHTED_MEAN]
    return []


def _stereoset_wanted(metrics: list[str]) -> list[tuple[str, str, str | None]]:
    """(metric, score, domain) for the metrics named like StereoSet's: ss, lms, icat, optionally `_<domain>`."""
    try:
        from compress import bias_metrics
    except ImportError:
        return []
    wanted = []
    for metric in metrics:
        score, _, domain = metric.partition("_")
        if score in ("ss", "lms", "icat") and (not domain or domain in bias_metrics.DOMAINS):
            wanted.append((metric, score, domain or None))
    return wanted


def stereoset_statistic(metrics: list[str]) -> significance.RecordAggregation | None:
    """StereoSet's per-target ss/lms/icat (overall and `_<domain>`) from per-document items, through
    `compress.bias_metrics.stereoset_scores` itself: one call per domain per resample."""
    wanted = _stereoset_wanted(metrics)
    if not wanted:
        return None
    from compress import bias_metrics

    def scores(records: list) -> list[float]:
        by_domain = {}
        for _, _, domain in wanted:
            if domain not in by_domain:
                items = records if domain is None else [r for r in records if r.get("domain") == domain]
                by_domain[domain] = bias_metrics.stereoset_scores(items)
        return [by_domain[domain][score] for _, score, domain in wanted]

    return significance.RecordAggregation("stereoset_scores", scores, tuple(m for m, _, _ in wanted))


def stereoset_aggregation(metrics: list[str]) -> significance.Aggregation | None:
    """The same numbers as `stereoset_statistic`, vectorised over resamples.

    StereoSet averages per target term, so a resample is summarised by per-target tallies
    (examples, stereotype wins, related wins), counted for all resamples at once with one bincount.
    The report keeps it only where it reproduces every reported value, which
    `compress.bias_metrics.stereoset_scores` computed; a test checks it against that function on resamples.
    Encoded columns: target code, domain code, stereotype > anti-stereotype, #(stereotype, anti > unrelated).
    """
    wanted = _stereoset_wanted(metrics)
    if not wanted:
        return None
    from compress import bias_metrics

    def encode(records: list) -> np.ndarray:
        code = {t: i for i, t in enumerate(sorted({r["target"] for r in records}))}
        domain = {d: i for i, d in enumerate(bias_metrics.DOMAINS)}
        return np.array([[code[r["target"]], domain.get(r["domain"], -1),
                          float(r["stereotype"] > r["anti-stereotype"]),
                          float(r["stereotype"] > r["unrelated"]) + float(r["anti-stereotype"] > r["unrelated"])]
                         for r in records], dtype=float).reshape(-1, 4)

    def aggregate(values: np.ndarray) -> np.ndarray:
        batch, (n, _) = values.shape[:-2], values.shape[-2:]
        flat = values.reshape(-1, n, 4)
        rows = flat.shape[0]
        targets = int(flat[..., 0].max()) + 1 if n else 1
        slot = (np.arange(rows)[:, None] * targets + flat[..., 0].astype(np.int64)).ravel()
        out = np.empty((rows, len(wanted)))
        by_domain = {}
        for k, (_, score, domain) in enumerate(wanted):
            if domain not in by_domain:
                keep = np.ones((rows, n)) if domain is None else \
                    (flat[..., 1] == bias_metrics.DOMAINS.index(domain)).astype(float)

                def tally(weight, keep=keep):
                    return np.bincount(slot, (keep * weight).ravel(), rows * targets).reshape(rows, targets)

                examples, wins, related = tally(1.0), tally(flat[..., 2]), tally(flat[..., 3])
                present = examples > 0
                terms = present.sum(axis=1)
                safe = np.where(present, examples, 1.0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    ss = np.where(present, 100.0 * wins / safe, 0.0).sum(axis=1) / terms
                    lms = np.where(present, 100.0 * related / (2.0 * safe), 0.0).sum(axis=1) / terms
                ss, lms = np.where(terms > 0, ss, np.nan), np.where(terms > 0, lms, np.nan)
                by_domain[domain] = {"ss": ss, "lms": lms, "icat": lms * np.minimum(ss, 100.0 - ss) / 50.0}
            out[:, k] = by_domain[domain][score]
        return out.reshape(*batch, len(wanted))

    return significance.Aggregation("stereoset_scores (vectorised)", aggregate, width=4,
                                    outputs=tuple(m for m, _, _ in wanted), encode=encode)


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
    # Per-record metrics: the vectorised StereoSet aggregation where it reproduces every reported value,
    # else the reference function itself, metric by metric.
    remaining = list(record_metrics)
    for build in (stereoset_aggregation, stereoset_statistic):
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


# ---------------------------------------------------------------- the analysis


def _task_filters(runs: dict[str, ModelRun]) -> dict[tuple[str, str], list[str]]:
    metrics = defaultdict(set)
    for run in runs.values():
        for task, result in run.tasks.items():
            for metric, filter_name in result.metrics:
                metrics[(task, filter_name)].add(metric)
    return {key: sorted(value) for key, value in sorted(metrics.items())}


def estimate_metrics(runs: dict[str, ModelRun], resamples: int | None, seed: int, notes: list[str],
                     ) -> tuple[list[Estimate], list[MetricGroup]]:
    estimates, all_groups = [], []
    for (task, filter_name), metrics in tqdm(_task_filters(runs).items(), desc="intervals", unit="task",
                                             disable=None):
        groups = find_metric_groups(runs, task, filter_name, metrics)
        all_groups += groups
        intervals = {}  # (model, metric) -> Interval
        for group in groups:
            for name, run in runs.items():
                values = doc_values(run, task, group.source, filter_name)
                if values is None or (group.source, filter_name) not in run.tasks[task].metrics:
                    continue
                found = significance.bootstrap_intervals(list(values.values()), group.statistic, resamples, seed=seed)
                intervals.update({(name, m): i for m, i in zip(group.metrics, found)})
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
                if (name, metric) in intervals:
                    interval = intervals[(name, metric)]
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


def compare_with_baselines(runs: dict[str, ModelRun], infos: dict[str, ModelInfo], groups: list[MetricGroup],
                           resamples: int | None, seed: int, notes: list[str]) -> list[Comparison]:
    comparisons = []
    pairs = [(name, info.baseline) for name, info in infos.items() if info.baseline]
    for name, baseline in tqdm(pairs, desc="paired tests", unit="model", disable=None):
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
    return comparisons


def families(infos: dict[str, ModelInfo]) -> dict[str, list[str]]:
    """'all' models, and each baseline with the models compared against it."""
    groups = {"all": list(infos)}
    for name, info in infos.items():
        if info.baseline:
            groups.setdefault(f"{info.baseline} family", [info.baseline]).append(name)
    # A family that is every model says nothing that 'all' does not.
    return {k: v for k, v in groups.items() if k == "all" or set(v) != set(infos)}


def size_correlations(infos: dict[str, ModelInfo], estimates: list[Estimate]) -> list[Correlation]:
    table = {(e.model, e.task, e.metric, e.filter): e.value for e in estimates}
    keys = sorted({(e.task, e.metric, e.filter) for e in estimates})
    rows = []
    for family, members in families(infos).items():
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


def apply_correction(items: list, method: str, alpha: float) -> None:
    adjusted = significance.correct([item.p_value for item in items], method)
    for item, p in zip(items, adjusted):
        item.p_adjusted = p
        item.significant = bool(p < alpha)


def choose_perplexity(infos: dict[str, ModelInfo], estimates: list[Estimate], notes: list[str]) -> None:
    """One perplexity per model, from one source for all where possible: lm-eval's word perplexity on
    a shared text (the `wikitext` task first), else the trainer's validation perplexity."""
    by_task = defaultdict(dict)
    for e in estimates:
        if e.metric == PERPLEXITY_METRIC and not e.is_group:
            by_task[e.task][e.model] = e.value
    tasks = sorted(by_task, key=lambda t: (t not in PREFERRED_PERPLEXITY_TASKS, -len(by_task[t]), t))
    for name, info in infos.items():
        for task in tasks:
            if name in by_task[task]:
                info.perplexity, info.perplexity_source = by_task[task][name], f"lm-eval {task} {PERPLEXITY_METRIC}"
                break
        else:
            if info.trainer_perplexity is not None:
                info.perplexity, info.perplexity_source = info.trainer_perplexity, "trainer validation"
    sources = {i.perplexity_source for i in infos.values() if i.perplexity_source}
    if len(sources) > 1:
        notes.append("perplexities come from different sources (" + "; ".join(sorted(sources)) + "); they are "
                     "not comparable across sources, so the perplexity-matched comparison uses the most common one")


def headline_keys(estimates: list[Estimate]) -> list[tuple[str, str, str]]:
    """For each evaluated task (not group), its headline metric."""
    available = defaultdict(set)
    for e in estimates:
        if not e.is_group:
            available[e.task].add((e.metric, e.filter))
    keys = []
    for task in sorted(available):
        for metric in HEADLINE_METRICS:
            filters = sorted(f for m, f in available[task] if m == metric)
            if filters:
                keys.append((task, metric, filters[0]))
                break
    return keys


def perplexity_matched(infos: dict[str, ModelInfo], estimates: list[Estimate], notes: list[str]) -> list[MatchedRow]:
    """Each model's headline metrics against a line fitted on reference models: metric ~ a + b log(perplexity).

    References are the models that were not distilled (original and pruned ones), so a student's
    residual says whether it is more or less toxic or biased than a non-distilled model of the same
    perplexity would be. The residual's interval is the model's own interval shifted by the
    prediction; the line's own uncertainty is not in it.
    """
    sources = defaultdict(list)
    for info in infos.values():
        if info.perplexity is not None and info.perplexity > 0:
            sources[info.perplexity_source].append(info.name)
    if not sources:
        return []
    members = max(sources.values(), key=len)
    table = {(e.model, e.task, e.metric, e.filter): e for e in estimates}
    rows = []
    for task, metric, filter_name in headline_keys(estimates):
        present = [m for m in members if (m, task, metric, filter_name) in table]
        references = [m for m in present if infos[m].method != "distillation"]
        reference_label = "non-distilled models"
        if len({infos[m].perplexity for m in references}) < 2:
            references, reference_label = present, "all models (fewer than two non-distilled perplexities)"
        if len({infos[m].perplexity for m in references}) < 2:
            continue
        x = np.log([infos[m].perplexity for m in references])
        y = np.array([table[(m, task, metric, filter_name)].value for m in references])
        slope, intercept = np.polyfit(x, y, 1)
        span = (min(infos[m].perplexity for m in references), max(infos[m].perplexity for m in references))
        for m in present:
            e = table[(m, task, metric, filter_name)]
            predicted = float(intercept + slope * math.log(infos[m].perplexity))
            rows.append(MatchedRow(m, infos[m].method, infos[m].perplexity, task, metric, e.value, e.low, e.high,
                                   predicted, e.value - predicted, e.low - predicted, e.high - predicted,
                                   reference_label + ": " + ", ".join(references),
                                   not span[0] <= infos[m].perplexity <= span[1]))
    return rows


def build_report(results_dirs: list[str | Path], compare: dict[str, str] | None = None, correction: str = "bh",
                 alpha: float = 0.05, resamples: int | None = None, seed: int = 0,
                 distilled: list[str] | None = None) -> Report:
    notes: list[str] = []
    runs = {run.name: run for run in find_model_runs(results_dirs)}
    infos = {name: describe_model(run) for name, run in runs.items()}
    for name in distilled or []:  # distilled elsewhere (e.g. distilgpt2): no trainer record says so
        if name not in infos:
            raise SystemExit(f"error: --distilled {name}: no model named {name!r} in the results "
                             f"(models: {', '.join(sorted(infos))})")
        if infos[name].method == "original":
            infos[name].method = "distillation"
    resolve_baselines(infos, runs, dict(compare or {}), notes)
    estimates, groups = estimate_metrics(runs, resamples, seed, notes)
    comparisons = compare_with_baselines(runs, infos, groups, resamples, seed, notes)
    apply_correction(comparisons, correction, alpha)
    correlations = size_correlations(infos, estimates)
    apply_correction(correlations, correction, alpha)
    choose_perplexity(infos, estimates, notes)
    matched = perplexity_matched(infos, estimates, notes)
    order = sorted(infos.values(), key=lambda i: (METHOD_ORDER.get(i.method, 9), -(i.parameters or 0),
                                                  i.prune_subset or 0, i.name))
    effective_resamples = resamples or significance.DEFAULT_RESAMPLES
    if comparisons and correction == "holm":
        floor = significance.smallest_p(effective_resamples)
        if floor * len(comparisons) >= alpha:
            notes.append(f"with {effective_resamples} resamples no p-value is below {floor:.1e}, so Holm over "
                         f"{len(comparisons)} comparisons cannot reach {alpha}; raise --resamples or use "
                         "--correction bh")
    return Report(order, estimates, comparisons, correlations, matched, notes, correction, alpha,
                  effective_resamples, runs)


# ---------------------------------------------------------------- writing


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row])
    return buffer.getvalue()


MODEL_COLUMNS = ["model", "method", "baseline", "init", "blocks", "heads", "parameters", "perplexity",
                 "perplexity_source", "trainer_perplexity", "prune_subset", "pretrained", "results_files"]


def summary_table(report: Report) -> tuple[list[str], list[list]]:
    columns = sorted({e.column for e in report.estimates})
    by_key = {(e.model, e.column): e for e in report.estimates}
    header = list(MODEL_COLUMNS)
    for column in columns:
        header += [column, f"{column} ci_low", f"{column} ci_high"]
    rows = []
    for info in report.models:
        run = report.runs[info.name]
        row = [info.name, info.method, info.baseline, info.init, info.blocks, info.heads, info.parameters,
               info.perplexity, info.perplexity_source, info.trainer_perplexity, info.prune_subset, info.model,
               ";".join(str(p) for p in run.results_files + run.record_files)]
        for column in columns:
            e = by_key.get((info.name, column))
            row += [e.value, e.low, e.high] if e else [None, None, None]
        rows.append(row)
    return header, rows


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _p(value: float) -> str:
    return "–" if not math.isfinite(value) else (f"{value:.1e}" if value < 1e-3 else f"{value:.3f}")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def summary_markdown(report: Report, plots: list[Path]) -> str:
    correction = significance.CORRECTION_NAMES[report.correction]
    lines = ["# compfair report", "",
             f"{len(report.models)} models. Intervals are 95% percentile bootstraps over documents "
             f"({report.resamples} resamples; lm-eval's standard error where no per-document values exist). "
             f"Paired tests compare each model with its baseline on the same documents (permutation test); "
             f"p-values are corrected with {correction} over all {len(report.comparisons)} comparisons; "
             f"significant means corrected p < {report.alpha}.", "", "## Models", ""]
    lines += _md_table(["model", "method", "baseline", "blocks", "heads", "parameters", "perplexity"], [
        [i.name, i.method + (f" ({i.init} init)" if i.init else ""), i.baseline or "–", _fmt(i.blocks),
         _fmt(i.heads), _fmt(i.parameters), _fmt(i.perplexity) + (f" ({i.perplexity_source})" if i.perplexity else "")]
        for i in report.models])

    lines += ["", "## What is significant", ""]
    lines += significance_in_words(report)

    by_task = defaultdict(list)
    for e in report.estimates:
        by_task[e.task].append(e)
    lines += ["", "## Metrics (value [95% interval])", "",
              f"The main metrics of each task; all {len({e.column for e in report.estimates})} metrics (per-domain "
              "StereoSet scores, rates, ...) with their intervals are in summary.csv.", ""]
    for task in sorted(by_task, key=lambda t: (any(e.is_group for e in by_task[t]), t)):
        present = {(e.metric, e.filter) for e in by_task[task]}
        key = {(m, f) for m, f in present if m in KEY_METRICS}
        columns = sorted(key or present, key=lambda mf: (KEY_METRICS.index(mf[0]) if mf[0] in KEY_METRICS else 99, mf))
        table = {(e.model, e.metric, e.filter): e for e in by_task[task]}
        shown = {(e.metric, e.filter): e.name for e in by_task[task]}
        lines += [f"### {task}" + (" (group)" if by_task[task][0].is_group else ""), ""]
        rows = []
        for info in report.models:
            if not any((info.name, m, f) in table for m, f in columns):
                continue
            cells = []
            for key in columns:
                e = table.get((info.name, *key))
                cells.append("–" if e is None else f"{_fmt(e.value)} [{_fmt(e.low)}, {_fmt(e.high)}]")
            rows.append([info.name] + cells)
        lines += _md_table(["model"] + [shown[key] for key in columns], rows) + [""]

    if report.correlations:
        shown = [c for c in report.correlations if c.metric in KEY_METRICS] or report.correlations
        lines += ["## Rank correlation with size (Spearman, parameters)", "",
                  f"Main metrics; all {len(report.correlations)} correlations are in correlations.csv. * marks a "
                  "significant one (corrected p).", ""]
        lines += _md_table(["family", "task/metric", "rho [95% interval]", "n", "p", "corrected p"], [
            [c.family, f"{c.task}/{c.metric}", f"{_fmt(c.rho, 3)} [{_fmt(c.low, 3)}, {_fmt(c.high, 3)}]", c.n,
             _p(c.p_value), _p(c.p_adjusted) + (" *" if c.significant else "")] for c in shown]) + [""]

    if report.matched:
        lines += ["## Perplexity-matched comparison", "",
                  "Each headline metric against log perplexity: `predicted` is the value of a reference model of the "
                  "same perplexity (a line fitted on the references named below); a negative residual means lower "
                  "(less toxic / less stereotyped) than that reference.", ""]
        lines += _md_table(["model", "method", "perplexity", "task/metric", "value", "predicted", "residual [95%]"], [
            [r.model, r.method, _fmt(r.perplexity), f"{r.task}/{r.metric}", _fmt(r.value),
             _fmt(r.predicted) + (" (extrapolated)" if r.extrapolated else ""),
             f"{_fmt(r.residual)} [{_fmt(r.residual_low)}, {_fmt(r.residual_high)}]"] for r in report.matched])
        if any(r.extrapolated for r in report.matched):
            lines += ["", "An extrapolated prediction lies outside the perplexity range of the references: the line "
                      "says little there, so read those residuals with care."]
        lines += ["", "References: " + "; ".join(sorted({f"{r.task}/{r.metric}: {r.reference}"
                                                         for r in report.matched})), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in dict.fromkeys(report.notes)] + [""]
    return "\n".join(lines).rstrip() + "\n"


def significance_in_words(report: Report) -> list[str]:
    if not report.comparisons:
        return ["No model has a baseline among the results (a teacher in distillation.json / pruning.json, or a "
                "--compare pair), so there are no paired tests."]
    lines = []
    by_model = defaultdict(list)
    for c in report.comparisons:
        by_model[(c.model, c.baseline)].append(c)
    for (model, baseline), items in by_model.items():
        hits = [c for c in items if c.significant]
        if not hits:
            lines.append(f"- **{model}** vs **{baseline}**: no significant difference on any of {len(items)} metrics.")
            continue
        lines.append(f"- **{model}** vs **{baseline}**: significant on {len(hits)} of {len(items)} metrics:")
        for c in sorted(hits, key=lambda c: (c.task, c.metric)):
            direction = "higher" if c.diff > 0 else "lower"
            lines.append(f"  - {c.task}/{c.metric}: {direction} ({_fmt(c.value)} vs {_fmt(c.baseline_value)}; "
                         f"difference {_fmt(c.diff)} [{_fmt(c.low)}, {_fmt(c.high)}], corrected p {_p(c.p_adjusted)})")
    sig_corr = [c for c in report.correlations if c.significant]
    for c in sig_corr:
        trend = "rises" if c.rho > 0 else "falls"
        lines.append(f"- {c.task}/{c.metric} {trend} with size in {c.family} (rho {_fmt(c.rho, 3)}, "
                     f"corrected p {_p(c.p_adjusted)}).")
    return lines


def write_report(report: Report, out_dir: str | Path, make_plots: bool = True) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    header, rows = summary_table(report)
    for name, text in [
        ("summary.csv", _csv_text(header, rows)),
        ("comparisons.csv", _csv_text(
            ["model", "baseline", "task", "metric", "filter", "value", "baseline_value", "diff", "ci_low", "ci_high",
             "p_value", "p_adjusted", "significant", "documents"],
            [[c.model, c.baseline, c.task, c.metric, c.filter, c.value, c.baseline_value, c.diff, c.low, c.high,
              c.p_value, c.p_adjusted, c.significant, c.n] for c in report.comparisons])),
        ("correlations.csv", _csv_text(
            ["family", "task", "metric", "filter", "rho", "ci_low", "ci_high", "p_value", "p_adjusted", "significant",
             "models"],
            [[c.family, c.task, c.metric, c.filter, c.rho, c.low, c.high, c.p_value, c.p_adjusted, c.significant, c.n]
             for c in report.correlations])),
        ("perplexity_matched.csv", _csv_text(
            ["model", "method", "perplexity", "task", "metric", "value", "ci_low", "ci_high", "predicted", "residual",
             "residual_ci_low", "residual_ci_high", "extrapolated", "reference"],
            [[r.model, r.method, r.perplexity, r.task, r.metric, r.value, r.low, r.high, r.predicted, r.residual,
              r.residual_low, r.residual_high, r.extrapolated, r.reference] for r in report.matched])),
    ]:
        write_atomically(out / name, text)
        written.append(out / name)
    plots = []
    if make_plots:
        from compress import plots as plotting

        plots = plotting.write_all(report, out / "plots")
    write_atomically(out / "summary.md", summary_markdown(report, plots))
    return written + plots + [out / "summary.md"]


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected MODEL=BASELINE, got {text!r}")
    model, baseline = text.split("=", 1)
    return model.strip(), baseline.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compfair-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR",
                        help="lm-eval --output_path directories (searched recursively for results_*.json)")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="where the report is written")
    parser.add_argument("--compare", type=_pair, action="append", default=[], metavar="MODEL=BASELINE",
                        help="also test MODEL against BASELINE (names as in the report); repeatable")
    parser.add_argument("--distilled", action="append", default=[], metavar="MODEL",
                        help="MODEL was distilled elsewhere (e.g. distilgpt2): not a reference in the perplexity-"
                             "matched comparison; repeatable")
    parser.add_argument("--correction", choices=sorted(significance.CORRECTIONS), default="bh",
                        help="multiple-comparison correction: bh = Benjamini-Hochberg (default), holm = Holm")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level after correction")
    parser.add_argument("--resamples", type=int, default=None,
                        help=f"bootstrap and permutation resamples (default {significance.DEFAULT_RESAMPLES}; "
                             f"{significance.RECORD_RESAMPLES} for per-record metrics such as StereoSet's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.resamples is not None and args.resamples < 1:
        parser.error(f"--resamples must be positive, got {args.resamples}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = build_report(args.results_dirs, dict(args.compare), args.correction, args.alpha, args.resamples,
                          args.seed, args.distilled)
    written = write_report(report, args.out, make_plots=not args.no_plots)
    significant = sum(c.significant for c in report.comparisons)
    print(f"report for {len(report.models)} models in {args.out}: {len(written)} files; "
          f"{significant} of {len(report.comparisons)} paired comparisons significant", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
