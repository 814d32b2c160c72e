"""What the report found, largest first: the significant paired differences ranked by their size relative to the
baseline's value (metrics have different units, so the relative change is what can be compared across them), and
the five lines `compfair-report` ends with."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from compress.report import significance


def relative_effect(comparison) -> float:
    """diff / |baseline value|; NaN where the baseline's value is 0 (a change from nothing has no relative size)."""
    base = comparison.baseline_value
    if base is None or not math.isfinite(base) or base == 0 or not math.isfinite(comparison.diff):
        return math.nan
    return comparison.diff / abs(base)


def significant_findings(report) -> list:
    """The significant comparisons, the largest relative change first (those without one last, by p)."""
    def order(c):
        effect = relative_effect(c)
        return (True, c.p_adjusted) if math.isnan(effect) else (False, -abs(effect))

    return sorted((c for c in report.comparisons if c.significant), key=order)


def change_in_words(comparison) -> str:
    """The relative change as a percentage ("+40%", "-5%"), or as a multiple of the baseline's value beyond ten
    times ("x1.7e+04"), where a percentage has too many digits to read."""
    effect = relative_effect(comparison)
    if math.isnan(effect):
        return "–"
    ratio = comparison.value / comparison.baseline_value
    return f"x{ratio:.3g}" if abs(effect) >= 9 and ratio > 0 else f"{effect:+.0%}"


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"


def describe_finding(c) -> str:
    """One finding in words: 'B vs teacher, task/metric: 12.3 vs 4.5 (+173%, difference 7.8 [6.1, 9.4], p 0.001)'."""
    share = "" if math.isnan(relative_effect(c)) else f"{change_in_words(c)}, "
    return (f"{c.model} vs {c.baseline}, {c.task}/{c.metric}: {_number(c.value)} vs {_number(c.baseline_value)} "
            f"({share}difference {_number(c.diff)} [{_number(c.low)}, {_number(c.high)}], corrected p "
            f"{c.p_adjusted:.2g})")


def metric_columns(report) -> set[str]:
    """Every task/metric column of summary.csv (one estimate with an interval per model that has it)."""
    return {e.column for e in report.estimates}


def summary_lines(report, html_path: Path, out_dir: Path, figures: int) -> list[str]:
    """The report's path, then five lines of what it found."""
    methods = Counter(info.method for info in report.models)
    tasks = {e.task for e in report.estimates}
    pairs = {(c.model, c.baseline) for c in report.comparisons}
    hits = significant_findings(report)
    hit_pairs = {(c.model, c.baseline) for c in hits}
    correction = significance.CORRECTION_NAMES[report.correction]
    largest = describe_finding(hits[0]) if hits else "none"
    return [
        f"compfair report: {html_path}",
        f"  models: {len(report.models)} (" + ", ".join(f"{n} {m}" for m, n in methods.items()) + ")",
        f"  metrics: {len(metric_columns(report))} task/metric pairs over {len(tasks)} tasks, each with a 95% interval",
        f"  significant: {len(hits)} of {len(report.comparisons)} paired comparisons after {correction}, "
        f"alpha {report.alpha}; {len(hit_pairs)} of {len(pairs)} model/baseline pairs differ somewhere",
        f"  largest significant effect: {largest}",
        f"  files: {out_dir} (report.html, summary.md, CSV tables, {figures} figure{'s' if figures != 1 else ''} "
        "as PNG and PDF in plots/)",
    ]
