"""The report's figures, after the paper's, each readable without the text: models are rows (their names read
horizontally), coloured by how they were made (`figure_style.METHOD_COLORS`, the same in every figure), with the
figure's one legend below its panels. Each is saved as a 300-dpi PNG and a vector PDF (`plots/NAME.png`, `.pdf`).

- `toxicity`: toxic score and toxic count per model for each prompt set (Figures 5 and 6).
- `bias_counts`: StereoSet top-choice counts and WinoBias anti-stereotype wins (Figure 7).
- `perplexity`: every model's perplexity, and the pruned ones' per pruning iteration (Figures 3 and 4).
- `perplexity_vs_metrics`: each headline toxicity and bias metric against perplexity, with the line of the
  reference models (Figure 9 and the perplexity-matched comparison); points named without overlaps
  (`label_placement`).
- `generation_length`: mean generation length per model and prompt set (Table 1).
- `flips`: per task, each model's share of items flipped 0 -> 1 (right of zero) and 1 -> 0 (left).

Error bars are the report's 95% intervals. Every model's marks carry its name as their gid (`model=NAME`), so a
test can find which colour each model got.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

from compress.report.figure_style import figure_legend, method_color, method_handles, plt, save_figure, style
from compress.report.label_placement import place_labels

STEREOSET_COUNTS = (("stereotype_count", "stereotype chosen"), ("anti_stereotype_count", "anti-stereotype chosen"),
                    ("unrelated_count", "unrelated chosen"))
# The paper's order of the prompt sets; other tasks follow alphabetically.
TASK_ORDER = ("compfair_rtp", "compfair_rtp_standard", "compfair_tox4k", "compfair_random4k", "compfair_safe4k")
MAX_COLUMNS = 4
TASK_COLUMNS = 6  # up to this many prompt sets side by side, so each metric is one row of panels
ROW_INCHES = 0.24  # height per model row, so the model names never touch
PANEL_WIDTH = 2.4
TITLE_GAP = 4  # points between the figure's title and the panels' titles


def model_gid(name: str) -> str:
    return f"model={name}"


def _short(task: str) -> str:
    return task.removeprefix("compfair_")


def _task_order(task: str) -> tuple:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _tasks_with(report, metric: str) -> list[str]:
    return sorted({e.task for e in report.estimates if e.metric == metric and not e.is_group}, key=_task_order)


def _errors(estimates) -> np.ndarray:
    """Asymmetric error bars from intervals; zero where an interval is missing."""
    below = [e.value - e.low if e is not None and math.isfinite(e.low) else 0.0 for e in estimates]
    above = [e.high - e.value if e is not None and math.isfinite(e.high) else 0.0 for e in estimates]
    return np.array([below, above])


def _grid(panels: int, rows_of_models: int, columns: int = MAX_COLUMNS, sharey: bool = True):
    """A figure of `panels` panels (MAX_COLUMNS a line) sized for `rows_of_models` model rows per panel."""
    cols = max(1, min(columns, panels))
    lines = math.ceil(panels / cols)
    size = (1.3 + PANEL_WIDTH * cols, lines * (1.5 + ROW_INCHES * rows_of_models))
    fig, axes = plt.subplots(lines, cols, figsize=size, squeeze=False, sharey=sharey)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _model_axis(ax, models) -> None:
    ax.set_yticks(np.arange(len(models)), [m.name for m in models])
    ax.set_ylim(len(models) - 0.5, -0.5)  # the first model on top
    ax.tick_params(axis="y", length=0)


def _bars(ax, models, estimates, xlabel: str) -> None:
    """One horizontal bar per model (its 95% interval as error bar), coloured by method."""
    for i, (model, e) in enumerate(zip(models, estimates)):
        if e is None:
            continue
        bars = ax.barh(i, e.value, xerr=_errors([e]), height=0.7, color=method_color(model.method),
                       error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        for patch in bars.patches:
            patch.set_gid(model_gid(model.name))
    _model_axis(ax, models)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    ax.set_axisbelow(True)


def _finish(fig, title: str, handles: list, labels: list[str]):
    """Title, layout, legend. tight_layout alone lets a tall figure's title run into the first panels' titles, so
    the title's own height (and a gap) is kept free above them."""
    text = fig.suptitle(title)
    title_height = text.get_window_extent(fig.canvas.get_renderer()).height + TITLE_GAP * fig.dpi / 72.0
    fig.tight_layout(rect=(0, 0, 1, 1 - title_height / fig.bbox.height))
    figure_legend(fig, handles, labels)
    return fig


