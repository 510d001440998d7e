"""The report's charts, drawn by matplotlib offline into inline SVG.

* :func:`interval_svg` — a forest plot: one row per estimate (a point and its interval), with
  what the row is judged against drawn behind it: its control's interval (a grey bar at the
  row's height) and the ``min_effect`` zone (a pale yellow bar: differences smaller than the
  smallest one the audit calls). Called rows are red diamonds, confounded ones amber squares.
  A row without a value says "undefined" and why, instead of vanishing.
* :func:`trend_svg` — one series over runs (value and interval per run, coloured by the run's
  verdict), split by dashed lines where what makes runs comparable changed.

Why matplotlib (README, "The HTML report"): the maintained standard for statistical plots, it
draws in-process without a browser or a JavaScript engine, its SVG needs no script in the page,
and it escapes text. Figures are ``matplotlib.figure.Figure`` objects (no pyplot: no global
figure registry) drawn inside ``rc_context`` (a caller's matplotlib settings are left alone),
with text kept as ``<text>`` (small, searchable, selectable), ``$`` never read as mathtext, and
ids salted per chart so the same run renders byte-identical and two charts on a page never share
an id. This module's SVG is the only markup the templates take unescaped (``Markup``).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

# Drawn at the width they are shown at (CSS px at 96 per inch), so text is not scaled down.
CHART_WIDTH_PX = 400
ROW_HEIGHT_IN = 0.22
LABEL_CHARS = 40  # longer row labels are cut (the full text is in the metrics table)
NOTE_CHARS = 40
CALLED, CONFOUNDED = "called", "confounded"

_COLOURS = {CALLED: "#cf222e", CONFOUNDED: "#bf8700", "": "#1f2328"}
_MARKERS = {CALLED: "D", CONFOUNDED: "s", "": "o"}
_CONTROL_COLOUR = "#c5ccd4"
_ZONE_COLOUR = "#fff1b8"
_RC = {
    "svg.fonttype": "none",  # <text> elements, not glyph paths
    "text.parse_math": False,  # a label with two $ signs stays text
    "font.family": "sans-serif",
    "font.size": 8,
    "axes.edgecolor": "#8c959f",
    "axes.linewidth": 0.6,
    "xtick.color": "#57606a",
    "ytick.color": "#1f2328",
    "xtick.major.width": 0.6,
    "ytick.major.size": 0,
}


@dataclass(frozen=True)
class IntervalRow:
    """One row of a forest plot. ``control_low/high``: the interval of what the row is compared
    with, drawn behind it; ``zone_low/high``: the ``min_effect`` zone; ``note``: why an undefined
    row has no value."""

    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    emphasis: str = ""  # CALLED, CONFOUNDED or ""
    control_low: float | None = None
    control_high: float | None = None
    zone_low: float | None = None
    zone_high: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class TrendPoint:
    """One run's value of a series: its tick label (the run's date), value, interval and verdict."""

    tick: str
    value: float | None
    low: float | None = None
    high: float | None = None
    emphasis: str = ""


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def cut(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _svg(figure, salt: str) -> Markup:
    """The figure as an inline ``<svg>`` element (no XML prolog), ids salted by ``salt``."""
    # here, not at the top: matplotlib stays out of `import counterfactual_lab` and of cflab's start-up
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # an RDF block nobody reads
    # matplotlib names elements figure_1, axes_1, …: prefixed, two charts on a page never share an id.
    prefix = "c" + hashlib.sha256(salt.encode("utf-8")).hexdigest()[:10]
    text = re.sub(r'(id="|url\(#|href="#)', rf"\g<1>{prefix}-", text)
    return Markup(text.replace("<svg ", '<svg class="chart" role="img" ', 1))


def _salt(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:12]


def _figure(width_px: int, height_in: float):
    # here, not at the top: matplotlib stays out of `import counterfactual_lab` and of cflab's start-up
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / 96.0, height_in), dpi=96, layout="constrained")


def _percent_axis(axis) -> None:
    # here, not at the top: matplotlib stays out of `import counterfactual_lab` and of cflab's start-up
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=None))


def interval_svg(
    rows: Sequence[IntervalRow],
    *,
    reference: float | None = None,
    share: bool = False,
    width_px: int = CHART_WIDTH_PX,
    salt: str = "",
) -> Markup:
    """A forest plot of ``rows`` (first row on top) as inline SVG (module doc).

    ``reference``: the no-effect value, drawn as a dotted line; ``share``: the axis is in percent.
    """
    # here, not at the top: matplotlib stays out of `import counterfactual_lab` and of cflab's start-up
    from matplotlib import rc_context

    # here, not at the top: as above
    from matplotlib.transforms import blended_transform_factory

    with rc_context({**_RC}):
        figure = _figure(width_px, ROW_HEIGHT_IN * max(len(rows), 1) + 0.45)
        ax = figure.add_subplot()
        ys = list(range(len(rows)))
        spans: list[float] = [] if reference is None else [reference]
        for y, row in zip(ys, rows):
            if _finite(row.zone_low) and _finite(row.zone_high):
                ax.barh(y, row.zone_high - row.zone_low, left=row.zone_low, height=0.92, color=_ZONE_COLOUR,
                        linewidth=0, zorder=0)
                spans += [row.zone_low, row.zone_high]
            if _finite(row.control_low) and _finite(row.control_high):
                ax.barh(y, max(row.control_high - row.control_low, 1e-12), left=row.control_low, height=0.55,
                        color=_CONTROL_COLOUR, linewidth=0, zorder=1)
                spans += [row.control_low, row.control_high]
            if not _finite(row.value):
                continue
            colour, marker = _COLOURS.get(row.emphasis, "#1f2328"), _MARKERS.get(row.emphasis, "o")
            if _finite(row.low) and _finite(row.high):
                ax.plot([row.low, row.high], [y, y], color=colour, linewidth=1.2, zorder=2, solid_capstyle="butt")
                spans += [row.low, row.high]
            ax.plot([row.value], [y], marker=marker, color=colour, markersize=4.5 if marker == "D" else 4, zorder=3,
                    linestyle="none")
            spans.append(row.value)
        low, high = (min(spans), max(spans)) if spans else (0.0, 1.0)
        pad = (high - low) * 0.06 or max(abs(high), 1.0) * 0.05
        ax.set_xlim(low - pad, high + pad)
        if reference is not None:
            ax.axvline(reference, color="#57606a", linewidth=0.8, linestyle=":", zorder=1)
        text_at = blended_transform_factory(ax.transAxes, ax.transData)
        for y, row in zip(ys, rows):
            if not _finite(row.value):
                ax.text(0.02, y, cut(f"undefined: {row.note or 'no value'}", NOTE_CHARS), transform=text_at,
                        va="center", ha="left", color="#57606a", fontstyle="italic", fontsize=7, clip_on=True)
        ax.set_yticks(ys, [cut(row.label) for row in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.grid(axis="x", color="#eaeef2", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if share:
            _percent_axis(ax.xaxis)
        ax.tick_params(axis="both", labelsize=7.5)
        return _svg(figure, salt or _salt("interval", [r.label for r in rows]))


def trend_svg(points: Sequence[TrendPoint], *, breaks: Sequence[int] = (), share: bool = False,
              width_px: int = CHART_WIDTH_PX, salt: str = "") -> Markup:
    """One series over runs, oldest left; a dashed line before each index in ``breaks`` (module doc)."""
    # here, not at the top: matplotlib stays out of `import counterfactual_lab` and of cflab's start-up
    from matplotlib import rc_context

    with rc_context({**_RC}):
        figure = _figure(width_px, 1.9)
        ax = figure.add_subplot()
        xs = list(range(len(points)))
        for x, point in zip(xs, points):
            if not _finite(point.value):
                continue
            colour, marker = _COLOURS.get(point.emphasis, "#1f2328"), _MARKERS.get(point.emphasis, "o")
            if _finite(point.low) and _finite(point.high):
                ax.plot([x, x], [point.low, point.high], color=colour, linewidth=1.2, zorder=2)
            ax.plot([x], [point.value], marker=marker, color=colour, markersize=4.5, zorder=3, linestyle="none")
        defined = [(x, p.value) for x, p in zip(xs, points) if _finite(p.value)]
        if len(defined) > 1:
            ax.plot([x for x, _ in defined], [v for _, v in defined], color="#8c959f", linewidth=0.7, zorder=1)
        for index in breaks:
            ax.axvline(index - 0.5, color="#57606a", linewidth=0.8, linestyle="--", zorder=1)
        ax.set_xticks(xs, [cut(p.tick, 16) for p in points], rotation=30, ha="right")
        ax.set_xlim(-0.5, max(len(points) - 0.5, 0.5))
        ax.grid(axis="y", color="#eaeef2", linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if share:
            _percent_axis(ax.yaxis)
        ax.tick_params(axis="both", labelsize=7)
        return _svg(figure, salt or _salt("trend", [p.tick for p in points]))
