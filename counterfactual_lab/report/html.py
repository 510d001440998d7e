"""``report.html``: the human report of one run, one self-contained file (``templates/report.html.j2``).

**The first screen answers** (1280 × 800): which models ran (the first line of the body, after a
failed run's banner; for tiny random-weight models it says the numbers mean nothing), people's
review when there is one (``<section id="people">``, right after the heading), the run's verdict
in one sentence, the judge's pass rate and the run's size, the called and confounded findings
only (each on one line beside its control and ``min_effect``), and one forest plot per family of
comparisons (:mod:`counterfactual_lab.report.forests`). **Everything else** sits below in closed
``<details>`` sections: the findings in words, the full metrics table (sortable, filterable and
paged by the page's small script, from JSON: :mod:`counterfactual_lab.report.table`), every
forest plot, the reported-not-called metrics (strata, group metrics, CITS, retrieval skew), the
confound diagnostics where the table has them, the generative probes, example images, row
accounting and quarantine, and provenance.

**Size does not grow with the audit**: the summary stays one screen, plots and lists are capped,
example images are a capped number of WebP thumbnails, and the table is data, not DOM: a report
over 10⁴ metric rows is a few MB and opens in well under 2 s.

Nothing is fetched when it opens (images are data URIs, charts inline SVG, styles and the script
inline, a CSP that allows no network), so it can be mailed, attached to a ticket or opened from
S3 offline. Every piece of dataset text is escaped by the templates (:mod:`templating`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from counterfactual_lab.metrics.diagnostics import diagnostic_words, is_channel
from counterfactual_lab.metrics.findings import REFERENCE_NONE, VERDICT_MOVED
from counterfactual_lab.report.descriptive import descriptive
from counterfactual_lab.report.designs import designs_section
from counterfactual_lab.report.examples import ImageInliner, examples
from counterfactual_lab.report.findings import assess_findings, settings_of, verdict_lines
from counterfactual_lab.report.forests import report_forests
from counterfactual_lab.report.generative import generative_section
from counterfactual_lab.report.intersections import intersection_lines
from counterfactual_lab.report.markdown import models_line
from counterfactual_lab.report.modalities import modalities_view
from counterfactual_lab.report.review_summary import review_lines
from counterfactual_lab.report.sentences import STRATUM_TITLES, number
from counterfactual_lab.report.summary import summarise
from counterfactual_lab.report.table import as_payload, metrics_table
from counterfactual_lab.report.templating import render, short_time
from counterfactual_lab.runs.failure import failure_banner
from counterfactual_lab.runs.manifest import ROW_ACCOUNTING_KEYS, check_row_accounting
from counterfactual_lab.storage.files import read_image
from counterfactual_lab.storage.redaction import redact

# Comparisons listed in words in the "Headline findings" section (the rest: the metrics table).
SENTENCES_SHOWN = 60
QUARANTINE_SHOWN = 20
DIAGNOSTICS_SHOWN = 200
CELL_CHARS = 200


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
    """The report as one HTML string (module doc).

    ``probes`` and ``generations`` (a generative model under audit) add the generative section.
    ``load_image(uri)`` returns a PIL image; an image that fails to load is shown as a
    placeholder naming the URI instead of failing the report. At most ``max_examples``
    counterfactuals are shown (:mod:`counterfactual_lab.report.examples`).
    """
    metrics = metrics if metrics is not None else pl.DataFrame()
    manifest_metrics = manifest.get("metrics") or {}
    findings = assess_findings(metrics)
    images = ImageInliner(load_image)
    failed = failure_banner(manifest)
    tiny = bool(manifest.get("tiny_models"))
    run_id = str(manifest.get("run_id", ""))
    dataset = manifest.get("dataset") or {}
    title = ("FAILED: " if failed else "") + f"Counterfactual audit {run_id}" + (" (tiny test models)" if tiny else "")
    forests = report_forests(findings, manifest_metrics)
    table = metrics_table(metrics, findings)
    review = review_lines(dict(manifest), metrics)
    confidence = manifest_metrics.get("confidence", 0.95)
    return render(
        "report.html.j2",
        title=title,
        failed=failed,
        models=models_line(manifest),
        tiny=tiny,
        run_id=run_id,
        heading=" · ".join(p for p in (dataset.get("name"), short_time(manifest.get("finished_at"))) if p),
        review=review,
        summary=summarise(manifest, metrics, findings),
        forests=forests,
        compared=_compared_sentences(findings),
        verdict_notes=verdict_lines(findings, *settings_of(manifest)) if findings.height else [],
        table=table,
        table_payload=as_payload(table),
        descriptive=descriptive(findings),
        modalities=modalities_view(findings),
        intersections=intersection_lines(metrics, manifest),
        designs=designs_section(findings, metrics),
        diagnostics=_diagnostics(findings),
        generative=generative_section(metrics, predictions, probes, generations, images,
                                      manifest_config=manifest.get("config"), confidence=confidence),
        examples=examples(counterfactuals, predictions, images, max_examples),
        accounting=_accounting(manifest, quarantine),
        provenance=_provenance(manifest),
    )


def image_loader(storage_options: dict[str, Any] | None = None) -> Callable[[str], Any]:
    """A ``load_image`` for :func:`render_report` that reads local paths and ``s3://`` URIs."""
    return functools.partial(read_image, options=storage_options)


