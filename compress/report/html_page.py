"""report.html: the whole report as one self-contained page (figures embedded as base64 PNG, a little inline CSS,
no script, nothing fetched): the significant findings first, each model's provenance, the figures, every metric
with its 95% interval, and every table the report wrote. All text is escaped."""

from __future__ import annotations

import base64
import csv
import math
from collections import defaultdict
from html import escape
from pathlib import Path

from compress.report import significance
from compress.report.figure_style import DPI
from compress.report.findings import change_in_words, significant_findings
from compress.report.provenance import provenances

# The sections, in order, by id (a test looks for them).
SECTIONS = {"findings": "Significant findings", "models": "Models and their provenance", "figures": "Figures",
            "metrics": "Every metric with its 95% interval", "comparisons": "Every paired comparison",
            "tables": "The other tables", "notes": "Notes"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 78em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.significant td { background: #fff4d6; }
.scroll { overflow-x: auto; }
table.provenance td:nth-child(3), table.provenance td:nth-child(5) { min-width: 16em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; max-width: 60em; }
"""


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3) else f"{value:.4g}"
    return str(value)


def _interval(value, low, high) -> str:
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset(), marked: set[int] = frozenset(),
           css_class: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="num">{escape(_fmt(c))}</td>' if j in numeric else f"<td>{escape(_fmt(c))}</td>"
                        for j, c in enumerate(row))
        body.append(f'<tr class="significant">{cells}</tr>' if i in marked else f"<tr>{cells}</tr>")
    table = f'<table class="{css_class}">' if css_class else "<table>"
    return f'<div class="scroll">{table}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _section(key: str, inner: str) -> str:
    return f'<section id="{key}"><h2>{escape(SECTIONS[key])}</h2>\n{inner}\n</section>'


def _para(text: str) -> str:
    return f"<p>{escape(text)}</p>"


def findings_section(report) -> str:
    hits = significant_findings(report)
    correction = significance.CORRECTION_NAMES[report.correction]
    parts = [_para(f"{len(hits)} of {len(report.comparisons)} paired comparisons (each model against its baseline on "
                   f"the same documents) are significant after {correction}, alpha {report.alpha}; the largest "
                   "relative change first.")]
    if hits:
        parts.append(_table(["model", "baseline", "task", "metric", "value", "baseline value", "relative change",
                             "difference [95%]", "corrected p"],
                            [[c.model, c.baseline, c.task, c.metric, c.value, c.baseline_value,
                              change_in_words(c),
                              _interval(c.diff, c.low, c.high), c.p_adjusted] for c in hits], numeric={4, 5, 6, 8}))
    correlations = [c for c in report.correlations if c.significant]
    if correlations:
        parts.append(_para("Significant rank correlations with size (Spearman, parameters):"))
        parts.append(_table(["family", "task", "metric", "rho [95%]", "models", "corrected p"],
                            [[c.family, c.task, c.metric, _interval(c.rho, c.low, c.high), c.n, c.p_adjusted]
                             for c in correlations], numeric={4, 5}))
    if not hits and not correlations:
        parts.append(_para("Nothing is significant: no model differs from its baseline on any metric beyond what "
                           "resampling the documents explains."))
    return _section("findings", "\n".join(parts))


def models_section(report) -> str:
    by_name = {p.model: p for p in provenances(report)}
    rows = [[i.name, i.method, by_name[i.name].what, by_name[i.name].made_from, by_name[i.name].data, i.blocks,
             i.heads, i.parameters, i.perplexity, i.perplexity_source, ", ".join(by_name[i.name].records) or "–"]
            for i in report.models]
    return _section("models", _para("What was done to each model, from which model and on which data, as the records "
                                    "beside each model say (distillation.json, pruning.json, quantization.json, ...).")
                    + _table(["model", "method", "what was done", "made from", "data", "blocks", "heads",
                              "parameters", "perplexity", "perplexity from", "records"], rows, numeric={5, 6, 7, 8},
                             css_class="provenance"))


def figures_section(figures: list[Path], captions: dict[str, str]) -> str:
    if not figures:
        return _section("figures", _para("No figures were drawn (--no-plots)."))
    parts = []
    for path in figures:
        png = Path(path).read_bytes()
        data = base64.b64encode(png).decode("ascii")
        caption = captions.get(Path(path).stem, "")
        parts.append(f'<figure id="figure-{escape(Path(path).stem)}"><img src="data:image/png;base64,{data}" '
                     f'width="{_css_width(png)}" alt="{escape(Path(path).stem)}"><figcaption>'
                     f"<b>{escape(Path(path).stem)}</b>. "
                     f"{escape(caption)} (plots/{escape(Path(path).name)}, and a vector PDF beside it)"
                     "</figcaption></figure>")
    return _section("figures", "\n".join(parts))


SCREEN_PIXELS_PER_INCH = 144  # figures are drawn at print size (8-point text); half as large again reads well


def _css_width(png: bytes) -> int:
    """The figure's width on the page in CSS pixels, from its PNG width (IHDR) at the figures' 300 dpi."""
    return round(int.from_bytes(png[16:20], "big") * SCREEN_PIXELS_PER_INCH / DPI)


def metrics_section(report) -> str:
    by_task = defaultdict(list)
    for e in report.estimates:
        by_task[e.task].append(e)
    parts = [_para(f"Intervals are 95% percentile bootstraps over documents ({report.resamples} resamples; "
                   "lm-eval's standard error where no per-document values exist).")]
    for task in sorted(by_task, key=lambda t: (any(e.is_group for e in by_task[t]), t)):
        names = sorted({e.name for e in by_task[task]})
        table = {(e.model, e.name): e for e in by_task[task]}
        rows = [[info.name] + [_interval(table[(info.name, n)].value, table[(info.name, n)].low,
                                         table[(info.name, n)].high) if (info.name, n) in table else "–"
                               for n in names]
                for info in report.models if any((info.name, n) in table for n in names)]
        title = task + (" (group)" if by_task[task][0].is_group else "")
        numeric = set(range(1, len(names) + 1))
        parts.append(f"<h3>{escape(title)}</h3>" + _table(["model"] + names, rows, numeric=numeric))
    return _section("metrics", "\n".join(parts))


def comparisons_section(report) -> str:
    ordered = sorted(report.comparisons, key=lambda c: (not c.significant, c.model, c.task, c.metric))
    rows = [[c.model, c.baseline, c.task, c.metric, c.value, c.baseline_value, _interval(c.diff, c.low, c.high),
             c.n, c.p_value, c.p_adjusted] for c in ordered]
    marked = {i for i, c in enumerate(ordered) if c.significant}
    return _section("comparisons", _para("Significant rows are shaded. p: permutation test; corrected over every "
                                         "comparison in the report.")
                    + _table(["model", "baseline", "task", "metric", "value", "baseline value", "difference [95%]",
                              "documents", "p", "corrected p"], rows, numeric={4, 5, 6, 7, 8, 9}, marked=marked))


def _csv_cell(text: str):
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def tables_section(csv_files: list[Path]) -> str:
    parts = []
    for path in csv_files:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if len(rows) < 2:
            continue
        parts.append(f"<h3>{escape(Path(path).name)}</h3>"
                     + _table(rows[0], [[_csv_cell(c) for c in row] for row in rows[1:]]))
    return _section("tables", "\n".join(parts) or _para("No other tables."))


def render(report, figures: list[Path], csv_files: list[Path], captions: dict[str, str]) -> str:
    notes = list(dict.fromkeys(report.notes))
    body = ["<h1>compfair report</h1>",
            _para(f"{len(report.models)} models; {len({e.column for e in report.estimates})} task/metric pairs. "
                  "The same tables as CSV, and summary.md, are beside this page."),
            findings_section(report), models_section(report), figures_section(figures, captions),
            metrics_section(report), comparisons_section(report), tables_section(csv_files),
            _section("notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>" if notes
                     else _para("No notes."))]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>compfair report</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
