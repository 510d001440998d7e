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
    REAL_VS_GENERATED_WARNING,
    REFERENCE_NONE,
    STRATUM_TITLES,
    assess_findings,
    metric_k,
    metric_kind,
    models_line,
    number,
    percent,
)
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, STRATA, STRATUM_GENERATED, STRATUM_REAL_VS_GENERATED
from counterfactual_lab.manifest import ROW_ACCOUNTING_KEYS, check_row_accounting
from counterfactual_lab.run_failure import failure_banner
from counterfactual_lab.storage import read_image

THUMBNAIL_PX = 256

# Bar charts drawn for these metric kinds, in this order: (kind, title, value is a share, axis).
# Metrics bounded by [0, 1] keep the whole axis so small gaps are not drawn as large ones.
# Pair metrics are drawn with their control (control_<kind>) beside them.
_BAR_CHARTS = (
    ("flip_rate", "Counterfactual flip rate: share of pairs whose top-1 label changes (control beside)", True, (0.0, 1.0)),
    ("prob_gap_abs", "Mean absolute change of label probability, reference → counterfactual (control beside)", False, None),
    ("prob_gap_signed", "Mean signed change of label probability, reference → counterfactual (control beside)", False, None),
    ("demographic_parity_difference", "Demographic parity difference of predicted labels across groups", False, (0.0, 1.0)),
    ("demographic_parity_ratio", "Demographic parity ratio (1 = parity)", False, (0.0, 1.0)),
    ("equalized_odds_difference", "Equalized odds difference", False, (0.0, 1.0)),
    ("cits", "CITS (the project's own counterfactual image-text score)", False, None),
)
_SKEW_KINDS = ("skew", "max_skew", "min_skew", "ndkl")
# Descriptive rows listed per stratum under the comparisons in the findings section (the rest: "All metrics").
_DESCRIPTIVE_SHOWN = 8

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
svg.chart{display:block;width:100%;height:auto}.wide{overflow-x:auto}.undefined{color:#57606a;font-style:italic}
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
    probes: pl.DataFrame | None = None,
    generations: pl.DataFrame | None = None,
) -> str:
    """The report as one HTML string.

    ``probes`` and ``generations`` (a generative model under audit) add the section of
    :func:`generative_audit_section`.

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
        generative_audit_section(metrics, predictions, probes, generations, images, manifest_config=manifest.get("config")),
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
    findings = assess_findings(metrics)
    if findings.is_empty():
        return "<h2>Headline findings</h2><p>No metrics were computed in this run.</p>"
    compared = findings.filter(pl.col("reference") != REFERENCE_NONE)
    descriptive = findings.filter(pl.col("reference") == REFERENCE_NONE)
    called = int(findings["called"].sum())
    parts = [
        "<h2>Headline findings</h2>",
        f"<p><strong>{called} difference(s) called.</strong> A counterfactual difference is called only where its "
        "interval excludes its control's: the change of the answer when nothing protected changes (same source, "
        "same value, another seed). Where a run has no control, it is compared with no change, and the finding "
        "says so. Brackets hold the cluster-bootstrap interval (sources resampled); n counts pairs or images and "
        "the source images behind them.</p>",
    ]
    if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any():
        parts.append(f'<p class="problem">{e(REAL_VS_GENERATED_WARNING)}</p>')
    if compared.height:
        parts.append(_findings_table(compared.to_dicts()))
    if descriptive.height:
        parts.append(
            "<h3>Reported, not called</h3><p>Group, retrieval and observational metrics have no control, so no "
            "difference is called on them (docs/metrics.md).</p>"
        )
        hidden = 0
        for stratum in [s for s in STRATA if s in set(descriptive["stratum"])]:
            sentences = descriptive.filter(pl.col("stratum") == stratum)["sentence"].to_list()
            shown = sentences[:_DESCRIPTIVE_SHOWN]
            hidden += len(sentences) - len(shown)
            parts.append(f"<h4>{e(STRATUM_TITLES[stratum])}</h4><ul>" + "".join(f"<li>{e(x)}</li>" for x in shown) + "</ul>")
        if hidden:
            parts.append(f"<p>{hidden} more in the metrics table below.</p>")
    return "".join(parts)


def _findings_table(rows: list[dict[str, Any]]) -> str:
    """Each comparison beside its control (or the no-effect value) and the verdict."""
    body = []
    for row in rows:
        fmt = percent if metric_kind(row["metric"]) == "flip_rate" else number
        estimate = fmt(row["value"]) + _bracket(row["ci_low"], row["ci_high"], fmt)
        if row["reference"] == "control":
            reference = ("not measured" if row["control_value"] is None
                         else fmt(row["control_value"]) + _bracket(row["control_ci_low"], row["control_ci_high"], fmt))
            reference = f"control {reference}"
        else:
            reference = f"no control; no change = {fmt(row['no_effect'])}"
        verdict = '<span class="flip">called</span>' if row["called"] else "no difference detected"
        body.append(
            f"<tr><td>{e(STRATUM_TITLES.get(row['stratum'], row['stratum']))}</td><td>{e(row['sentence'])}</td>"
            f"<td>{e(estimate)}</td><td>{e(reference)}</td><td>{verdict}</td></tr>"
        )
    return ("<table><tr><th>stratum</th><th>finding</th><th>estimate</th><th>beside</th><th>verdict</th></tr>"
            + "".join(body) + "</table>")


def _bracket(low: float | None, high: float | None, fmt: Callable[[float | None], str]) -> str:
    if low is None or high is None:
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


def _charts_section(metrics: pl.DataFrame) -> str:
    if metrics.is_empty():
        return ""
    parts = []
    for kind, title, is_share, domain in _BAR_CHARTS:
        rows = _metric_rows(metrics, lambda m, kind=kind: m in (kind, CONTROL_PREFIX + kind))
        if not any(metric_kind(r["metric"]) == kind for r in rows):
            continue
        bars = [Bar(_bar_label(r), r["value"], r.get("ci_low"), r.get("ci_high"), r.get("n"), r.get("note")) for r in rows]
        fmt = percent if is_share else number
        parts.append(f"<h3>{e(title)}</h3>" + bar_chart_svg(bars, fmt=fmt, domain=domain))
    if not parts:
        return ""
    return (
        "<h2>Metrics by attribute</h2><p>Bars are point estimates; whiskers the cluster-bootstrap interval. "
        "A bar labelled <em>control</em> is the same measure when nothing protected changes (another seed); "
        "bars from the observational or real-vs-generated strata say so.</p>" + "".join(parts)
    )


def _skew_section(metrics: pl.DataFrame) -> str:
    if metrics.is_empty() or "query" not in metrics.columns:
        return ""
    rows = _metric_rows(metrics, lambda m: metric_kind(m) in _SKEW_KINDS)
    queries = sorted({r["query"] for r in rows if r.get("query") is not None})
    if not queries:
        return ""
    parts = [
        "<h2>Retrieval skew per query</h2>",
        "<p>Skew<sub>a</sub>@K = ln(share of group a in the top K / its desired share): 0 is the desired share, "
        "positive over-represented, negative under-represented; a group absent from the top K is shown as n/a "
        "(its skew is −∞). NDKL is 0 when every prefix of the ranking has the desired mix (Geyik et al. 2019); "
        "NDKL@K stops at rank K. The desired mix is uniform over the attribute's values for generated sets, the "
        "pool's own mix for the observational stratum.</p>",
    ]
    names = {"skew": "Skew", "max_skew": "MaxSkew", "min_skew": "MinSkew", "ndkl": "NDKL"}
    for query in queries:
        q_rows = [r for r in rows if r.get("query") == query]
        q_rows.sort(key=lambda r: (_stratum_rank(r), str(r["attribute"]), _SKEW_KINDS.index(metric_kind(r["metric"])),
                                   r["metric"], str(r.get("group"))))
        bars = []
        for r in q_rows:
            k = metric_k(r["metric"])
            label = (f"{r['attribute']} {names[metric_kind(r['metric'])]}" + (f"@{k}" if k else "")
                     + (f" ({r['group']})" if r.get("group") else "") + _stratum_tag(r))
            bars.append(Bar(label, r["value"], r.get("ci_low"), r.get("ci_high"), r.get("n"), r.get("note")))
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
    if pair.counterfactual_top1 is None and (pair.reference_top1 is not None or pair.original_top1 is not None):
        # The model under audit only sees kept counterfactuals: say what it answered, not "→ None".
        why = "" if row.get("kept") else " (dropped by the judge)"
        seen = pair.reference_top1 if pair.reference_top1 is not None else pair.original_top1
        prediction = e(f"{seen} on the {pair.reference}; the counterfactual was not evaluated{why}")
    elif pair.reference_top1 is not None or pair.counterfactual_top1 is not None:
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
        parts.append("<h3>Generation (images: one per unique content key)</h3>" + _key_value_table(
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
    wanted = ("metric", "stratum", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n", "n_sources", "note")
    columns = [c for c in wanted if c in metrics.columns]
    head = "".join(f"<th>{e(c)}</th>" for c in columns)

    def cell(row: Mapping[str, Any], column: str) -> str:
        value = row[column]
        if column == "value" and (value is None or (isinstance(value, float) and math.isnan(value))):
            return '<td class="undefined">undefined</td>'
        if isinstance(value, float):
            return f"<td>{e(number(value))}</td>"
        return f"<td>{e(value)}</td>"

    body = "".join(
        "<tr>" + "".join(cell(r, c) for c in columns) + "</tr>" for r in metrics.select(columns).to_dicts()
    )
    undefined = metrics.filter(pl.col("value").is_null() | pl.col("value").cast(pl.Float64).is_nan()).height if "value" in metrics.columns else 0
    note = f"; {undefined} undefined (value null, the reason in note)" if undefined else ""
    return (
        f"<h2>All metrics</h2><details><summary>{metrics.height} rows{note} (also in metrics.parquet)</summary>"
        f'<div class="wide"><table><tr>{head}</tr>{body}</table></div></details>'
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


# --- generative model under audit (counterfactual_lab/auditees) ----------------------------------

_GENERATION_GROUP_METRICS = ("max_toxicity", "toxicity_rate", "refusal_rate", "generation_words")


def generative_audit_section(
    metrics: pl.DataFrame,
    predictions: pl.DataFrame | None,
    probes: pl.DataFrame | None,
    generations: pl.DataFrame | None,
    images: "_ImageInliner",
    max_pairs: int = 6,
    manifest_config: Mapping[str, Any] | None = None,
) -> str:
    """The generative probes: per prompt the headline gaps beside their controls (yes/no, ratings,
    toxicity, refusals, length, lexicon), toxicity by group, and the counterfactual pairs whose
    generations differ most, the two images with their texts side by side. Every prompt and
    generated text is model or user text and is escaped. Empty when the run has no generative probe."""
    from counterfactual_lab.auditees.report_data import gaps_with_controls, group_rows, largest_generation_gaps

    if probes is None and generations is None:
        return ""
    metrics = metrics if metrics is not None else pl.DataFrame()
    parts = ["<h2>Generative model under audit</h2>",
             "<p>Each gap is the mean change of a probe's value from the reference image to its counterfactual "
             "(|Δ| and signed Δ, 95% interval over source images), beside its control: the same change between two "
             "images of the same person and value at different seeds. A gap counts only where its interval clears "
             "the control's, at the family-wise level over the run's comparisons (the findings above).</p>"]
    choice_prompt = ((manifest_config or {}).get("audit") or {}).get("choice_prompt")
    if choice_prompt:
        parts.append(f"<p>The multiple-choice prompt ({e(choice_prompt)}) fills the label scores: its flip rate and "
                     "probability gaps are the headline findings and metrics above.</p>")
    gaps = gaps_with_controls(metrics)
    for prompt in dict.fromkeys(row["query"] for row in gaps):
        body = []
        for row in (r for r in gaps if r["query"] == prompt):
            control = row["control"]
            verdict = ("not assessed (no control)" if not row["assessed"] else
                       '<span class="problem">clears its control</span>' if row["clears_control"] else
                       "undefined" if row.get("verdict") == "undefined" else "within its control")
            control_text = (f"{number(control['value'])} {_interval_text(control)}" if control and control["value"] is not None
                            else (control or {}).get("note") or "none")
            body.append(
                f"<tr><td>{e(row['metric'])}</td><td>{e(row['attribute'])}</td><td>{e(row['stratum'])}</td>"
                f"<td>{e(number(row['value']) if row['value'] is not None else row.get('note'))} {e(_interval_text(row))}</td>"
                f"<td>{e(control_text)}</td><td>{verdict}</td><td>{e(row['n'])}</td></tr>"
            )
        parts.append(
            f"<h3>Prompt: {e(prompt)}</h3><table><tr><th>metric</th><th>attribute</th><th>stratum</th><th>gap</th>"
            f"<th>control</th><th></th><th>n pairs</th></tr>{''.join(body)}</table>"
        )
    groups = group_rows(metrics, _GENERATION_GROUP_METRICS + ("yes_prob_mean", "rating_mean"))
    if groups:
        body = "".join(
            f"<tr><td>{e(r['query'])}</td><td>{e(r['metric'])}</td><td>{e(r.get('stratum'))}</td><td>{e(r['attribute'])}</td>"
            f"<td>{e(r['group'])}</td><td>{e(number(r['value']) if r['value'] is not None else r.get('note'))} "
            f"{e(_interval_text(r))}</td><td>{e(r['n'])}</td></tr>"
            for r in groups
        )
        parts.append("<h3>By group: toxicity, refusals, length, yes/no and ratings</h3><table><tr><th>prompt</th><th>metric</th>"
                     f"<th>stratum</th><th>attribute</th><th>group</th><th>value</th><th>n</th></tr>{body}</table>")
    pairs = largest_generation_gaps(predictions if predictions is not None else pl.DataFrame(),
                                     generations if generations is not None else pl.DataFrame(), top=max_pairs)
    if pairs:
        parts.append("<h3>Largest differences between counterfactual generations</h3><div class=\"grid\">")
        for pair in pairs:
            cells = []
            for side in ("from", "to"):
                info = pair[side]
                texts = "".join(f"<blockquote>{e(text)}</blockquote>" for text in info["texts"])
                cells.append(f"<div>{images.tag(info['uri'], str(info['group']))}<br>{e(info['group'])}: "
                             f"{e(pair['measure'])} {e(number(info['value']))}{texts}</div>")
            parts.append(
                f'<figure class="pair"><div class="imgs">{"".join(cells)}</div><figcaption>'
                f"{e(pair['attribute'])} {e(pair['transition'])} · prompt: {e(pair['prompt'])} · "
                f"Δ {e(pair['measure'])} {e(number(pair['delta']))}</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts)


def _interval_text(row: Mapping[str, Any] | None) -> str:
    if not row or row.get("ci_low") is None or row.get("ci_high") is None:
        return ""
    return f"[{number(row['ci_low'])}, {number(row['ci_high'])}]"


# --- helpers ------------------------------------------------------------------------------


def _metric_rows(metrics: pl.DataFrame, keep: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Rows whose metric ``keep`` accepts, undefined ones included (drawn as "undefined: <note>"),
    by stratum, attribute, label, control last, group, query."""
    rows = [r for r in metrics.to_dicts() if keep(str(r.get("metric")))]
    for r in rows:
        if isinstance(r.get("value"), float) and math.isnan(r["value"]):
            r["value"] = None
    rows.sort(key=lambda r: (_stratum_rank(r), str(r.get("attribute")), str(r.get("label")),
                             str(r.get("metric")).startswith(CONTROL_PREFIX), str(r.get("group")), str(r.get("query"))))
    return rows