def _models_with(report, pairs) -> list:
    return [m for m in report.models if any(report.estimate(m.name, t, k) is not None for t, k in pairs)]


def _metric_grid(report, tasks: list[str], metrics: list[tuple[str, str]], title: str):
    """Rows of panels: one row per metric, one panel per task; a bar per model."""
    pairs = [(t, metric) for t in tasks for metric, _ in metrics]
    models = _models_with(report, pairs)
    panels = [(t, metric, label) for metric, label in metrics for t in tasks]
    # A row per metric and a column per task; one task: its metrics side by side.
    columns = len(metrics) if len(tasks) == 1 else len(tasks) if len(tasks) <= TASK_COLUMNS else MAX_COLUMNS
    fig, axes = _grid(len(panels), len(models), columns=columns)
    for ax, (task, metric, label) in zip(axes, panels):
        _bars(ax, models, [report.estimate(m.name, task, metric) for m in models], label)
        ax.set_title(_short(task))
    handles, labels = method_handles(m.method for m in models)
    return _finish(fig, title, handles, labels)


def toxicity(report):
    tasks = _tasks_with(report, "toxic_score")
    if not tasks:
        return None
    metrics = [("toxic_score", "toxic score (sum of toxicity)"), ("toxic_count", "toxic count (toxicity > 0.5)")]
    return _metric_grid(report, tasks, metrics, "Toxicity of generations per prompt set (95% intervals)")


def generation_length(report):
    tasks = _tasks_with(report, "gen_length_tokens")
    if not tasks:
        return None
    metrics = [("gen_length_tokens", "mean generation length (tokens)"),
               ("gen_length_chars", "mean generation length (characters)")]
    metrics = [(m, label) for m, label in metrics if _tasks_with(report, m)]
    return _metric_grid(report, tasks, metrics, "How much each model generates per prompt (95% intervals)")


def bias_counts(report):
    panels = [(t, metric, label) for t in _tasks_with(report, "stereotype_count") for metric, label in STEREOSET_COUNTS
              if t in _tasks_with(report, metric)]
    panels += [(t, "anti_count", "anti-stereotyped sentence wins") for t in _tasks_with(report, "anti_count")]
    if not panels:
        return None
    models = _models_with(report, [(t, m) for t, m, _ in panels])
    fig, axes = _grid(len(panels), len(models))
    for ax, (task, metric, label) in zip(axes, panels):
        _bars(ax, models, [report.estimate(m.name, task, metric) for m in models], f"{label} (examples)")
        ax.set_title(_short(task))
    handles, labels = method_handles(m.method for m in models)
    return _finish(fig, "Bias: which sentence each model prefers (95% intervals)", handles, labels)


LOG_SUBS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
MIN_LOG_TICKS = 3
MAX_LOG_TICKS = 6


def log_ticks(low: float, high: float) -> list[float]:
    """Labelled ticks of a log axis over [low, high]: the first of powers of ten, 1-2-5 and 1..9 times them that
    gives at least three in view, thinned so neighbours are at least a quarter of the span apart (in log); a span
    too narrow for any of them (models of nearly one perplexity) gets a few evenly spaced round numbers."""
    if not (0 < low < high):
        return []
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    gap = (math.log10(high) - math.log10(low)) / 4
    chosen = []
    for subs in LOG_SUBS:
        ticks = [s * 10.0 ** k for k in decades for s in subs if low <= s * 10.0 ** k <= high]
        if len(ticks) > MAX_LOG_TICKS and len(chosen) >= 2:
            break
        chosen = _thinned(ticks, gap)
        if len(chosen) >= MIN_LOG_TICKS:
            break
    if len(chosen) < 2:
        chosen = [t for t in MaxNLocator(nbins=3).tick_values(low, high) if low <= t <= high]
    return chosen


def _thinned(ticks: list[float], gap: float) -> list[float]:
    kept: list[float] = []
    for tick in ticks:
        if not kept or math.log10(tick) - math.log10(kept[-1]) >= gap:
            kept.append(tick)
    return kept


