"""Name the points of a scatter without two names on top of each other: a greedy placement on rendered text.

Each label tries offsets around its point, nearest first, and takes the first whose rendered box lies inside the
axes and overlaps neither a label already placed nor any point's marker or error bar; a label set away from its
point gets a thin leader line. Models with the same value (a student identical to its teacher) sit on one point
and still get one readable name each.
"""

from __future__ import annotations

import math

from matplotlib.text import Text
from matplotlib.transforms import Bbox

RADII = (6, 10, 16, 24, 34, 46, 60)  # points between a marker and its label's nearest corner
DIRECTIONS = 12
LEADER_FROM = 12  # radius (points) from which a label gets a leader line to its point
MARKER_HALF = 3.0  # half the width (points) of the box a marker is kept clear of


def _candidate_offsets():
    for radius in RADII:
        for k in range(DIRECTIONS):
            angle = 2 * math.pi * k / DIRECTIONS + math.pi / 4  # up-right first
            yield radius, radius * math.cos(angle), radius * math.sin(angle)


def _alignment(dx: float, dy: float) -> tuple[str, str]:
    """Text alignment that keeps the label's box on the far side of the offset from its point."""
    ha = "left" if dx > 1e-6 else "right" if dx < -1e-6 else "center"
    va = "bottom" if dy > 1e-6 else "top" if dy < -1e-6 else "center"
    return ha, va


GAP = 1.5  # points kept free around a label, so two names never touch


def _overlaps(box: Bbox, others: list[Bbox], gap: float = 0.0) -> bool:
    grown = box.expanded(1, 1).padded(gap) if gap else box
    return any(grown.overlaps(other) for other in others)


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize="x-small",
                 error_bars: list[tuple[float, float, float]] = ()) -> list:
    """Annotate each (x, y) of `points` (data coordinates) with its label; returns the annotations.

    `error_bars` are vertical (x, y_low, y_high) segments the labels also keep clear of. Call once the axes'
    limits and the figure's layout are final: the boxes are measured with the figure's renderer.
    """
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settle a pending autoscale, so the data -> pixel transform is final
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0
    anchors = ax.transData.transform(points) if len(points) else []
    obstacles = [_square(px, py, MARKER_HALF * scale) for px, py in anchors]
    for x, low, high in error_bars:
        if all(math.isfinite(v) for v in (x, low, high)):
            (px, p_low), (_, p_high) = ax.transData.transform([(x, low), (x, high)])
            obstacles.append(Bbox.from_extents(px - scale, min(p_low, p_high), px + scale, max(p_low, p_high)))
    placed: list[Bbox] = []
    annotations = []
    for (px, py), xy, label in zip(anchors, points, labels):
        width, height = _size(ax, label, fontsize, renderer)
        chosen = (RADII[0], RADII[0], RADII[0])  # no free place: the nearest, so a test will say so
        for radius, dx, dy in _candidate_offsets():
            box = _box_at(px + dx * scale, py + dy * scale, width, height, *_alignment(dx, dy))
            if _inside(box, area) and not _overlaps(box, placed, GAP * scale) and not _overlaps(box, obstacles):
                chosen = (radius, dx, dy)
                break
        radius, dx, dy = chosen
        text = _annotate(ax, label, xy, dx, dy, radius, fontsize)
        placed.append(text_box(text, renderer))
        annotations.append(text)
    return annotations


def _square(px: float, py: float, half: float) -> Bbox:
    return Bbox.from_extents(px - half, py - half, px + half, py + half)


def _size(ax, label: str, fontsize, renderer) -> tuple[float, float]:
    """The label's rendered width and height in pixels (the same wherever it is put)."""
    probe = ax.annotate(label, (0, 0), fontsize=fontsize)
    box = text_box(probe, renderer)
    probe.remove()
    return box.width, box.height


def _box_at(x: float, y: float, width: float, height: float, ha: str, va: str) -> Bbox:
    """The box of a text anchored at pixel (x, y) with the given alignment (matplotlib aligns the box itself)."""
    x0 = x if ha == "left" else x - width if ha == "right" else x - width / 2
    y0 = y if va == "bottom" else y - height if va == "top" else y - height / 2
    return Bbox.from_bounds(x0, y0, width, height)


def text_box(text, renderer) -> Bbox:
    """The rendered box of a text's letters alone (an annotation's own extent includes its leader line)."""
    if hasattr(text, "update_positions"):  # an annotation finds where its offset puts it only when asked
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def _inside(box: Bbox, area: Bbox) -> bool:
    return area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1


def _annotate(ax, label: str, xy, dx: float, dy: float, radius: float, fontsize):
    ha, va = _alignment(dx, dy)
    leader = {"arrowstyle": "-", "color": "#777777", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3} \
        if radius >= LEADER_FROM else None
    return ax.annotate(label, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                       annotation_clip=False, arrowprops=leader)