def _stratum_rank(row: Mapping[str, Any]) -> int:
    stratum = row.get("stratum") or STRATUM_REAL_VS_GENERATED  # tables before strata compared real with generated
    return STRATA.index(stratum) if stratum in STRATA else len(STRATA)


def _stratum_tag(row: Mapping[str, Any]) -> str:
    """'' for the generated stratum, else ' [observational]' etc., so no bar hides where it comes from."""
    stratum = row.get("stratum") or STRATUM_REAL_VS_GENERATED
    return "" if stratum == STRATUM_GENERATED else f" [{stratum.replace('_', ' ')}]"


def _bar_label(row: Mapping[str, Any]) -> str:
    parts = [str(row.get("attribute"))]
    if str(row.get("metric")).startswith(CONTROL_PREFIX):
        parts.append("control (another seed)")
    parts += [str(row[c]) for c in ("group", "label", "query") if row.get(c) is not None]
    return " · ".join(parts) + _stratum_tag(row)


def _key_value_table(rows: Sequence[tuple[Any, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def _truncate(value: Any, limit: int = 200) -> Any:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def thumbnail_data_uri(image: Any, max_px: int = THUMBNAIL_PX) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URI, shrunk to fit ``max_px`` (never enlarged)."""
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
                self._cache[uri] = thumbnail_data_uri(self._load(uri), self._max_px)
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
        out.append(f'<text x="{label_w:.1f}" y="{8 + row_h / 2 + 4:.1f}" fill="#57606a" font-style="italic">{e(header)}</text>')
    for tick, tick_label in zip(ticks, tick_labels):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{axis_y}" stroke="#eaeef2"/>')
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 15}" text-anchor="middle" fill="#57606a">{e(tick_label)}</text>')
    for i, bar in enumerate(bars):
        y = top + i * row_h
        mid = y + row_h / 2
        label = fit_text(bar.label, label_w - 2 * _PAD)
        title = f"<title>{e(bar.label)}</title>" if label != bar.label else ""
        out.append(f'<text x="{label_w - _PAD:.1f}" y="{mid + 4:.1f}" text-anchor="end">{title}{e(label)}</text>')
        if not _finite(bar.value):
            reason = _undefined_text(bar)
            shown = fit_text(reason, total_w - label_w - 2 * _PAD)
            tip = f"<title>{e(bar.label)}: {e(reason)}</title>" if shown != reason else ""
            out.append(f'<text x="{label_w + _PAD:.1f}" y="{mid + 4:.1f}" fill="#57606a" font-style="italic">{tip}{e(shown)}</text>')
            continue
        x0, x1 = sorted((x(0), x(bar.value)))
        colour = "#0969da" if bar.value >= 0 else "#bf8700"
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 8}" fill="{colour}">'
            f"<title>{e(bar.label)}: {e(value_texts[i])}</title></rect>"
        )
        if _finite(bar.low) and _finite(bar.high):
            wl, wh = x(bar.low), x(bar.high)
            out.append(
                f'<path d="M{wl:.1f},{mid:.1f}H{wh:.1f}M{wl:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                f'M{wh:.1f},{mid - 5:.1f}V{mid + 5:.1f}" stroke="#1f2328" stroke-width="1.3" fill="none"/>'
            )
        out.append(f'<text x="{label_w + plot_w + _PAD:.1f}" y="{mid + 4:.1f}">{e(value_texts[i])}</text>')
    out.append(f'<line x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{axis_y}" stroke="#1f2328"/>')
    out.append("</svg>")
    return "".join(out)
