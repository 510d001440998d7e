"""``report.html``: the human report of one run, one self-contained file.

Nothing is fetched when it opens: images are inlined as base64 PNG data URIs, charts are
inline SVG drawn here, styles are inline, and there is no JavaScript. It can be mailed,
attached to a ticket, or opened from S3 offline.

A failed run's report opens with a banner saying so (``run_failure.failure_banner``).
The first line of the visible body (after that banner) names the models; for tiny random-weight models it also
says the numbers mean nothing. Every piece of dataset text (captions, ids, reasons, queries)
is untrusted input and goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import polars as pl

from counterfactual_lab.findings import (
    headline_findings,
    metric_k,
    metric_kind,
    models_line,
    number,
    percent,
)
from counterfactual_lab.manifest import ROW_ACCOUNTING_KEYS, check_row_accounting
from counterfactual_lab.run_failure import failure_banner
from counterfactual_lab.storage import read_image

THUMBNAIL_PX = 256

# Bar charts drawn for these metric kinds, in this order: (kind, title, value is a share, axis).
# Metrics bounded by [0, 1] keep the whole axis so small gaps are not drawn as large ones.
_BAR_CHARTS = (
    ("flip_rate", "Counterfactual flip rate: share of pairs whose top-1 label changes", True, (0.0, 1.0)),
    ("demographic_parity_difference", "Demographic parity difference of predicted labels across groups", False, (0.0, 1.0)),
    ("demographic_parity_ratio", "Demographic parity ratio (1 = parity)", False, (0.0, 1.0)),
    ("equalized_odds_difference", "Equalized odds difference", False, (0.0, 1.0)),
    ("prob_gap_abs", "Mean absolute change of label probability, original → counterfactual", False, None),
    ("cits", "CITS (the project's counterfactual image-text score)", False, None),
)
_SKEW_KINDS = ("skew", "max_skew", "min_skew", "ndkl")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1100px;
color:#1f2328;padding:0 1rem;line-height:1.45}
.models{font-weight:600;padding:.5rem .75rem;border-left:4px solid #0969da;background:#ddf4ff;margin:0 0 1rem}
.models.tiny{border-color:#cf222e;background:#ffebe9}
.run-failed{font-weight:700;padding:.6rem .75rem;border:2px solid #cf222e;background:#ffebe9;color:#82071e;margin:0 0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.2rem .45rem;text-align:left}
.problem{color:#cf222e;font-weight:600}.ok{color:#1a7f37}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
figure.pair{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:.5rem;font-size:.8rem}
.pair .imgs{display:flex;gap:.4rem}.pair .imgs div{flex:1;text-align:center}
.pair img{width:100%;height:auto;image-rendering:auto;border-radius:3px}
.flip{color:#cf222e;font-weight:600}.missing{background:#f6f8fa;padding:2rem .3rem;color:#57606a}
svg text{font-family:inherit;font-size:11px}details{margin:.5rem 0}pre{white-space:pre-wrap;font-size:.75rem}
"""


def e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def render_report(
    *,
    manifest: Mapping[str, Any],
    metrics: pl.DataFrame,
    counterfactuals: pl.DataFrame,
    predictions: pl.DataFrame,
    load_image: Callable[[str], Any],
    max_examples: int = 24,
    quarantine: pl.DataFrame | None = None,
) -> str:
    """The report as one HTML string.

    ``load_image(uri)`` returns a PIL image; an image that fails to load is shown as a
    placeholder naming the URI instead of failing the report. At most ``max_examples``
    counterfactuals are shown, each beside what it is compared with (its set's
    reconstruction; the original, shown too, is the reference only when reconstruction is
    off): kept ones whose top-1 label flipped first, then other kept ones, spread over
    attributes, and up to a quarter of the budget for ones the judge dropped, so a reader sees why.
    """
    metrics = metrics if metrics is not None else pl.DataFrame()
    tiny = bool(manifest.get("tiny_models"))
    images = _ImageInliner(load_image)
    run_id = manifest.get("run_id", "")
    failed = failure_banner(manifest)
    body = [
        f'<p id="run-failed" class="run-failed">{e(failed)}</p>' if failed else "",
        f'<p id="models" class="models{" tiny" if tiny else ""}">{e(models_line(manifest))}</p>',
        f"<h1>Counterfactual bias audit: run {e(run_id)}</h1>",
        _run_section(manifest),
        _findings_section(metrics),
        _charts_section(metrics),
        _skew_section(metrics),
        _examples_section(counterfactuals, predictions, images, max_examples),
        _accounting_section(manifest, quarantine),
        _metrics_table_section(metrics),
        _provenance_section(manifest),
    ]
    title = ("FAILED: " if failed else "") + f"Counterfactual audit {run_id}" + (" (tiny test models)" if tiny else "")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>\n"
        "<body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n"
    )


