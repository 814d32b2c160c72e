"""The report's figures as a paper would want them: one legend per figure, outside every panel; no text on top of
other text (the point labels of the perplexity panels included); a method has one colour in every figure; a
300-dpi PNG and a vector PDF of each. Measured on the rendered figures, not on the code's settings."""

import itertools
import struct

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from report_zoo import METHODS, build_zoo  # noqa: E402

from compress.report import build, figure_style, plots  # noqa: E402
from compress.report.label_placement import place_labels  # noqa: E402

ALL_FIGURES = {"toxicity", "bias_counts", "perplexity", "perplexity_vs_metrics", "generation_length", "flips"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return build.build_report(build_zoo(root), resamples=300)


@pytest.fixture(scope="module")
def figures(report):
    drawn = plots.draw_all(report)
    for fig in drawn.values():
        fig.canvas.draw()
    yield drawn
    for fig in drawn.values():
        plt.close(fig)


def _legends(fig) -> list:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def _box(text, renderer):
    if hasattr(text, "update_positions"):
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def _drawn_tick_labels(axis) -> list:
    low, high = sorted(axis.get_view_interval())
    span = high - low
    return [t.label1 for t in axis.get_major_ticks()
            if low - 1e-9 * span <= t.get_loc() <= high + 1e-9 * span and t.label1.get_visible()]


def _texts(fig) -> list:
    """Every piece of text the figure draws: titles, axis labels, tick labels in view, point labels, legends."""
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        texts += _drawn_tick_labels(ax.xaxis) + _drawn_tick_labels(ax.yaxis)
    for legend in _legends(fig):
        texts += legend.get_texts()
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), _box(t, renderer)) for t in _texts(fig)]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def test_every_figure_is_drawn(figures):
    assert set(figures) == ALL_FIGURES


def test_one_legend_per_figure_outside_every_panel(figures):
    for name, fig in figures.items():
        legends = _legends(fig)
        assert len(legends) == 1, (name, len(legends))
        renderer = fig.canvas.get_renderer()
        legend_box = legends[0].get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not legend_box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_title())


def test_no_two_texts_overlap(figures):
    for name, fig in figures.items():
        assert len(_texts(fig)) > 5, name  # the check really looked at the figure's texts
        assert overlapping_texts(fig) == [], name


def test_coincident_points_get_separate_labels():
    """Eight models on two points and a crowd of near ones: every name readable, each inside the panel."""
    fig, ax = plt.subplots(figsize=(4, 3))
    points = [(10.0, 1.0)] * 4 + [(10.5, 1.02)] * 4 + [(30.0 + i, 2.0 + 0.01 * i) for i in range(5)]
    ax.plot(*zip(*points), "o")
    ax.set_xscale("log")
    labels = [f"model-{i}" for i in range(len(points))]
    annotations = place_labels(ax, points, labels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [_box(a, renderer) for a in annotations]
    assert [a.get_text() for a in annotations] == labels
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    area = ax.get_window_extent(renderer)
    assert all(area.x0 <= b.x0 and b.x1 <= area.x1 and area.y0 <= b.y0 and b.y1 <= area.y1 for b in boxes)
    plt.close(fig)


def _artist_colour(artist) -> str:
    colour = artist.get_facecolor() if hasattr(artist, "get_facecolor") and not hasattr(artist, "get_xdata") \
        else artist.get_color()
    return to_hex(colour, keep_alpha=False)


def test_a_method_has_one_colour_in_every_figure(figures):
    colours: dict[str, set[str]] = {}
    seen_in = {name: set() for name in figures}
    for name, fig in figures.items():
        for artist in fig.findobj(lambda a: (a.get_gid() or "").startswith("model=")):
            model = artist.get_gid().removeprefix("model=")
            colours.setdefault(METHODS[model], set()).add(_artist_colour(artist))
            seen_in[name].add(METHODS[model])
    assert all(len(methods) >= 2 for methods in seen_in.values()), seen_in  # every figure shows several methods
    assert set(colours) == set(METHODS.values())
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # and different methods differ
    # Each legend's entry for a method has that method's colour.
    for name, fig in figures.items():
        (legend,) = _legends(fig)
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            method = text.get_text().split(" (")[0]
            if method in colours:
                assert {_artist_colour(handle)} == colours[method], (name, method)


def _png_dpi(data: bytes) -> tuple[float, float]:
    """From the PNG's pHYs chunk (pixels per metre), read by hand."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position = 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"pHYs":
            x, y, unit = struct.unpack(">IIB", data[position + 8:position + 17])
            assert unit == 1  # metres
            return x * 0.0254, y * 0.0254
        position += 12 + length
    raise AssertionError("no pHYs chunk")


def test_each_figure_is_a_300_dpi_png_and_a_vector_pdf(report, tmp_path):
    written = plots.write_all(report, tmp_path / "plots")
    assert {p.stem for p in written} == ALL_FIGURES
    for png in written:
        assert _png_dpi(png.read_bytes()) == pytest.approx((300, 300), abs=0.5), png.name
        pdf = png.with_suffix(".pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF"), png.name
        assert b"/Subtype /Image" not in pdf, png.name  # drawn as vectors, not a picture inside a PDF
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("span", [(12_000, 45_000), (28_000, 30_500), (20, 90), (26, 4.6e5), (1e4, 6e7)])
def test_log_axis_labels_neither_crowd_nor_vanish(span):
    """Spans the demo and the paper's study give: less than a decade (the demo's 1.2e4-4.5e4 crowded the old
    labels), nearly one perplexity (quantized models beside their teacher), one decade, several."""
    fig, ax = plt.subplots(figsize=(plots.PANEL_WIDTH, 2))
    ax.plot(span, [0, 1], "o")
    ax.set_xscale("log")
    ax.autoscale_view()
    plots._log_axis(ax.xaxis)
    fig.tight_layout()
    fig.canvas.draw()
    labels = [t for t in _drawn_tick_labels(ax.xaxis) if t.get_text()]
    assert len(labels) >= 2, [t.get_text() for t in labels]
    assert overlapping_texts(fig) == []
    plt.close(fig)


def test_a_tall_figures_title_stays_clear_of_its_panels():
    """Four rows of panels (the demo's perplexity panels, flips and bias counts): the figure's title above all."""
    fig, axes = plots._grid(10, 11, columns=3)
    for ax in axes:
        ax.set_title("panel title")
        ax.plot([0, 1], [0, 1])
    plots._finish(fig, "A figure title as long as the report's", *figure_style.method_handles(["original"]))
    fig.canvas.draw()
    assert len(_texts(fig)) > 10 and overlapping_texts(fig) == []
    plt.close(fig)
