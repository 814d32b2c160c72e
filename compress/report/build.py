"""The study's report: which compressed models are more or less toxic and biased, by how much, and whether it is real.

    compfair-report RESULTS_DIR... --out REPORT_DIR [--compare MODEL=BASELINE] [--correction bh|holm]

reads lm-eval output directories (see `compress.report.results`) and writes to REPORT_DIR:

- `summary.csv`: one row per model: how it was made (method, baseline, blocks, heads, parameters),
  perplexity, and every metric lm-eval reported, each with a 95% interval (`<task>/<metric>`,
  `<task>/<metric> ci_low`, `... ci_high`). Point values are copied from the results files unchanged.
  Where both StereoSet tasks were logged, `compfair_stereoset_overall/{ss,lms,icat}` is StereoSet's official
  overall (per target term over the union of both splits), computed from the logged items.
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

from dataclasses import dataclass, field
from pathlib import Path

from compress.report import significance
from compress.report.comparisons import Comparison, apply_correction, baseline_pairs, compare_with_baselines
from compress.report.correlations import Correlation, size_correlations
from compress.report.estimates import Estimate, estimate_metrics, stereoset_overall
from compress.report.flips import Flips, item_flips
from compress.report.length_control import LengthAdjusted, LengthBin, length_control
from compress.report.models import METHOD_ORDER, ModelInfo, describe_model, mark_bias_leakage, resolve_baselines
from compress.report.perplexity_matching import MatchedRow, choose_perplexity, perplexity_matched
from compress.report.results import ModelRun, find_model_runs
from compress.report.scorer_agreement import Agreement, Ranking, scorer_agreement, tccc_flags


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
    # Evaluation beyond the paper (compress/report/flips.py, ...).
    flips: list[Flips] = field(default_factory=list)
    scorer_rankings: list[Ranking] = field(default_factory=list)
    scorer_agreement: list[Agreement] = field(default_factory=list)
    scorer_flags: list[str] = field(default_factory=list)
    length_bins: list[LengthBin] = field(default_factory=list)
    length_adjusted: list[LengthAdjusted] = field(default_factory=list)

    def estimate(self, model: str, task: str, metric: str) -> Estimate | None:
        for e in self.estimates:
            if e.model == model and e.task == task and e.metric == metric:
                return e
        return None


def build_report(results_dirs: list[str | Path], compare: dict[str, str] | None = None, correction: str = "bh",
                 alpha: float = 0.05, resamples: int | None = None, seed: int = 0,
                 distilled: list[str] | None = None, references: list[str] | None = None,
                 mix_families: bool = False) -> Report:
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
    mark_bias_leakage(infos, runs, notes)
    estimates, groups = estimate_metrics(runs, resamples, seed, notes)
    estimates += stereoset_overall(runs, resamples, seed, notes)
    comparisons = compare_with_baselines(runs, infos, groups, resamples, seed, notes)
    apply_correction(comparisons, correction, alpha)
    correlations = size_correlations(infos, estimates, mix_families)
    apply_correction(correlations, correction, alpha)
    choose_perplexity(infos, estimates, notes)
    matched = perplexity_matched(infos, estimates, notes, references)
    order = sorted(infos.values(), key=lambda i: (METHOD_ORDER.get(i.method, 9), -(i.parameters or 0),
                                                  i.prune_subset or 0, i.name))
    effective_resamples = resamples or significance.DEFAULT_RESAMPLES
    if comparisons and correction == "holm":
        floor = significance.smallest_p(effective_resamples)
        if floor * len(comparisons) >= alpha:
            notes.append(f"with {effective_resamples} resamples no p-value is below {floor:.1e}, so Holm over "
                         f"{len(comparisons)} comparisons cannot reach {alpha}; raise --resamples or use "
                         "--correction bh")
    report = Report(order, estimates, comparisons, correlations, matched, notes, correction, alpha,
                    effective_resamples, runs)
    pairs = baseline_pairs(infos)
    report.flips = item_flips(runs, pairs)
    report.scorer_rankings, report.scorer_agreement = scorer_agreement(runs, seed=seed)
    report.scorer_flags = tccc_flags(runs)
    report.length_bins, report.length_adjusted = length_control(runs, pairs, seed=seed)
    return report


# ---------------------------------------------------------------- writing