def image_loader(storage_options: dict[str, Any] | None = None) -> Callable[[str], Any]:
    """A ``load_image`` for :func:`render_report` that reads local paths and ``s3://`` URIs."""
    return functools.partial(read_image, options=storage_options)


# --- sections -----------------------------------------------------------------------------


def _run_section(manifest: Mapping[str, Any]) -> str:
    dataset = manifest.get("dataset") or {}
    rows = [
        ("run id", manifest.get("run_id")),
        ("dataset", dataset.get("name")),
        ("dataset URI", dataset.get("uri")),
        ("dataset fingerprint", dataset.get("fingerprint")),
        ("started", manifest.get("started_at")),
        ("finished", manifest.get("finished_at")),
    ]
    return _key_value_table([(k, v) for k, v in rows if v is not None])


def _findings_section(metrics: pl.DataFrame) -> str:
    if metrics.is_empty():
        return "<h2>Headline findings</h2><p>No metrics were computed in this run.</p>"
    items = "".join(f"<li>{e(sentence)}</li>" for sentence in headline_findings(metrics))
    return (
        "<h2>Headline findings</h2>"
        "<p>Brackets hold the 95% bootstrap confidence interval; n is the number of pairs or images.</p>"
        f"<ul>{items}</ul>"
    )


def _charts_section(metrics: pl.DataFrame) -> str:
    if metrics.is_empty():
        return ""
    parts = []
    for kind, title, is_share, domain in _BAR_CHARTS:
        rows = _metric_rows(metrics, lambda m, kind=kind: metric_kind(m) == kind)
        if not rows:
            continue
        bars = [Bar(_bar_label(r), r["value"], r.get("ci_low"), r.get("ci_high"), r.get("n")) for r in rows]
        fmt = percent if is_share else number
        parts.append(f"<h3>{e(title)}</h3>" + bar_chart_svg(bars, fmt=fmt, domain=domain))
    if not parts:
        return ""
    return "<h2>Metrics by attribute</h2><p>Bars are point estimates; whiskers the 95% interval.</p>" + "".join(parts)


def _skew_section(metrics: pl.DataFrame) -> str:
    if metrics.is_empty() or "query" not in metrics.columns:
        return ""
    rows = _metric_rows(metrics, lambda m: metric_kind(m) in _SKEW_KINDS)
    queries = sorted({r["query"] for r in rows if r.get("query") is not None})
    if not queries:
        return ""
    parts = [
        "<h2>Retrieval skew per query</h2>",
        "<p>Skew<sub>a</sub>@K = ln(share of group a in the top K / share of a in the pool): 0 is "
        "proportional, positive over-represented, negative under-represented. NDKL is 0 when every "
        "prefix of the ranking has the pool's mix (Geyik et al. 2019).</p>",
    ]
    for query in queries:
        q_rows = [r for r in rows if r.get("query") == query]
        q_rows.sort(key=lambda r: (str(r["attribute"]), _SKEW_KINDS.index(metric_kind(r["metric"])), str(r.get("group"))))
        bars = []
        for r in q_rows:
            k = metric_k(r["metric"])
            name = {"skew": "Skew", "max_skew": "MaxSkew", "min_skew": "MinSkew", "ndkl": "NDKL"}[metric_kind(r["metric"])]
            label = f"{r['attribute']} {name}" + (f"@{k}" if k else "") + (f" ({r['group']})" if r.get("group") else "")
            bars.append(Bar(label, r["value"], r.get("ci_low"), r.get("ci_high"), r.get("n")))
        parts.append(f"<h3>Query: {e(query)}</h3>" + bar_chart_svg(bars, fmt=number))
    return "".join(parts)