def _tick_text(value: float) -> str:
    """Short labels for perplexities: 500, 20k, 10^6."""
    if value >= 1e6:
        exponent = math.log10(value)
        return f"$10^{{{round(exponent)}}}$" if abs(exponent - round(exponent)) < 1e-9 else f"{value:.0e}"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _log_axis(axis) -> None:
    """Log scale with the ticks `log_ticks` chooses and short labels; minor ticks unlabelled. Call after the data
    are drawn: it reads the span."""
    low, high = sorted(axis.get_view_interval())
    axis.set_major_locator(FixedLocator(log_ticks(low, high)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v)))
    axis.set_minor_formatter(NullFormatter())


PRUNING_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def perplexity(report):
    with_ppl = [m for m in report.models if m.perplexity is not None]
    pruned = [m for m in report.models if m.method == "head pruning" and m.perplexity_per_iteration]
    if not with_ppl and not pruned:
        return None
    panels = (1 if with_ppl else 0) + (1 if pruned else 0)
    fig, axes = _grid(panels, max(len(with_ppl), 8), columns=2, sharey=False)
    ax_iter = iter(axes)
    extra_handles, extra_labels = [], []
    if with_ppl:
        ax = next(ax_iter)
        for i, m in enumerate(with_ppl):
            (dot,) = ax.plot([m.perplexity], [i], "o", color=method_color(m.method), markersize=5)
            dot.set_gid(model_gid(m.name))
        ax.set_xscale("log")
        ax.margins(x=0.1)
        ax.autoscale_view()
        _log_axis(ax.xaxis)
        _model_axis(ax, with_ppl)
        ax.grid(axis="x", linewidth=0.3, alpha=0.5)
        sources = sorted({m.perplexity_source for m in with_ppl})
        ax.set_xlabel("perplexity (log scale)\n" + "; ".join(sources))
        ax.set_title("Perplexity of every model")
    if pruned:
        ax = next(ax_iter)
        for m, marker in zip(pruned, PRUNING_MARKERS * len(pruned)):
            heads = m.heads_per_iteration[: len(m.perplexity_per_iteration)]
            (line,) = ax.plot(heads, m.perplexity_per_iteration[: len(heads)], marker=marker, markersize=4,
                              linewidth=1, color=method_color(m.method))
            line.set_gid(model_gid(m.name))
            extra_handles.append(Line2D([], [], marker=marker, color=method_color(m.method), linewidth=1))
            extra_labels.append(f"{m.name} ({m.prune_subset} samples)" if m.prune_subset else m.name)
        ax.invert_xaxis()
        ax.set_xlabel("attention heads left")
        ax.set_ylabel("validation perplexity")
        ax.set_title("Head pruning: perplexity per iteration")
        ax.grid(linewidth=0.3, alpha=0.5)
    handles, labels = method_handles([m.method for m in with_ppl + pruned])
    return _finish(fig, "Perplexity of the models", handles + extra_handles, labels + extra_labels)


def _padded_span(values, share: float) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    low, high = min(finite), max(finite)
    pad = share * (high - low) if high > low else max(abs(high), 1.0) * share
    return low - pad, high + pad


def perplexity_vs_metrics(report):
    rows = defaultdict(list)
    for r in report.matched:
        rows[(r.task, r.metric)].append(r)
    if not rows:
        return None
    keys = sorted(rows)
    fig, axes = _grid(len(keys), 10, columns=3, sharey=False)
    reference = None
    for ax, key in zip(axes, keys):
        points = sorted(rows[key], key=lambda r: r.perplexity)
        for r in points:
            bars = ax.errorbar(r.perplexity, r.value, yerr=_errors([r]), fmt="o", markersize=4, capsize=2,
                               elinewidth=0.8, color=method_color(r.method))
            bars.lines[0].set_gid(model_gid(r.model))
        # The line may run far off where it is extrapolated: the axes are scaled to the models, not to it.
        (reference,) = ax.plot([r.perplexity for r in points], [r.predicted for r in points], "--", linewidth=0.8,
                               color="#555555", scalex=False, scaley=False)
        ax.set_xscale("log")
        ax.margins(x=0.15)
        ax.autoscale_view()
        ax.set_ylim(*_padded_span([v for r in points for v in (r.value, r.low, r.high)], 0.2))
        _log_axis(ax.xaxis)
        ax.set_xlabel("perplexity (log scale)")
        ax.set_ylabel(key[1])
        ax.set_title(f"{_short(key[0])}: {key[1]}")
    handles, labels = method_handles(r.method for r in report.matched)
    references = sorted({r.reference.split(":")[0] for r in report.matched})
    fig = _finish(fig, "Toxicity and bias against perplexity (95% intervals)", handles + [reference],
                  labels + ["reference line: " + "; ".join(references)])
    for ax, key in zip(axes, keys):  # after the layout, which the placement measures
        place_labels(ax, [(r.perplexity, r.value) for r in rows[key]], [r.model for r in rows[key]],
                     error_bars=[(r.perplexity, r.low, r.high) for r in rows[key]])
    return fig


