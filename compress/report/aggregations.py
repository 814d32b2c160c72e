"""How a metric's per-document values add up to the value lm-eval reported: the candidate statistics,
and StereoSet's per-target scores (by reference function, and vectorised over resamples)."""

from __future__ import annotations

import numpy as np

from compress.report import significance


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, str)


WEIGHTED_MEAN = significance.Aggregation("weighted_mean", significance.weighted_ratio, width=2)


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
        from compress.bias import metrics as bias_metrics
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
    `compress.bias.metrics.stereoset_scores` itself: one call per domain per resample."""
    wanted = _stereoset_wanted(metrics)
    if not wanted:
        return None
    from compress.bias import metrics as bias_metrics

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
    `compress.bias.metrics.stereoset_scores` computed; a test checks it against that function on resamples.
    Encoded columns: target code, domain code, stereotype > anti-stereotype, #(stereotype, anti > unrelated).
    """
    wanted = _stereoset_wanted(metrics)
    if not wanted:
        return None
    from compress.bias import metrics as bias_metrics

    def encode(records: list) -> np.ndarray:
        code = {t: i for i, t in enumerate(sorted({r["target"] for r in records}))}
        domain = {d: i for i, d in enumerate(bias_metrics.DOMAINS)}
        return np.array([[code[r["target"]], domain.get(r["domain"], -1),
                          float(r["stereotype"] > r["anti-stereotype"]),
                          float(r["stereotype"] > r["unrelated"]) + float(r["anti-stereotype"] > r["unrelated"])]
                         for r in records], dtype=float).reshape(-1, 4)

    def scores(examples: np.ndarray, wins: np.ndarray, related: np.ndarray) -> dict[str, np.ndarray]:
        present = examples > 0
        terms = present.sum(axis=1)
        safe = np.where(present, examples, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ss = np.where(present, 100.0 * wins / safe, 0.0).sum(axis=1) / terms
            lms = np.where(present, 100.0 * related / (2.0 * safe), 0.0).sum(axis=1) / terms
        ss, lms = np.where(terms > 0, ss, np.nan), np.where(terms > 0, lms, np.nan)
        return {"ss": ss, "lms": lms, "icat": lms * np.minimum(ss, 100.0 - ss) / 50.0}

    def aggregate(values: np.ndarray) -> np.ndarray:
        batch, (n, _) = values.shape[:-2], values.shape[-2:]
        flat = values.reshape(-1, n, 4)
        rows = flat.shape[0]
        targets = int(flat[..., 0].max()) + 1 if n else 1
        domains = len(bias_metrics.DOMAINS) + 1  # column 0: a domain the tasks do not name
        # Tallies per (resample, target, domain) cell, three bincounts in all: a domain's per-target tallies
        # are its column, the overall ones the sum over the columns.
        cell = flat[..., 0].astype(np.int64) * domains + flat[..., 1].astype(np.int64) + 1
        slot = (np.arange(rows)[:, None] * (targets * domains) + cell).ravel()
        size = rows * targets * domains
        examples, wins, related = (
            np.bincount(slot, weight, size).reshape(rows, targets, domains)
            for weight in (None, flat[..., 2].ravel(), flat[..., 3].ravel()))
        out = np.empty((rows, len(wanted)))
        by_domain = {}
        for k, (_, score, domain) in enumerate(wanted):
            if domain not in by_domain:
                column = None if domain is None else bias_metrics.DOMAINS.index(domain) + 1
                by_domain[domain] = scores(*(t.sum(axis=2) if column is None else t[:, :, column]
                                             for t in (examples, wins, related)))
            out[:, k] = by_domain[domain][score]
        return out.reshape(*batch, len(wanted))

    return significance.Aggregation("stereoset_scores (vectorised)", aggregate, width=4,
                                    outputs=tuple(m for m, _, _ in wanted), encode=encode)


def _group_gap_wanted(metrics: list[str]) -> list[tuple[str, str]]:
    from compress.bias import bold

    return [(m, m.removesuffix("_gap")) for m in metrics if m.endswith("_gap") and m.removesuffix("_gap")
            in bold.SCORES]


def group_gap_aggregation(metrics: list[str]) -> significance.Aggregation | None:
    """The same numbers as `group_gap_statistic`, vectorised over resamples: per resample, each group's sum
    and count of a score come from one bincount, and the gap is the largest minus the smallest mean over the
    groups present. Kept only where it reproduces every reported value; a test checks it against
    `compress.bias.bold.group_gap` on resamples. Encoded columns: group code, then each score."""
    try:
        wanted = _group_gap_wanted(metrics)
    except ImportError:
        return None
    if not wanted:
        return None
    scores = [score for _, score in wanted]

    def encode(records: list) -> np.ndarray:
        code = {g: i for i, g in enumerate(sorted({r["group"] for r in records}))}
        return np.array([[code[r["group"]], *(float(r[score]) for score in scores)] for r in records],
                        dtype=float).reshape(-1, 1 + len(scores))

    def aggregate(values: np.ndarray) -> np.ndarray:
        batch, (n, width) = values.shape[:-2], values.shape[-2:]
        flat = values.reshape(-1, n, width)
        rows = flat.shape[0]
        groups = int(flat[..., 0].max()) + 1 if n else 1
        slot = (np.arange(rows)[:, None] * groups + flat[..., 0].astype(np.int64)).ravel()
        count = np.bincount(slot, minlength=rows * groups).reshape(rows, groups)
        present = count > 0
        out = np.empty((rows, len(scores)))
        for k in range(len(scores)):
            total = np.bincount(slot, flat[..., 1 + k].ravel(), rows * groups).reshape(rows, groups)
            means = total / np.where(present, count, 1)
            gap = np.where(present, means, -np.inf).max(axis=1) - np.where(present, means, np.inf).min(axis=1)
            out[:, k] = np.where(present.any(axis=1), gap, np.nan)
        return out.reshape(*batch, len(scores))

    return significance.Aggregation("group_gap (vectorised)", aggregate, width=1 + len(scores),
                                    outputs=tuple(m for m, _ in wanted), encode=encode)


def group_gap_statistic(metrics: list[str]) -> significance.RecordAggregation | None:
    """BOLD's `<score>_gap` (max - min of the group means) from per-prompt records {"group", score, ...},
    through `compress.bias.bold.group_gap` itself: one call per gap per resample."""
    try:
        from compress.bias import bold

        wanted = _group_gap_wanted(metrics)
    except ImportError:
        return None
    if not wanted:
        return None

    def gaps(records: list) -> list[float]:
        return [bold.group_gap(records, score) for _, score in wanted]

    return significance.RecordAggregation("group_gap", gaps, tuple(m for m, _ in wanted))