def _cut(value: Any, limit: int = CELL_CHARS) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compared_sentences(findings: pl.DataFrame) -> dict[str, Any]:
    """The comparisons in words (headline order), capped at :data:`SENTENCES_SHOWN`."""
    if findings.is_empty():
        return {"rows": [], "total": 0}
    compared = findings.filter(pl.col("reference") != REFERENCE_NONE)
    if "diagnostic" in compared.columns:
        compared = compared.filter(~pl.col("diagnostic").fill_null(False))
    rows = [{"stratum": STRATUM_TITLES.get(r["stratum"], r["stratum"]), "sentence": r["sentence"],
             "verdict": "called" if r["called"] else str(r["verdict"]), "why": _reason(r)}
            for r in compared.head(SENTENCES_SHOWN).iter_rows(named=True)]
    return {"rows": rows, "total": compared.height}


def _reason(row: Mapping[str, Any]) -> str:
    """Why a row is not called, where the decision says ("below min_effect", ...), else ""."""
    reason = row.get("reason")
    return "" if not reason or reason == row.get("verdict") or row.get("called") else str(reason)


def _diagnostics(findings: pl.DataFrame) -> list[dict[str, str]]:
    """The confound diagnostics per attribute and transition, those that moved first: what each measures,
    its change (a colour channel also in grey levels) and control with their intervals, its threshold."""
    if findings.is_empty() or "diagnostic" not in findings.columns:
        return []
    rows = findings.filter(pl.col("diagnostic").fill_null(False))
    rows = rows.with_columns((pl.col("verdict") != VERDICT_MOVED).alias("_quiet")).sort(
        ["_quiet", "stratum", "attribute", "group", "metric", "label"], nulls_last=False)
    out = []
    for r in rows.head(DIAGNOSTICS_SHOWN).iter_rows(named=True):
        grey = f" ({r['value'] * 255:+.1f} grey levels)" if r["value"] is not None and is_channel(r["metric"]) else ""
        out.append({"attribute": str(r["attribute"]), "group": str(r["group"] or "every transition"),
                    "what": diagnostic_words(r["metric"], r.get("label"), r.get("query")),
                    "change": number(r["value"]) + grey + _interval(r["ci_low"], r["ci_high"]),
                    "control": "" if r["control_value"] is None else number(r["control_value"]) + _interval(
                        r["control_ci_low"], r["control_ci_high"]),
                    "threshold": number(r.get("min_effect")), "verdict": str(r["verdict"]), "why": _reason(r)})
    return out


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f" [{number(low)}, {number(high)}]"


def _accounting(manifest: Mapping[str, Any], quarantine: pl.DataFrame | None) -> dict[str, Any]:
    acc = manifest.get("row_accounting") or {}
    problems = manifest.get("row_accounting_problems")
    if problems is None:
        problems = check_row_accounting(acc) if acc else []
    generation = manifest.get("generation_counts") or {}
    out: dict[str, Any] = {
        "rows": [(k, acc.get(k)) for k in ROW_ACCOUNTING_KEYS if k in acc]
        + [(k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in acc.items()
           if k not in ROW_ACCOUNTING_KEYS],
        "problems": list(problems),
        "generation": [(k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in generation.items()],
        "cache_hits": manifest.get("cache_hits"),
        "quarantined": acc.get("quarantined"),
        "reasons": [],
        "sample_columns": [],
        "sample": [],
        "quarantine_rows": 0,
    }
    if quarantine is not None and not quarantine.is_empty() and "reason" in quarantine.columns:
        reasons = quarantine.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
        columns = [c for c in ("id", "reason", "detail") if c in quarantine.columns]
        out.update(reasons=[(str(r), n) for r, n in reasons.iter_rows()], sample_columns=columns,
                   sample=[[_cut(v) for v in row] for row in quarantine.select(columns).head(QUARANTINE_SHOWN).iter_rows()],
                   quarantine_rows=quarantine.height)
    return out


def _provenance(manifest: Mapping[str, Any]) -> dict[str, Any]:
    dataset = manifest.get("dataset") or {}
    run = [("run id", manifest.get("run_id")), ("dataset", dataset.get("name")), ("dataset URI", dataset.get("uri")),
           ("dataset fingerprint", dataset.get("fingerprint")), ("started", manifest.get("started_at")),
           ("finished", manifest.get("finished_at"))]
    config = manifest.get("config")
    return {
        "run": [(k, v) for k, v in run if v is not None],
        "versions": sorted((manifest.get("versions") or {}).items()),
        # a manifest from elsewhere may predate redaction
        "config": json.dumps(redact(config), indent=2, sort_keys=True, default=str) if config else "",
        "tables": sorted((manifest.get("tables") or {}).items()),
    }