@dataclass(frozen=True)
class _Pair:
    """A counterfactual and what it is compared with: its set's reconstruction, else the original."""

    row: dict[str, Any]
    original_top1: Any
    counterfactual_top1: Any
    reconstruction_uri: str | None = None  # None: reconstruction off (compared with the original)
    reconstruction_top1: Any = None

    @property
    def reference(self) -> str:
        return "reconstruction" if self.reconstruction_uri else "original"

    @property
    def reference_top1(self) -> Any:
        return self.reconstruction_top1 if self.reconstruction_uri else self.original_top1

    @property
    def flipped(self) -> bool:
        return (
            self.reference_top1 is not None
            and self.counterfactual_top1 is not None
            and self.reference_top1 != self.counterfactual_top1
        )


def select_examples(
    counterfactuals: pl.DataFrame, predictions: pl.DataFrame, max_examples: int
) -> tuple[list[_Pair], list[_Pair]]:
    """(kept pairs, dropped pairs) to show; see :func:`render_report` for the order.

    One pair per counterfactual candidate with an image; reconstructions and controls are not
    pairs of their own but the reference of their set's counterfactuals (its ``set_id``).
    """
    if counterfactuals is None or counterfactuals.is_empty() or max_examples <= 0:
        return [], []
    needed = {"image_uri", "source_image_uri"}
    if not needed <= set(counterfactuals.columns):
        return [], []
    original_top1, generated_top1 = _top1_lookup(predictions)
    rows = counterfactuals.filter(pl.col("image_uri").is_not_null() & pl.col("source_image_uri").is_not_null()).to_dicts()
    reconstructions = {
        row.get("set_id"): row["image_uri"]
        for row in rows
        if row.get("variant") == "reconstruction" and not row.get("control") and row.get("set_id") is not None
    }
    pairs = []
    for row in rows:
        if row.get("variant", "counterfactual") != "counterfactual":
            continue
        reconstruction = reconstructions.get(row.get("set_id"))
        pairs.append(
            _Pair(
                row, original_top1.get(row.get("source_id")), generated_top1.get(row.get("image_uri")),
                reconstruction, generated_top1.get(reconstruction) if reconstruction else None,
            )
        )
    kept = [p for p in pairs if p.row.get("kept")]
    dropped = [p for p in pairs if not p.row.get("kept")]
    kept = _spread_over_attributes(sorted(kept, key=lambda p: (not p.flipped, _order_key(p.row))))
    dropped = _spread_over_attributes(sorted(dropped, key=lambda p: _order_key(p.row)))
    n_kept = min(len(kept), max_examples - min(len(dropped), max_examples // 4))
    n_dropped = min(len(dropped), max_examples - n_kept)
    return kept[:n_kept], dropped[:n_dropped]


def _order_key(row: Mapping[str, Any]) -> tuple:
    return tuple(str(row.get(c)) for c in ("attribute", "source_id", "target_value", "seed"))


def _spread_over_attributes(pairs: list[_Pair]) -> list[_Pair]:
    """Round-robin over attributes (keeping each attribute's order) so one attribute cannot fill the grid."""
    by_attribute: dict[str, list[_Pair]] = {}
    for pair in pairs:
        by_attribute.setdefault(str(pair.row.get("attribute")), []).append(pair)
    # Attributes with a flip at their head come first.
    queues = sorted(by_attribute.values(), key=lambda q: (not q[0].flipped, str(q[0].row.get("attribute"))))
    out: list[_Pair] = []
    depth = 0
    while len(out) < len(pairs):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out


def _top1_lookup(predictions: pl.DataFrame | None) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """(top-1 of each original by source id, top-1 of each generated image by image URI)."""
    if predictions is None or predictions.is_empty():
        return {}, {}
    if not {"variant", "top1"} <= set(predictions.columns):
        return {}, {}
    originals, generated = {}, {}
    for row in predictions.select([c for c in ("source_id", "image_uri", "variant", "top1") if c in predictions.columns]).to_dicts():
        if row.get("variant") == "original" and row.get("source_id") is not None:
            originals.setdefault(row["source_id"], row["top1"])
        elif row.get("variant") in ("counterfactual", "reconstruction") and row.get("image_uri") is not None:
            generated.setdefault(row["image_uri"], row["top1"])
    return originals, generated


def _examples_section(
    counterfactuals: pl.DataFrame, predictions: pl.DataFrame, images: "_ImageInliner", max_examples: int
) -> str:
    kept, dropped = select_examples(counterfactuals, predictions, max_examples)
    total = 0 if counterfactuals is None else counterfactuals.height
    parts = ["<h2>Counterfactuals and what they are compared with</h2>"]
    if not kept and not dropped:
        parts.append("<p>No generated counterfactual images to show.</p>")
        return "".join(parts)
    from_text = "method" in counterfactuals.columns and set(counterfactuals["method"].drop_nulls()) == {"text2image-sets"}
    if from_text:
        parts.append(
            "<p>Counterfactual sets made from text (<code>text2image-sets</code>): there is no original; each member "
            "was judged against the other members of its set, and the kept sets were published under "
            "<code>sets/</code> and evaluated as a dataset of counterfactual sets.</p>"
        )
    elif any(p.reconstruction_uri for p in kept + dropped):
        parts.append(
            "<p>Each counterfactual is compared with the <b>reconstruction</b> of its set: the same source, seed and "
            "editor asked for the source's own value, so both images went through the same generator. The original "
            "is shown for reference only.</p>"
        )
    else:
        parts.append(
            "<p>Reconstruction was off (<code>generation.reconstruction: false</code>): each counterfactual is "
            "compared with the <b>real original</b>, so a difference may only say &quot;generated vs real&quot;, not the "
            "attribute.</p>"
        )
    parts.append(
        f"<p>{len(kept)} kept counterfactual(s) shown, top-1 flips first, out of {total} candidate(s). "
        "Scores are the judge's: text = counterfactual image vs its caption, direction = image change vs "
        "caption change, image = similarity to the original (preservation).</p>"
    )
    parts.append('<div class="grid">' + "".join(_pair_figure(p, images) for p in kept) + "</div>")
    if dropped:
        parts.append("<h3>Dropped by the judge (examples)</h3>")
        parts.append('<div class="grid">' + "".join(_pair_figure(p, images) for p in dropped) + "</div>")
    return "".join(parts)


def _pair_figure(pair: _Pair, images: "_ImageInliner") -> str:
    row = pair.row
    change = f"{row.get('attribute')}: {row.get('source_value')} → {row.get('target_value')}"
    scores = ", ".join(
        f"{name} {number(row.get(column))}"
        for name, column in (("text", "text_similarity"), ("direction", "direction_similarity"), ("image", "image_similarity"))
        if row.get(column) is not None
    )
    if row.get("attribute_ok") is not None:
        scores += ("; " if scores else "") + f"attribute check {'passed' if row['attribute_ok'] else 'failed'}"
    if pair.reference_top1 is not None or pair.counterfactual_top1 is not None:
        verdict = f"{pair.reference}: {pair.reference_top1} → counterfactual: {pair.counterfactual_top1}"
        prediction = f'<span class="flip">{e(verdict)} (flipped)</span>' if pair.flipped else e(verdict)
        if pair.reconstruction_uri and pair.original_top1 is not None:
            prediction += f" (original: {e(pair.original_top1)})"
    else:
        prediction = "not evaluated"
    status = "kept" if row.get("kept") else f"dropped: {row.get('drop_reason') or row.get('status') or 'unknown'}"
    details = [
        ("change", e(change)),
        ("caption", e(row.get("caption"))),
        ("counterfactual caption", e(row.get("counterfactual_caption"))),
        ("explanation", e(row.get("explanation"))),
        ("judge", e(scores or "no scores")),
        ("model top-1", prediction),
        ("method, seed", e(f"{row.get('method')}, {row.get('seed')}")),
        ("status", e(status)),
        ("source id", e(row.get("source_id"))),
    ]
    dl = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in details)
    # (text2image-sets members have no original: their row's source image is empty)
    cells = [f"<div>{images.tag(row.get('source_image_uri'), 'original')}<br>original</div>"] if row.get("source_image_uri") else []
    if row.get("mask_uri"):  # inpainting: the region the edit was allowed to change
        cells.append(f"<div>{images.tag(row.get('mask_uri'), 'mask')}<br>mask</div>")
    if pair.reconstruction_uri:
        cells.append(f"<div>{images.tag(pair.reconstruction_uri, 'reconstruction')}<br>reconstruction</div>")
    cells.append(f"<div>{images.tag(row.get('image_uri'), 'counterfactual')}<br>counterfactual</div>")
    return (
        f'<figure class="pair"><div class="imgs">{"".join(cells)}'
        f"</div><figcaption><table>{dl}</table></figcaption></figure>"
    )


def _accounting_section(manifest: Mapping[str, Any], quarantine: pl.DataFrame | None) -> str:
    acc = manifest.get("row_accounting") or {}
    parts = ["<h2>Row accounting</h2>"]
    if acc:
        parts.append(_key_value_table([(k, acc.get(k)) for k in ROW_ACCOUNTING_KEYS if k in acc]
                                      + [(k, v) for k, v in acc.items() if k not in ROW_ACCOUNTING_KEYS]))
        problems = manifest.get("row_accounting_problems")
        if problems is None:
            problems = check_row_accounting(acc)
        if problems:
            parts.append("".join(f'<p class="problem">Accounting does not close: {e(p)}</p>' for p in problems))
        else:
            parts.append(
                '<p class="ok">Accounting closes: rows in = valid + quarantined; '
                "planned = kept + dropped + failed.</p>"
            )
    else:
        parts.append("<p>Row accounting was not recorded.</p>")
    generation = manifest.get("generation_counts") or {}
    if generation:
        parts.append("<h3>Generation</h3>" + _key_value_table(
            [(k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in generation.items()]
        ))
    if manifest.get("cache_hits") is not None:
        parts.append(f"<p>Cache hits (work reused from earlier runs): {e(manifest['cache_hits'])}</p>")
    parts.append(_quarantine_summary(quarantine, acc))
    return "".join(parts)


def _quarantine_summary(quarantine: pl.DataFrame | None, acc: Mapping[str, Any]) -> str:
    parts = ["<h3>Quarantine</h3>"]
    if quarantine is None or quarantine.is_empty() or "reason" not in quarantine.columns:
        count = acc.get("quarantined")
        parts.append(f"<p>{e(count if count is not None else 'No')} row(s) quarantined.</p>")
        return "".join(parts)
    reasons = quarantine.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
    rows = "".join(f"<tr><td>{e(r)}</td><td>{n}</td></tr>" for r, n in reasons.iter_rows())
    parts.append(f"<table><tr><th>reason</th><th>rows</th></tr>{rows}</table>")
    columns = [c for c in ("id", "reason", "detail") if c in quarantine.columns]
    sample = quarantine.select(columns).head(20).to_dicts()
    cells = "".join(
        "<tr>" + "".join(f"<td>{e(_truncate(r.get(c)))}</td>" for c in columns) + "</tr>" for r in sample
    )
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    parts.append(
        f"<details><summary>First {len(sample)} of {quarantine.height} quarantined rows</summary>"
        f"<table><tr>{head}</tr>{cells}</table></details>"
    )
    return "".join(parts)


def _metrics_table_section(metrics: pl.DataFrame) -> str:
    if metrics.is_empty():
        return ""
    columns = [c for c in ("metric", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n") if c in metrics.columns]
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(number(r[c]) if isinstance(r[c], float) else r[c])}</td>" for c in columns) + "</tr>"
        for r in metrics.select(columns).to_dicts()
    )
    return (
        f"<h2>All metrics</h2><details><summary>{metrics.height} rows (also in metrics.parquet)</summary>"
        f"<table><tr>{head}</tr>{body}</table></details>"
    )


def _provenance_section(manifest: Mapping[str, Any]) -> str:
    versions = manifest.get("versions") or {}
    parts = ["<h2>Provenance</h2>"]
    if versions:
        parts.append("<details><summary>Library versions</summary>" + _key_value_table(sorted(versions.items())) + "</details>")
    if manifest.get("config"):
        from counterfactual_lab.redaction import redact  # a manifest from elsewhere may predate redaction

        config = json.dumps(redact(manifest["config"]), indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>Config</summary><pre>{e(config)}</pre></details>")
    tables = manifest.get("tables") or {}
    if tables:
        parts.append("<details><summary>Tables</summary>" + _key_value_table(sorted(tables.items())) + "</details>")
    return "".join(parts)


# --- helpers ------------------------------------------------------------------------------


def _metric_rows(metrics: pl.DataFrame, keep: Callable[[str], bool]) -> list[dict[str, Any]]:
    rows = [r for r in metrics.to_dicts() if keep(str(r.get("metric")))]
    rows = [r for r in rows if r.get("value") is not None and not (isinstance(r["value"], float) and math.isnan(r["value"]))]
    rows.sort(key=lambda r: (str(r.get("attribute")), str(r.get("group")), str(r.get("label")), str(r.get("query"))))
    return rows


def _bar_label(row: Mapping[str, Any]) -> str:
    parts = [str(row.get("attribute"))]
    parts += [str(row[c]) for c in ("group", "label", "query") if row.get(c) is not None]
    return " · ".join(parts)


def _key_value_table(rows: Sequence[tuple[Any, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def _truncate(value: Any, limit: int = 200) -> Any:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _ImageInliner:
    """Loads each URI once, shrinks it to a thumbnail, and returns ``<img>`` tags with a PNG data URI."""

    def __init__(self, load_image: Callable[[str], Any], max_px: int = THUMBNAIL_PX) -> None:
        self._load = load_image
        self._max_px = max_px
        self._cache: dict[str, str | None] = {}
        self.errors: dict[str, str] = {}

    def data_uri(self, uri: str) -> str | None:
        if uri not in self._cache:
            try:
                image = self._load(uri)
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
                image.thumbnail((self._max_px, self._max_px))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG", optimize=True)
                self._cache[uri] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            except Exception as exc:  # a missing image must not take the whole report down
                self._cache[uri] = None
                self.errors[uri] = f"{type(exc).__name__}: {exc}"
        return self._cache[uri]

    def tag(self, uri: str | None, alt: str) -> str:
        if not uri:
            return f'<div class="missing">{e(alt)}: no image</div>'
        src = self.data_uri(uri)
        if src is None:
            return f'<div class="missing">{e(alt)} unavailable: {e(uri)} ({e(self.errors.get(uri))})</div>'
        return f'<img src="{src}" alt="{e(alt)}" title="{e(uri)}">'


# --- SVG bar chart -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One bar: a label, a point estimate and an optional interval."""

    label: str
    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None


def _finite(v: float | None) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


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


def bar_chart_svg(
    bars: Sequence[Bar],
    *,
    fmt: Callable[[float | None], str] = number,
    domain: tuple[float, float] | None = None,
    width: int = 760,
) -> str:
    """A horizontal bar chart with interval whiskers, as inline SVG.

    The axis spans ``domain`` widened to hold every bar and whisker, and always includes 0,
    so negative values (signed gaps, MinSkew) extend left of the zero line.
    """
    label_w, value_w, row_h, top, axis_h = 250, 190, 22, 8, 24
    plot_w = width - label_w - value_w
    points = [b.value for b in bars if _finite(b.value)]
    points += [v for b in bars for v in (b.low, b.high) if _finite(v)]
    lo = min([0.0, *points, *(domain[:1] if domain else [])])
    hi = max([0.0, *points, *(domain[1:] if domain else [])])
    if hi == lo:
        hi = lo + 1.0
    height = top + row_h * len(bars) + axis_h

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    ]
    axis_y = top + row_h * len(bars)
    for tick in _nice_ticks(lo, hi):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{axis_y}" stroke="#eaeef2"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 15}" text-anchor="middle" fill="#57606a">{e(fmt(tick))}</text>')
    for i, bar in enumerate(bars):
        y = top + i * row_h
        mid = y + row_h / 2
        label = _truncate(bar.label, 42)
        out.append(f'<text x="{label_w - 6}" y="{mid + 4:.1f}" text-anchor="end">{e(label)}</text>')
        if not _finite(bar.value):
            out.append(f'<text x="{x(0) + 4:.1f}" y="{mid + 4:.1f}" fill="#57606a">n/a</text>')
            continue
        x0, x1 = sorted((x(0), x(bar.value)))
        colour = "#0969da" if bar.value >= 0 else "#bf8700"
        interval = f" [{fmt(bar.low)}, {fmt(bar.high)}]" if _finite(bar.low) and _finite(bar.high) else ""
        n = f" n={bar.n}" if bar.n is not None else ""
        tooltip = f"{bar.label}: {fmt(bar.value)}{interval}{n}"
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 8}" fill="{colour}">'
            f"<title>{e(tooltip)}</title></rect>"
        )
        if _finite(bar.low) and _finite(bar.high):
            wl, wh = x(bar.low), x(bar.high)
            out.append(
                f'<path d="M{wl:.1f},{mid:.1f}H{wh:.1f}M{wl:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                f'M{wh:.1f},{mid - 5:.1f}V{mid + 5:.1f}" stroke="#1f2328" stroke-width="1.3" fill="none"/>'
            )
        out.append(
            f'<text x="{label_w + plot_w + 6}" y="{mid + 4:.1f}">{e(fmt(bar.value) + interval + n)}</text>'
        )
    out.append(f'<line x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{axis_y}" stroke="#1f2328"/>')
    out.append("</svg>")
    return "".join(out)
