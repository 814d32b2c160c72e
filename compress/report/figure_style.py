"""What every figure of the report shares: one colour per way of making a model, one legend below the panels,
and the files (a 300-dpi PNG and a vector PDF beside it, each written whole or not at all)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from compress.common.atomic_files import replaced_atomically  # noqa: E402

# The one method -> colour map (ModelInfo.method names), so a method has the same colour in every figure.
# Colour-blind-safe (Okabe-Ito), in the order methods are listed.
METHOD_COLORS = {
    "original": "#000000",
    "distillation": "#0072B2",
    "head pruning": "#E69F00",
    "layer dropping": "#009E73",
    "quantization": "#CC79A7",
    "sparsity": "#D55E00",
}
OTHER_COLOR = "#999999"  # a method this map does not know
METHOD_LABELS = {"original": "original (uncompressed)"}
DPI = 300
FONT_SIZE = 8

# Applied while the report draws and saves (`style()`), never to the rest of the process. TrueType fonts in the
# PDF (fonttype 42) keep its text editable and searchable.
STYLE = {"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1, "axes.labelsize": FONT_SIZE,
         "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1, "legend.fontsize": FONT_SIZE,
         "figure.titlesize": FONT_SIZE + 2, "axes.spines.top": False, "axes.spines.right": False,
         "pdf.fonttype": 42}


def style():
    """The report's matplotlib settings, as a context."""
    return plt.rc_context(STYLE)


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, OTHER_COLOR)


def method_handles(methods) -> tuple[list, list[str]]:
    """Legend entries for the given methods, in the map's order (unknown methods last)."""
    present = list(dict.fromkeys(methods))
    ordered = [m for m in METHOD_COLORS if m in present] + [m for m in present if m not in METHOD_COLORS]
    handles = [Line2D([], [], marker="s", linestyle="", markersize=7, color=method_color(m)) for m in ordered]
    return handles, [METHOD_LABELS.get(m, m) for m in ordered]


def figure_legend(fig, handles: list, labels: list[str], columns: int = 4) -> None:
    """The figure's one legend, below every panel: it never covers data. Call after the layout is final."""
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(columns, len(labels)),
               frameon=False, bbox_transform=fig.transFigure)


def save_figure(fig, png_path: Path) -> list[Path]:
    """png_path at 300 dpi and the same figure as a vector PDF beside it; the figure is closed."""
    png_path = Path(png_path)
    pdf_path = png_path.with_suffix(".pdf")
    try:
        for path in (png_path, pdf_path):
            with replaced_atomically(path, suffix=path.suffix) as tmp, style():
                fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip("."))
    finally:
        plt.close(fig)
    return [png_path, pdf_path]
