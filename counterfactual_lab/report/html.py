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

import functools
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from counterfactual_lab.metrics.diagnostics import diagnostic_words, is_channel
from counterfactual_lab.metrics.findings import (
    REFERENCE_NONE,
    RUN_CONFOUNDED,
    VERDICT_CONFOUNDED,
    VERDICT_MOVED,
    run_verdict,
)
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    STRATA,
    STRATUM_GENERATED,
    STRATUM_REAL_VS_GENERATED,
    metric_k,
    metric_kind,
)
from counterfactual_lab.report.charts import Bar, bar_chart_svg
from counterfactual_lab.report.examples import ImageInliner, examples_section
from counterfactual_lab.report.findings import RUN_VERDICT_WORDS, assess_findings, verdict_lines
from counterfactual_lab.report.generative import generative_audit_section
from counterfactual_lab.report.intersections import intersections_section
from counterfactual_lab.report.markdown import models_line
from counterfactual_lab.report.markup import escaped, key_value_table, truncated
from counterfactual_lab.report.modalities import modalities_section
from counterfactual_lab.report.review_summary import review_lines
from counterfactual_lab.report.sentences import (
    REAL_VS_GENERATED_WARNING,
    STRATUM_TITLES,
    number,
    percent,
    ranking_basis,
)
from counterfactual_lab.runs.failure import failure_banner
from counterfactual_lab.runs.manifest import ROW_ACCOUNTING_KEYS, check_row_accounting
from counterfactual_lab.storage.files import read_image

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
.people{padding:.4rem .75rem;border-left:4px solid #8250df;background:#fbefff;margin:0 0 1rem}
.people p,.people ul{margin:.2rem 0}
"""


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
    images = ImageInliner(load_image)
    run_id = manifest.get("run_id", "")
    failed = failure_banner(manifest)
    body = [
        f'<p id="run-failed" class="run-failed">{escaped(failed)}</p>' if failed else "",
        f'<p id="models" class="models{" tiny" if tiny else ""}">{escaped(models_line(manifest))}</p>',
        f"<h1>Counterfactual bias audit: run {escaped(run_id)}</h1>",
        _review_section(manifest, metrics),
        _run_section(manifest),
        _findings_section(metrics, manifest),
        _confound_section(metrics),
        modalities_section(assess_findings(metrics)) if not metrics.is_empty() else "",
        intersections_section(metrics, manifest) if not metrics.is_empty() else "",
        _charts_section(metrics),
        _skew_section(metrics),
        generative_audit_section(metrics, predictions, probes, generations, images, manifest_config=manifest.get("config"),
                                 confidence=(manifest.get("metrics") or {}).get("confidence", 0.95)),
        examples_section(counterfactuals, predictions, images, max_examples),
        _accounting_section(manifest, quarantine),
        _metrics_table_section(metrics),
        _provenance_section(manifest),
    ]
    title = ("FAILED: " if failed else "") + f"Counterfactual audit {run_id}" + (" (tiny test models)" if tiny else "")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escaped(title)}</title><style>{_CSS}</style></head>\n"
        "<body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n"
    )


def image_loader(storage_options: dict[str, Any] | None = None) -> Callable[[str], Any]:
    """A ``load_image`` for :func:`render_report` that reads local paths and ``s3://`` URIs."""
    return functools.partial(read_image, options=storage_options)


# --- sections -----------------------------------------------------------------------------


def _review_section(manifest: Mapping[str, Any], metrics: pl.DataFrame) -> str:
    """People's review of the counterfactuals (``cflab review``), near the top: how often the judge
    agrees with people, or how to ask them."""
    lines = review_lines(dict(manifest), metrics)
    if not lines:
        return ""
    first, *rest = lines
    items = "".join(f"<li>{escaped(line.strip())}</li>" for line in rest)
    return f'<section id="people" class="people"><p>{escaped(first)}</p>' + (f"<ul>{items}</ul>" if items else "") + "</section>"


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
    return key_value_table([(k, v) for k, v in rows if v is not None])


def _findings_section(metrics: pl.DataFrame, manifest: Mapping[str, Any]) -> str:
    findings = assess_findings(metrics)
    if findings.is_empty():
        return "<h2>Headline findings</h2><p>No metrics were computed in this run.</p>"
    diagnostic = findings["diagnostic"].fill_null(False)
    compared = findings.filter((pl.col("reference") != REFERENCE_NONE) & ~diagnostic)
    descriptive = findings.filter((pl.col("reference") == REFERENCE_NONE) & ~diagnostic)
    called = int(findings["called"].sum())
    confounded = int((findings["verdict"] == VERDICT_CONFOUNDED).sum())
    verdict = run_verdict(findings)
    settings = manifest.get("metrics") or {}
    lines = verdict_lines(findings, (settings.get("error_control") or {}).get("setting"),
                          (settings.get("min_effect") or {}).get("probability"))
    see = " See Confound diagnostics below." if verdict == RUN_CONFOUNDED else ""
    parts = [
        "<h2>Headline findings</h2>",
        f'<p id="run-verdict"><strong>Run verdict: {escaped(RUN_VERDICT_WORDS[verdict])}.{see}</strong></p>',
        f"<p><strong>{called} difference(s) called"
        + (f", {confounded} confounded" if confounded else "") + ".</strong> A signed change is called where its "
        "interval excludes no change; a flip rate or mean |Δ| where its interval lies above its control's (the change "
        "of the answer when nothing protected changes: same source, same value, another seed); each at the level the "
        "run's error control sets, at least audit.min_effect, and not confounded. Where a run has no control, a "
        "signed change is compared with no change, and the finding says so. Brackets hold the cluster-bootstrap "
        "interval (sources resampled); n counts pairs or images and the source images behind them.</p>",
    ]
    if lines:
        parts.append("<ul>" + "".join(f"<li>{escaped(line)}</li>" for line in lines) + "</ul>")
    if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any():
        parts.append(f'<p class="problem">{escaped(REAL_VS_GENERATED_WARNING)}</p>')
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
            parts.append(f"<h4>{escaped(STRATUM_TITLES[stratum])}</h4><ul>" + "".join(f"<li>{escaped(x)}</li>" for x in shown) + "</ul>")
        if hidden:
            parts.append(f"<p>{hidden} more in the metrics table below.</p>")
    return "".join(parts)


def _verdict_cell(row: Mapping[str, Any]) -> str:
    if row["called"]:
        return '<span class="flip">called</span>'
    if row["verdict"] == VERDICT_CONFOUNDED:
        return '<span class="problem">confounded</span>'
    if row["verdict"] == VERDICT_MOVED:
        return '<span class="problem">moved</span>'
    reason = f" ({row['reason']})" if row.get("reason") and row["reason"] != row["verdict"] else ""
    return escaped(f"{row['verdict']}{reason}")


def _findings_table(rows: list[dict[str, Any]]) -> str:
    """Each comparison beside its control (or the no-effect value) and the verdict with its reason."""
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
        body.append(
            f"<tr><td>{escaped(STRATUM_TITLES.get(row['stratum'], row['stratum']))}</td><td>{escaped(row['sentence'])}</td>"
            f"<td>{escaped(estimate)}</td><td>{escaped(reference)}</td><td>{_verdict_cell(row)}</td></tr>"
        )
    return ("<table><tr><th>stratum</th><th>finding</th><th>estimate</th><th>beside</th><th>verdict</th></tr>"
            + "".join(body) + "</table>")


def _confound_section(metrics: pl.DataFrame) -> str:
    """The confound diagnostics per attribute and transition, moved first: negative controls and
    off-target drift (channels also in grey levels), each beside its control."""
    findings = assess_findings(metrics)
    if findings.is_empty():
        return ""
    rows = findings.filter(pl.col("diagnostic").fill_null(False))
    if rows.is_empty():
        return ""
    rows = rows.with_columns((pl.col("verdict") != VERDICT_MOVED).alias("_quiet")).sort(
        ["_quiet", "stratum", "attribute", "group", "metric", "label"], nulls_last=False)
    body = []
    for row in rows.to_dicts():
        grey = f" ({row['value'] * 255:+.1f} grey levels)" if row["value"] is not None and is_channel(row["metric"]) else ""
        estimate = number(row["value"]) + grey + _bracket(row["ci_low"], row["ci_high"], number)
        control = ("" if row["control_value"] is None
                   else number(row["control_value"]) + _bracket(row["control_ci_low"], row["control_ci_high"], number))
        what = diagnostic_words(row["metric"], row.get("label"), row.get("query"))
        body.append(
            f"<tr><td>{escaped(row['attribute'])}</td><td>{escaped(row['group'] or 'every transition')}</td>"
            f"<td>{escaped(what)}</td><td>{escaped(estimate)}</td><td>{escaped(control)}</td>"
            f"<td>{escaped(number(row['min_effect']))}</td><td>{_verdict_cell(row)}</td></tr>"
        )
    moved = int((rows["verdict"] == VERDICT_MOVED).sum())
    return (
        "<h2>Confound diagnostics</h2>"
        f"<p><strong>{moved} moved.</strong> What else changed along with the attribute, on the audit's own pairs: "
        "negative-control outcomes that must not depend on it (audit.negative_controls) and off-target drift read by "
        "the judge (other protected attributes, brightness and colour outside the person, judge.max_drift). A "
        "difference on a transition where one of these moved is marked confounded, not called.</p>"
        "<table><tr><th>attribute</th><th>transition</th><th>what</th><th>change</th><th>control</th>"
        "<th>threshold</th><th>verdict</th></tr>" + "".join(body) + "</table>"
    )


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
        parts.append(f"<h3>{escaped(title)}</h3>" + bar_chart_svg(bars, fmt=fmt, domain=domain))
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
    averaged = [r for r in rows if r.get("query") is None and r.get("protocol")]
    if not queries and not averaged:
        return ""
    parts = [
        "<h2>Retrieval skew per query</h2>",
        "<p>Skew<sub>a</sub>@K = ln(share of group a in the top K / its desired share): 0 is the desired share, "
        "positive over-represented, negative under-represented; a group absent from the top K is shown as n/a "
        "(its skew is −∞). NDKL is 0 when every prefix of the ranking has the desired mix (Geyik et al. 2019); "
        "NDKL@K stops at rank K. Under each query: the protocol each number was measured under "
        "(<code>audit.skew_protocol</code>), its K and its desired distribution (docs/metrics.md).</p>",
    ]
    names = {"skew": "Skew", "max_skew": "MaxSkew", "min_skew": "MinSkew", "ndkl": "NDKL"}

    def bars_of(chosen: list[dict[str, Any]]) -> str:
        chosen.sort(key=lambda r: (_stratum_rank(r), str(r["attribute"]), _SKEW_KINDS.index(metric_kind(r["metric"])),
                                   r["metric"], str(r.get("group"))))
        bars = []
        for r in chosen:
            k = metric_k(r["metric"])
            label = (f"{r['attribute']} {names[metric_kind(r['metric'])]}" + (f"@{k}" if k else "")
                     + (f" ({r['group']})" if r.get("group") else "") + _stratum_tag(r))
            bars.append(Bar(label, r["value"], r.get("ci_low"), r.get("ci_high"), r.get("n"), r.get("note")))
        # What each ranking was measured against, once per (stratum, attribute, K, D, protocol).
        bases = dict.fromkeys(f"{r['attribute']}{_stratum_tag(r)}: {ranking_basis(r)}" for r in chosen if r.get("protocol"))
        basis = f"<p class='basis'>{'<br>'.join(escaped(b) for b in bases)}</p>" if bases else ""
        return basis + bar_chart_svg(bars, fmt=number)

    for query in queries:
        parts.append(f"<h3>Query: {escaped(query)}</h3>" + bars_of([r for r in rows if r.get("query") == query]))
    if averaged:
        parts.append("<h3>Averaged over the queries (each ranking its own sets)</h3>" + bars_of(averaged))
    return "".join(parts)


def _accounting_section(manifest: Mapping[str, Any], quarantine: pl.DataFrame | None) -> str:
    acc = manifest.get("row_accounting") or {}
    parts = ["<h2>Row accounting</h2>"]
    if acc:
        parts.append(key_value_table([(k, acc.get(k)) for k in ROW_ACCOUNTING_KEYS if k in acc]
                                      + [(k, v) for k, v in acc.items() if k not in ROW_ACCOUNTING_KEYS]))
        problems = manifest.get("row_accounting_problems")
        if problems is None:
            problems = check_row_accounting(acc)
        if problems:
            parts.append("".join(f'<p class="problem">Accounting does not close: {escaped(p)}</p>' for p in problems))
        else:
            parts.append(
                '<p class="ok">Accounting closes: rows in = valid + quarantined; '
                "planned = kept + dropped + failed.</p>"
            )
    else:
        parts.append("<p>Row accounting was not recorded.</p>")
    generation = manifest.get("generation_counts") or {}
    if generation:
        parts.append("<h3>Generation (images: one per unique content key)</h3>" + key_value_table(
            [(k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in generation.items()]
        ))
    if manifest.get("cache_hits") is not None:
        parts.append(f"<p>Cache hits (work reused from earlier runs): {escaped(manifest['cache_hits'])}</p>")
    parts.append(_quarantine_summary(quarantine, acc))
    return "".join(parts)


def _quarantine_summary(quarantine: pl.DataFrame | None, acc: Mapping[str, Any]) -> str:
    parts = ["<h3>Quarantine</h3>"]
    if quarantine is None or quarantine.is_empty() or "reason" not in quarantine.columns:
        count = acc.get("quarantined")
        parts.append(f"<p>{escaped(count if count is not None else 'No')} row(s) quarantined.</p>")
        return "".join(parts)
    reasons = quarantine.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
    rows = "".join(f"<tr><td>{escaped(r)}</td><td>{n}</td></tr>" for r, n in reasons.iter_rows())
    parts.append(f"<table><tr><th>reason</th><th>rows</th></tr>{rows}</table>")
    columns = [c for c in ("id", "reason", "detail") if c in quarantine.columns]
    sample = quarantine.select(columns).head(20).to_dicts()
    cells = "".join(
        "<tr>" + "".join(f"<td>{escaped(truncated(r.get(c)))}</td>" for c in columns) + "</tr>" for r in sample
    )
    head = "".join(f"<th>{escaped(c)}</th>" for c in columns)
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
    head = "".join(f"<th>{escaped(c)}</th>" for c in columns)

    def cell(row: Mapping[str, Any], column: str) -> str:
        value = row[column]
        if column == "value" and (value is None or (isinstance(value, float) and math.isnan(value))):
            return '<td class="undefined">undefined</td>'
        if isinstance(value, float):
            return f"<td>{escaped(number(value))}</td>"
        return f"<td>{escaped(value)}</td>"

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
        parts.append("<details><summary>Library versions</summary>" + key_value_table(sorted(versions.items())) + "</details>")
    if manifest.get("config"):
        # a manifest from elsewhere may predate redaction
        from counterfactual_lab.storage.redaction import redact

        config = json.dumps(redact(manifest["config"]), indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>Config</summary><pre>{escaped(config)}</pre></details>")
    tables = manifest.get("tables") or {}
    if tables:
        parts.append("<details><summary>Tables</summary>" + key_value_table(sorted(tables.items())) + "</details>")
    return "".join(parts)


# --- generative model under audit (counterfactual_lab/auditees) ----------------------------------


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


# --- SVG bar chart -------------------------------------------------------------------------


