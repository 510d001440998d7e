"""Bar charts as inline SVG: labels fitted to the width, ticks, intervals and undefined values."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from counterfactual_lab.report.markup import escaped
from counterfactual_lab.report.sentences import number

# Charts are drawn at the page's content width (body max-width minus padding) and scaled by CSS
# (``svg.chart``) to whatever width the window has, so text keeps its size on a full page.
CHART_WIDTH = 1060


CHART_FONT_PX = 11


MIN_PLOT_PX = 260


_LABEL_SHARE = 0.4  # a label column never takes more than this share of the chart


_PAD = 8


@dataclass(frozen=True)
class Bar:
    """One bar: a label, a point estimate, an optional interval, and why it is undefined when it is."""

    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    note: str | None = None  # the reason a null value is undefined (metrics.parquet ``note``)


def _finite(v: float | None) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


# Widths in em of a sans-serif at its widest (Arial, Segoe UI, Roboto, DejaVu Sans), rounded up,
# so an estimate is never narrower than the browser draws the text.
_NARROW = set("iljI.,:;'!|` ")


_WIDE = set("mwMW@%&")


def text_width(text: str, font_px: float = CHART_FONT_PX) -> float:
    """A conservative estimate of ``text``'s rendered width in px (no font metrics offline).

    Narrow ASCII (``i l . , :`` space) 0.4 em, wide (``m w M W @ % &``) 1.0 em, other ASCII
    0.68 em (Arial's digits and lower case are 0.5–0.56 em), anything else (→, ·, accents, CJK) 1.1 em.
    """
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.4
        elif ch in _WIDE:
            em += 1.0
        elif ch.isascii():
            em += 0.68
        else:
            em += 1.1
    return em * font_px


def fit_text(text: str, max_px: float, font_px: float = CHART_FONT_PX) -> str:
    """``text``, cut with an ellipsis where needed so that :func:`text_width` is at most ``max_px``."""
    if text_width(text, font_px) <= max_px:
        return text
    cut = text
    while cut and text_width(cut + "…", font_px) > max_px:
        cut = cut[:-1]
    return cut.rstrip() + "…" if cut else ""


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_labels(ticks: list[float], fmt: Callable[[float | None], str]) -> list[str]:
    """Axis labels with one number of decimals for the whole axis (0, 0.2, …, 1.0, not 0.2 … 1.00)."""
    if fmt is not number or len(ticks) < 2:
        return [fmt(t) for t in ticks]
    step = min(b - a for a, b in zip(ticks, ticks[1:]))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10**decimals, 6) % 1:  # a 2.5 step needs one more decimal
        decimals += 1
    return [f"{t:.{decimals}f}" for t in ticks]


def _value_text(bar: Bar, fmt: Callable[[float | None], str]) -> str:
    """'0.23 [0.19, 0.27] n=120': the value column of a defined bar."""
    interval = f" [{fmt(bar.low)}, {fmt(bar.high)}]" if _finite(bar.low) and _finite(bar.high) else ""
    n = f" n={bar.n}" if bar.n is not None else ""
    return f"{fmt(bar.value)}{interval}{n}"


def _undefined_text(bar: Bar) -> str:
    """'undefined: <reason>' for a bar whose value is null or NaN."""
    reason = bar.note or "no value was computed (no reason recorded)"
    n = f" (n={bar.n})" if bar.n is not None else ""
    return f"undefined: {reason}{n}"


def bar_chart_svg(
    bars: Sequence[Bar],
    *,
    fmt: Callable[[float | None], str] = number,
    domain: tuple[float, float] | None = None,
    width: int = CHART_WIDTH,
) -> str:
    """A horizontal bar chart with interval whiskers, as inline SVG that scales to the page width.

    The axis spans ``domain`` widened to hold every bar and whisker, and always includes 0,
    so negative values (signed gaps, MinSkew) extend left of the zero line. Every text is
    measured (:func:`text_width`): the label column is as wide as the longest label (at
    most 40% of ``width``; longer labels are cut, the full one is the row's tooltip), the
    value column as wide as the longest value, and the viewBox grows when the plot would be
    narrower than ``MIN_PLOT_PX``, so no text is ever clipped. A bar whose value is null or
    NaN is drawn as the words "undefined: <note>"; a chart whose values are all 0 says
    "0 for every group" above its rows.
    """
    row_h, axis_h = 22, 24
    defined = [b for b in bars if _finite(b.value)]
    all_zero = bool(defined) and all(
        b.value == 0 and all(v in (None, 0) or not _finite(v) for v in (b.low, b.high)) for b in defined
    )
    header = ("0 for every group" if len(defined) == len(bars) else "0 for every group with a value") if all_zero else None
    top = 8 + (row_h if header else 0)

    label_w = min(max((text_width(b.label) for b in bars), default=0.0) + 2 * _PAD, width * _LABEL_SHARE)
    value_texts = [_value_text(b, fmt) if _finite(b.value) else "" for b in bars]
    value_w = max((text_width(t) for t in value_texts), default=0.0) + 2 * _PAD
    points = [b.value for b in defined] + [v for b in defined for v in (b.low, b.high) if _finite(v)]
    lo = min([0.0, *points, *(domain[:1] if domain else [])])
    hi = max([0.0, *points, *(domain[1:] if domain else [])])
    if hi == lo:
        hi = lo + 1.0
    ticks = _nice_ticks(lo, hi)
    tick_labels = _tick_labels(ticks, fmt)
    # Tick labels are centred on their tick: the end ones need half their width beside the plot.
    if ticks:
        label_w = max(label_w, text_width(tick_labels[0]) / 2 + _PAD)
        value_w = max(value_w, text_width(tick_labels[-1]) / 2 + _PAD)
    total_w = max(float(width), label_w + MIN_PLOT_PX + value_w)
    plot_w = total_w - label_w - value_w
    height = top + row_h * len(bars) + axis_h
    total_w = math.ceil(total_w)

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{total_w}" height="{height}" '
        f'viewBox="0 0 {total_w} {height}" preserveAspectRatio="xMinYMin meet">'
    ]
    axis_y = top + row_h * len(bars)
    if header:
        out.append(f'<text x="{label_w:.1f}" y="{8 + row_h / 2 + 4:.1f}" fill="#57606a" font-style="italic">{escaped(header)}</text>')
    for tick, tick_label in zip(ticks, tick_labels):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{axis_y}" stroke="#eaeef2"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 15}" text-anchor="middle" fill="#57606a">{escaped(tick_label)}</text>')
    for i, bar in enumerate(bars):
        y = top + i * row_h
        mid = y + row_h / 2
        label = fit_text(bar.label, label_w - 2 * _PAD)
        title = f"<title>{escaped(bar.label)}</title>" if label != bar.label else ""
        out.append(f'<text x="{label_w - _PAD:.1f}" y="{mid + 4:.1f}" text-anchor="end">{title}{escaped(label)}</text>')
        if not _finite(bar.value):
            reason = _undefined_text(bar)
            shown = fit_text(reason, total_w - label_w - 2 * _PAD)
            tip = f"<title>{escaped(bar.label)}: {escaped(reason)}</title>" if shown != reason else ""
            out.append(f'<text x="{label_w + _PAD:.1f}" y="{mid + 4:.1f}" fill="#57606a" font-style="italic">{tip}{escaped(shown)}</text>')
            continue
        x0, x1 = sorted((x(0), x(bar.value)))
        colour = "#0969da" if bar.value >= 0 else "#bf8700"
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 8}" fill="{colour}">'
            f"<title>{escaped(bar.label)}: {escaped(value_texts[i])}</title></rect>"
        )
        if _finite(bar.low) and _finite(bar.high):
            wl, wh = x(bar.low), x(bar.high)
            out.append(
                f'<path d="M{wl:.1f},{mid:.1f}H{wh:.1f}M{wl:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                f'M{wh:.1f},{mid - 5:.1f}V{mid + 5:.1f}" stroke="#1f2328" stroke-width="1.3" fill="none"/>'
            )
        out.append(f'<text x="{label_w + plot_w + _PAD:.1f}" y="{mid + 4:.1f}">{escaped(value_texts[i])}</text>')
    out.append(f'<line x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{axis_y}" stroke="#1f2328"/>')
    out.append("</svg>")
    return "".join(out)
