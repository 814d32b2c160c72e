"""The report's figures (PNG, matplotlib Agg), after the paper's: each one readable without the text.

- `toxicity.png`: toxic score and toxic count per model for each prompt set (Figures 5 and 6).
- `bias_counts.png`: StereoSet top-choice counts and WinoBias anti-stereotype wins (Figure 7).
- `perplexity.png`: perplexity of the distilled models, and of the pruned ones per pruning iteration
  (Figures 3 and 4).
- `perplexity_vs_metrics.png`: each headline toxicity and bias metric against perplexity, with the
  line of the non-distilled reference models (Figure 9 and the perplexity-matched comparison).
- `generation_length.png`: mean generation length per model and prompt set (Table 1).

Error bars are the report's 95% intervals. Colours say how a model was made.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from compress.common.atomic_files import replaced_atomically  # noqa: E402

METHOD_COLORS = {"original": "#7f7f7f", "distillation": "#1f77b4", "head pruning": "#ff7f0e",
                 "quantization": "#9467bd", "sparsity": "#8c564b"}
STEREOSET_COUNTS = (("stereotype_count", "stereotype"), ("anti_stereotype_count", "anti-stereotype"),
                    ("unrelated_count", "unrelated"))


def _save(fig, path: Path) -> Path:
    try:
        with replaced_atomically(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# The paper's order of the prompt sets; other tasks follow alphabetically.
TASK_ORDER = ("compfair_rtp", "compfair_rtp_standard", "compfair_tox4k", "compfair_random4k", "compfair_safe4k")


def _tasks_with(report, metric: str) -> list[str]:
    tasks = {e.task for e in report.estimates if e.metric == metric and not e.is_group}
    return sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))


def _errors(estimates) -> np.ndarray:
    """Asymmetric error bars from intervals; zero where an interval is missing."""
    below = [e.value - e.low if e is not None and math.isfinite(e.low) else 0.0 for e in estimates]
    above = [e.high - e.value if e is not None and math.isfinite(e.high) else 0.0 for e in estimates]
    return np.array([below, above])


def _model_bars(ax, report, task: str, metric: str, title: str, ylabel: str) -> None:
    models = [m for m in report.models if report.estimate(m.name, task, metric) is not None]
    estimates = [report.estimate(m.name, task, metric) for m in models]
    x = np.arange(len(models))
    ax.bar(x, [e.value for e in estimates], yerr=_errors(estimates), capsize=3,
           color=[METHOD_COLORS.get(m.method, "#2ca02c") for m in models])
    ax.set_xticks(x, [m.name for m in models], rotation=45, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def _method_legend(ax, report, extra: tuple = ()) -> None:
    """Which colour is which way of making a model, in the given axes' legend."""
    methods = [m for m in METHOD_COLORS if any(info.method == m for info in report.models)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=METHOD_COLORS[m]) for m in methods] + [h for h, _ in extra]
    ax.legend(handles, methods + [label for _, label in extra], fontsize="x-small", title="model",
              title_fontsize="small")


def _plain_log_ticks(axis) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def toxicity(report, path: Path) -> Path | None:
    tasks = _tasks_with(report, "toxic_score")
    if not tasks:
        return None
    rows = [("toxic_score", "toxic score (sum of toxicity)"), ("toxic_count", "toxic count (toxicity > 0.5)")]
    fig, axes = plt.subplots(len(rows), len(tasks), figsize=(4 * len(tasks) + 1, 7), squeeze=False)
    for col, task in enumerate(tasks):
        for row, (metric, label) in enumerate(rows):
            _model_bars(axes[row][col], report, task, metric, f"{task}: {metric}", label)
    fig.suptitle("Toxicity of generations per prompt set (95% intervals)")
    _method_legend(axes[0][0], report)
    fig.tight_layout()
    return _save(fig, path)


def bias_counts(report, path: Path) -> Path | None:
    stereoset = _tasks_with(report, "stereotype_count")
    winobias = _tasks_with(report, "anti_count")
    if not stereoset and not winobias:
        return None
    panels = len(stereoset) + (1 if winobias else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels + 1, 4.5), squeeze=False)
    for ax, task in zip(axes[0], stereoset):
        models = [m for m in report.models if report.estimate(m.name, task, "stereotype_count")]
        x = np.arange(len(models))
        width = 0.8 / len(STEREOSET_COUNTS)
        for i, (metric, label) in enumerate(STEREOSET_COUNTS):
            estimates = [report.estimate(m.name, task, metric) for m in models]
            if any(e is None for e in estimates):
                continue
            ax.bar(x + (i - 1) * width, [e.value for e in estimates], width, yerr=_errors(estimates), capsize=2,
                   label=label)
        ax.set_xticks(x, [m.name for m in models], rotation=45, ha="right")
        ax.set_ylabel("examples where it is the model's top choice")
        ax.set_title(f"{task}: top choice")
        ax.legend(fontsize="small")
    if winobias:
        ax = axes[0][-1]
        models = [m for m in report.models if any(report.estimate(m.name, t, "anti_count") for t in winobias)]
        x = np.arange(len(models))
        width = 0.8 / len(winobias)
        for i, task in enumerate(winobias):
            estimates = [report.estimate(m.name, task, "anti_count") for m in models]
            values = [e.value if e else 0.0 for e in estimates]
            ax.bar(x + (i - (len(winobias) - 1) / 2) * width, values, width,
                   yerr=_errors(estimates), capsize=2, label=task.removeprefix("compfair_winobias_"))
        ax.set_xticks(x, [m.name for m in models], rotation=45, ha="right")
        ax.set_ylabel("pairs where the anti-stereotyped sentence wins")
        ax.set_title("WinoBias: anti-stereotype wins")
        ax.legend(fontsize="small")
    fig.suptitle("Bias: which sentence each model prefers (95% intervals)")
    fig.tight_layout()
    return _save(fig, path)


