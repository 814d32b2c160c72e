"""The report on disk: summary.csv, comparisons.csv, correlations.csv, perplexity_matched.csv, summary.md,
report.html (all of it on one page) and the plots."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from compress.common.atomic_files import write_atomically
from compress.report import flips as item_flips
from compress.report import length_control, scorer_agreement, significance
from compress.report.models import ModelInfo, bias_chosen_on

if TYPE_CHECKING:
    from compress.report.build import Report


# The metrics summary.md tables show (summary.csv has every metric); a task with none of them shows all.
KEY_METRICS = ("toxic_count", "toxic_score", "expected_max_toxicity", "toxicity_probability", "gen_length_tokens",
               "ss", "lms", "icat", "stereotype_count", "anti_stereotype_count", "unrelated_count", "anti_count",
               "anti_rate", "pro_rate", "bias_gap", "word_perplexity",
               # CrowS-Pairs, BOLD, and lm-eval's own bias tasks (crows_pairs_*, winogender_*, toxigen, bbq, ...)
               "metric_score", "stereo_score", "antistereo_score", "neutral_rate", "metric_score_loglik", "regard",
               "regard_gap", "toxicity", "toxicity_gap", "sentiment", "sentiment_gap", "pct_stereotype",
               "likelihood_diff", "acc", "acc_norm", "accuracy_amb", "accuracy_disamb", "amb_bias_score",
               "disamb_bias_score", "pct_male_preferred")


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row])
    return buffer.getvalue()


MODEL_COLUMNS = ["model", "method", "baseline", "init", "blocks", "heads", "parameters", "perplexity",
                 "perplexity_source", "trainer_perplexity", "prune_subset", "pretrained", "results_files",
                 # post-training quantization / sparsity
                 "compression", "bits", "group_size", "sparsity", "pattern", "format", "linear_weight_bytes",
                 "baseline_linear_weight_bytes", "model_files_bytes", "baseline_model_files_bytes",
                 # head pruning's objective; a bias-targeted model's choosing data and the tasks that overlap it
                 "head_importance", "bias_chosen_on", "evaluated_on_choosing_data"]


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
               ";".join(str(p) for p in run.results_files + run.record_files),
               info.compression or None, info.bits, info.group_size, info.sparsity, info.pattern,
               info.checkpoint_format, info.linear_weight_bytes, info.baseline_linear_weight_bytes,
               info.model_files_bytes, info.baseline_model_files_bytes, info.head_importance,
               bias_chosen_on(info), ";".join(sorted(info.leaky_tasks)) or None]
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


def _ratio(value, base) -> str:
    return f"{_fmt(value)} ({value / base:.2f}x)" if value is not None and base else _fmt(value)


def post_training_lines(report: Report) -> list[str]:
    """Quantized and sparse models: what was done and their bytes against the model each came from."""
    rows = [i for i in report.models if i.method in ("quantization", "sparsity")]
    if not rows:
        return []
    lines = ["", "## Quantized and sparse models", "",
             "Bytes on disk from each record (quantization.json / sparsity.json); the ratio is against the "
             "uncompressed baseline's checkpoint. Zeros of a sparse model are stored densely.", ""]
    lines += _md_table(["model", "method", "bits", "sparsity", "format", "baseline", "linear weight bytes",
                        "model file bytes"], [
        [i.name, i.compression, _fmt(i.bits), "–" if i.sparsity is None else f"{i.sparsity:.3f} ({i.pattern})",
         i.checkpoint_format or "–", i.baseline or "–", _ratio(i.linear_weight_bytes, i.baseline_linear_weight_bytes),
         _ratio(i.model_files_bytes, i.baseline_model_files_bytes)] for i in rows])
    return lines


def _method_words(info: ModelInfo) -> str:
    if info.init:
        return f"{info.method} ({info.init} init)"
    if info.head_importance == "bias":
        return f"{info.method} (by bias: {bias_chosen_on(info)})"
    return info.method


def summary_markdown(report: Report, plots: list[Path]) -> str:
    correction = significance.CORRECTION_NAMES[report.correction]
    lines = ["# compfair report", "",
             f"{len(report.models)} models. Intervals are 95% percentile bootstraps over documents "
             f"({report.resamples} resamples; lm-eval's standard error where no per-document values exist). "
             f"Paired tests compare each model with its baseline on the same documents (permutation test); "
             f"p-values are corrected with {correction} over all {len(report.comparisons)} comparisons; "
             f"significant means corrected p < {report.alpha}.", "",
             "All of it on one page, with the figures and each model's provenance: report.html.", "",
             "## Models", ""]
    lines += _md_table(["model", "method", "baseline", "blocks", "heads", "parameters", "perplexity"], [
        [i.name + (" †" if i.leaky_tasks else ""), _method_words(i), i.baseline or "–", _fmt(i.blocks),
         _fmt(i.heads), _fmt(i.parameters), _fmt(i.perplexity) + (f" ({i.perplexity_source})" if i.perplexity else "")]
        for i in report.models])

    lines += post_training_lines(report)

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
    lines += beyond_the_paper_markdown(report)
    if plots:
        lines += ["## Plots", "", "Each also as a vector PDF beside it (plots/NAME.pdf).", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in dict.fromkeys(report.notes)] + [""]
    return "\n".join(lines).rstrip() + "\n"


def beyond_the_paper_markdown(report: Report) -> list[str]:
    """The sections of the evaluation beyond the paper: item-level flips, ..."""
    return (item_flips.markdown(report.flips)
            + scorer_agreement.markdown(report.scorer_rankings, report.scorer_agreement, report.scorer_flags)
            + length_control.markdown(report.length_adjusted))


def beyond_the_paper_files(report: Report, out: Path) -> list[Path]:
    """The CSV files of the evaluation beyond the paper (its figures are in `plots`)."""
    files = []
    if report.flips:
        write_atomically(out / "flips.csv", _csv_text(item_flips.CSV_HEADER, item_flips.csv_rows(report.flips)))
        files.append(out / "flips.csv")
    if report.length_adjusted:
        for name, header, rows in (
                ("length_bins.csv", length_control.BIN_HEADER, length_control.bin_rows(report.length_bins)),
                ("length_adjusted.csv", length_control.ADJUSTED_HEADER,
                 length_control.adjusted_rows(report.length_adjusted))):
            write_atomically(out / name, _csv_text(header, rows))
            files.append(out / name)
    if report.scorer_rankings:
        for name, header, rows in (
                ("scorer_rankings.csv", scorer_agreement.RANKING_HEADER,
                 scorer_agreement.ranking_rows(report.scorer_rankings)),
                ("scorer_agreement.csv", scorer_agreement.AGREEMENT_HEADER,
                 scorer_agreement.agreement_rows(report.scorer_agreement))):
            write_atomically(out / name, _csv_text(header, rows))
            files.append(out / name)
    return files


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
        from compress.report import plots as plotting

        plots = plotting.write_all(report, out / "plots")
    written += beyond_the_paper_files(report, out)
    write_atomically(out / "summary.md", summary_markdown(report, plots))
    write_atomically(out / "report.html", report_page(report, plots, written))
    return written + plots + [p.with_suffix(".pdf") for p in plots] + [out / "summary.md", out / "report.html"]


def report_page(report: Report, plots: list[Path], written: list[Path]) -> str:
    """report.html; its metric and comparison sections show summary.csv and comparisons.csv, so those are left out
    of its other tables."""
    from compress.report import html_page
    from compress.report.plots import CAPTIONS

    others = [p for p in written if p.suffix == ".csv" and p.name not in ("summary.csv", "comparisons.csv")]
    return html_page.render(report, plots, others, CAPTIONS)
