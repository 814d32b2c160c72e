"""One perplexity per model, and each headline metric against log perplexity: the value a reference
model of the same perplexity is predicted to have, and the residual."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from compress.report.estimates import Estimate
from compress.report.models import ModelInfo, lineage_root

PERPLEXITY_METRIC = "word_perplexity"
PREFERRED_PERPLEXITY_TASKS = ("wikitext",)
# Metrics that stand for a task in the perplexity plots and the perplexity-matched table, best first.
HEADLINE_METRICS = ("toxic_score", "expected_max_toxicity", "ss", "anti_rate")


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


def perplexity_matched(infos: dict[str, ModelInfo], estimates: list[Estimate], notes: list[str],
                       references: list[str] | None = None) -> list[MatchedRow]:
    """Each model's headline metrics against a line fitted on reference models: metric ~ a + b log(perplexity).

    References are, by default, the models of the same lineage (the same original model and what was made
    from it) that were not distilled (original and pruned ones), so a student's residual says whether it is
    more or less toxic or biased than a non-distilled model of its own family at the same perplexity would
    be; `references` names the reference models instead, for every model. The residual's interval is the
    model's own interval shifted by the prediction; the line's own uncertainty is not in it.
    """
    for name in references or []:
        if name not in infos:
            raise SystemExit(f"error: --reference {name}: no model named {name!r} in the results "
                             f"(models: {', '.join(sorted(infos))})")
    sources = defaultdict(list)
    for info in infos.values():
        if info.perplexity is not None and info.perplexity > 0:
            sources[info.perplexity_source].append(info.name)
    if not sources:
        return []
    members = max(sources.values(), key=len)
    table = {(e.model, e.task, e.metric, e.filter): e for e in estimates}
    rows = []
    if references:
        fits = [(members, [m for m in references if m in members], "named reference models")]
    else:
        by_lineage = defaultdict(list)
        for m in members:
            by_lineage[lineage_root(infos, m)].append(m)
        fits = [(group, None, None) for group in by_lineage.values()]
    for task, metric, filter_name in headline_keys(estimates):
        for group, named, named_label in fits:
            rows += _fit_and_match(infos, table, group, named, named_label, task, metric, filter_name)
    return rows


def _fit_and_match(infos, table, group, named, named_label, task, metric, filter_name) -> list[MatchedRow]:
    """One task's line fitted on the references of `group` (the named ones, else its non-distilled models) and
    every model of the group against it."""
    present = [m for m in group if (m, task, metric, filter_name) in table]
    if named is not None:
        references, reference_label = [m for m in named if m in present], named_label
    else:
        references = [m for m in present if infos[m].method != "distillation"]
        reference_label = "non-distilled models of its lineage"
        if len({infos[m].perplexity for m in references}) < 2:
            references, reference_label = present, "all models of its lineage (fewer than two non-distilled " \
                                                   "perplexities)"
    rows = []
    if len({infos[m].perplexity for m in references}) < 2:
        return rows
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