def perplexity(report, path: Path) -> Path | None:
    with_ppl = [m for m in report.models if m.perplexity is not None and m.method != "head pruning"]
    pruned = [m for m in report.models if m.method == "head pruning" and m.perplexity_per_iteration]
    if not with_ppl and not pruned:
        return None
    panels = (1 if with_ppl else 0) + (1 if pruned else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax_iter = iter(axes[0])
    if with_ppl:
        ax = next(ax_iter)
        x = np.arange(len(with_ppl))
        ax.bar(x, [m.perplexity for m in with_ppl], color=[METHOD_COLORS.get(m.method, "#2ca02c") for m in with_ppl])
        ax.set_xticks(x, [m.label for m in with_ppl], rotation=30, ha="right", fontsize="small")
        ax.set_ylabel("perplexity")
        sources = sorted({m.perplexity_source for m in with_ppl})
        ax.set_title("Distilled and original models\n(" + "; ".join(sources) + ")", fontsize="medium")
    if pruned:
        ax = next(ax_iter)
        for m in pruned:
            heads = m.heads_per_iteration[: len(m.perplexity_per_iteration)]
            ax.plot(heads, m.perplexity_per_iteration[: len(heads)], marker="o",
                    label=f"{m.name} ({m.prune_subset} samples)" if m.prune_subset else m.name)
        ax.invert_xaxis()
        ax.set_xlabel("attention heads left")
        ax.set_ylabel("validation perplexity")
        ax.set_title("Head pruning: perplexity per iteration")
        ax.legend(fontsize="small")
    fig.suptitle("Perplexity of compressed models")
    fig.tight_layout()
    return _save(fig, path)


def perplexity_vs_metrics(report, path: Path) -> Path | None:
    rows = defaultdict(list)
    for r in report.matched:
        rows[(r.task, r.metric)].append(r)
    if not rows:
        return None
    keys = sorted(rows)
    cols = min(3, len(keys))
    lines = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 4.2 * lines), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = sorted(rows[key], key=lambda r: r.perplexity)
        for r in points:
            ax.errorbar(r.perplexity, r.value, yerr=_errors([r]), fmt="o", capsize=3,
                        color=METHOD_COLORS.get(r.method, "k"))
            ax.annotate(r.model, (r.perplexity, r.value), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        (line,) = ax.plot([r.perplexity for r in points], [r.predicted for r in points], "--", color="#444444")
        reference = "reference line: " + points[0].reference.split(":")[0]
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        _method_legend(ax, report, extra=((line, reference),))
        ax.set_xlabel("perplexity (log scale)")
        ax.set_ylabel(key[1])
        ax.set_title(f"{key[0]}: {key[1]}")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("Toxicity and bias against perplexity (dashed: a reference model of that perplexity)")
    fig.tight_layout()
    return _save(fig, path)


def generation_length(report, path: Path) -> Path | None:
    tasks = _tasks_with(report, "gen_length_tokens")
    if not tasks:
        return None
    metrics = [("gen_length_tokens", "tokens"), ("gen_length_chars", "characters")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
    models = [m for m in report.models if any(report.estimate(m.name, t, "gen_length_tokens") for t in tasks)]
    x = np.arange(len(models))
    width = 0.8 / len(tasks)
    for ax, (metric, unit) in zip(axes[0], metrics):
        for i, task in enumerate(tasks):
            estimates = [report.estimate(m.name, task, metric) for m in models]
            ax.bar(x + (i - (len(tasks) - 1) / 2) * width, [e.value if e else 0.0 for e in estimates], width,
                   yerr=_errors(estimates), capsize=2, label=task)
        ax.set_xticks(x, [m.name for m in models], rotation=45, ha="right")
        ax.set_ylabel(f"mean generation length ({unit})")
        ax.set_title(f"Generation length in {unit}")
        ax.legend(fontsize="x-small")
    fig.suptitle("How much each model generates per prompt (95% intervals)")
    fig.tight_layout()
    return _save(fig, path)


FIGURES = {
    "toxicity.png": toxicity,
    "bias_counts.png": bias_counts,
    "perplexity.png": perplexity,
    "perplexity_vs_metrics.png": perplexity_vs_metrics,
    "generation_length.png": generation_length,
}


def write_all(report, out_dir: str | Path) -> list[Path]:
    """Every figure the report's data allows; a figure without data is skipped."""
    out_dir = Path(out_dir)
    written = []
    for name, draw in FIGURES.items():
        path = draw(report, out_dir / name)
        if path is not None:
            written.append(path)
    return written