def flips(report):
    if not report.flips:
        return None
    methods = {m.name: m.method for m in report.models}
    tasks = sorted({f.task for f in report.flips}, key=_task_order)
    order = {m.name: i for i, m in enumerate(report.models)}  # the models' order in every other figure
    pairs = sorted(dict.fromkeys((f.model, f.baseline) for f in report.flips), key=lambda p: (order.get(p[0], 0), p))
    fig, axes = _grid(len(tasks), len(pairs))
    for ax, task in zip(axes, tasks):
        by_pair = {(f.model, f.baseline): f for f in report.flips if f.task == task}
        for i, pair in enumerate(pairs):
            f = by_pair.get(pair)
            if f is None:
                continue
            color = method_color(methods.get(f.model, ""))
            up = ax.barh(i, 100 * f.share_up, height=0.7, color=color, xerr=[[100 * (f.share_up - f.up_low)],
                                                                             [100 * (f.up_high - f.share_up)]],
                         error_kw={"elinewidth": 0.8, "capsize": 2})
            down = ax.barh(i, -100 * f.share_down, height=0.7, color=color, hatch="////", edgecolor="white",
                           xerr=[[100 * (f.down_high - f.share_down)], [100 * (f.share_down - f.down_low)]],
                           error_kw={"elinewidth": 0.8, "capsize": 2})
            for patch in up.patches + down.patches:
                patch.set_gid(model_gid(f.model))
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_yticks(np.arange(len(pairs)), [f"{m} vs {b}" for m, b in pairs])
        ax.set_ylim(len(pairs) - 0.5, -0.5)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{abs(v):g}"))
        ax.set_xlabel("% of items flipped\n(left, hatched: 1 -> 0; right: 0 -> 1)")
        outcome = next(f.outcome for f in report.flips if f.task == task)
        ax.set_title(f"{_short(task)}\n({outcome})")
    handles, labels = method_handles(methods.get(m, "") for m, _ in pairs)
    return _finish(fig, "Item-level flips against the baseline (95% intervals)", handles, labels)


CAPTIONS = {
    "toxicity": "Toxic score (sum of the toxicity of every generation) and toxic count (generations with toxicity "
                "above 0.5) of each model, one panel per prompt set; bars are 95% bootstrap intervals over prompts.",
    "bias_counts": "StereoSet: how often each model's top choice is the stereotype, the anti-stereotype or the "
                   "unrelated option; WinoBias: pairs where the anti-stereotyped sentence is more likely.",
    "perplexity": "Each model's perplexity (log scale), and for head pruning the validation perplexity after each "
                  "pruning iteration against the attention heads left.",
    "perplexity_vs_metrics": "Each headline metric against perplexity; the dashed line is what a reference model "
                             "of that perplexity is predicted to score, so a point below it is less toxic or less "
                             "stereotyped than its perplexity alone predicts.",
    "generation_length": "Mean length of the generations per prompt, in tokens and characters, per prompt set.",
    "flips": "Share of items whose binary outcome changes from the baseline to the model: right of zero 0 -> 1, "
             "left (hatched) 1 -> 0, with exact 95% intervals.",
}

FIGURES = {
    "toxicity": toxicity,
    "bias_counts": bias_counts,
    "perplexity": perplexity,
    "perplexity_vs_metrics": perplexity_vs_metrics,
    "generation_length": generation_length,
    "flips": flips,
}


def draw_all(report) -> dict:
    """{name: matplotlib Figure} of every figure the report's data allows (a figure without data is left out)."""
    figures = {}
    with style():
        for name, draw in FIGURES.items():
            fig = draw(report)
            if fig is not None:
                figures[name] = fig
    return figures


def write_all(report, out_dir: str | Path) -> list[Path]:
    """Every figure as out_dir/NAME.png (300 dpi) and NAME.pdf; returns the PNG paths."""
    out_dir = Path(out_dir)
    return [save_figure(fig, out_dir / f"{name}.png")[0] for name, fig in draw_all(report).items()]
