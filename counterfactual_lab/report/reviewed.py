"""People's review in a published run: apply the labels to it, and the lines the report shows.

:func:`apply_review` is ``cflab review RUN --apply``: from ``review/labels.parquet`` and the run's
counterfactuals it writes ``review.parquet``, replaces the review rows of ``metrics.parquet``,
renders ``report.html`` again and writes ``manifest.json`` last with its ``review`` block (the
run is marked incomplete while it writes, as publishing does). :func:`review_for_publish` is the
same computation inside an audit's publish, so the next audit of a run carries its review.
:func:`refresh_review` is what an audit of an already complete run does about new labels.

What the report shows of it: :mod:`counterfactual_lab.report.review_summary`.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.metrics.schema import METRICS_SCHEMA
from counterfactual_lab.report.html import image_loader, render_report
from counterfactual_lab.review.exclusion import sets_to_exclude
from counterfactual_lab.review.figures import (
    ReviewFigures,
    interval_settings,
    is_review_row,
    labels_sha256,
    review_figures,
)
from counterfactual_lab.review.labels import labels_uri, read_labels
from counterfactual_lab.review.sample import read_sample_record
from counterfactual_lab.review.sets import review_sets
from counterfactual_lab.runs.publisher import MANIFEST_NAME, REPORT_NAME, RunPublisher, read_manifest
from counterfactual_lab.runs.reader import RUN_TABLE_MAX_BYTES, RunTables, read_run
from counterfactual_lab.storage.files import exists, join, read_bytes

# refresh_review's answers.
REVIEW_CURRENT, REVIEW_APPLIED, REVIEW_NEEDS_RERUN = "current", "applied", "needs rerun"


def review_for_publish(run_uri: str, counterfactuals: pl.DataFrame, manifest_metrics: dict[str, Any] | None,
                       exclude_rejected: bool, excluded_sets: list[str] | None = None,
                       storage_options: dict[str, Any] | None = None) -> ReviewFigures | None:
    """The run's review from the labels beside it; None when nobody has labelled it."""
    labels = read_labels(run_uri, storage_options)
    if labels.is_empty() or counterfactuals.is_empty():
        return None
    return review_figures(labels, review_sets(counterfactuals, run_uri), interval_settings(manifest_metrics),
                          exclude_rejected=exclude_rejected, excluded_sets=excluded_sets or [],
                          sample=read_sample_record(run_uri, storage_options))


def with_review_rows(metrics: pl.DataFrame, figures: ReviewFigures) -> pl.DataFrame:
    """``metrics`` with its review rows replaced by ``figures``'."""
    columns = [c for c in METRICS_SCHEMA if c in metrics.columns]
    kept = metrics.filter(~is_review_row(metrics)).select(columns) if metrics.height else metrics.select(columns)
    return pl.concat([kept, figures.metrics], how="diagonal_relaxed")


@dataclass(frozen=True)
class AppliedReview:
    """What :func:`apply_review` wrote: the figures, the report, and the sets people rejected that the
    audit's metrics still hold although the run's config leaves rejected sets out."""

    figures: ReviewFigures
    report_uri: str
    not_yet_excluded: list[str]


def _exclusion(run: RunTables) -> tuple[bool, list[str]]:
    """The run's ``review.exclude_rejected`` and the sets its metrics were computed without."""
    config = (run.manifest.get("config") or {}).get("review") or {}
    return bool(config.get("exclude_rejected")), list((run.manifest.get("review") or {}).get("excluded_sets") or [])


def apply_review(run_uri: str, storage_options: dict[str, Any] | None = None) -> AppliedReview:
    """``cflab review RUN --apply`` (module docstring); raises :class:`UserError` for a missing run,
    a run without counterfactuals, or a run nobody has labelled."""
    run = read_run(run_uri, storage_options)
    sets = review_sets(run.counterfactuals, run.run_uri)  # a run without counterfactuals: one line, nothing written
    labels = read_labels(run.run_uri, storage_options)
    if labels.is_empty():
        raise UserError(f"no labels at {labels_uri(run.run_uri)} yet: review the run first "
                        f"(cflab review {run.run_uri} --reviewer NAME) or import labels (--import FILE)")
    exclude, excluded = _exclusion(run)
    figures = review_figures(labels, sets, interval_settings(run.manifest.get("metrics")), exclude_rejected=exclude,
                             excluded_sets=excluded, sample=read_sample_record(run.run_uri, storage_options))
    parent, run_id = posixpath.split(run.run_uri.rstrip("/"))
    dataset = (run.manifest.get("dataset") or {}).get("name") or ""
    publisher = RunPublisher(parent or ".", run_id, dataset, storage_options)
    manifest = dict(run.manifest)
    tables = dict(manifest.get("tables") or {})
    metrics = run.metrics
    if run.metrics.height or "metrics" in tables:  # a generate-only run has no metrics table to add rows to
        metrics = with_review_rows(run.metrics, figures)
        tables["metrics"] = publisher.write_table("metrics", metrics)
    tables["review"] = publisher.write_table("review", figures.review)
    manifest.update(tables=tables, review=figures.manifest)
    html = render_report(manifest=manifest, metrics=metrics, counterfactuals=run.counterfactuals,
                         predictions=run.predictions, quarantine=run.quarantine, probes=run.probes,
                         generations=run.generations, load_image=image_loader(storage_options))
    manifest["report"] = publisher.write_text(REPORT_NAME, html)
    publisher.write_manifest(manifest)
    pending = sorted(set(figures.manifest["rejected_sets"]) - set(excluded)) if exclude else []
    return AppliedReview(figures, manifest["report"], pending)


def refresh_review(run_uri: str, exclude_rejected: bool, storage_options: dict[str, Any] | None = None) -> str:
    """What a new audit of an already complete run does about its review: nothing when the run is
    current (:data:`REVIEW_CURRENT`); apply new labels (:data:`REVIEW_APPLIED`); or, when the run's
    metrics must leave out other sets than they do (``exclude_rejected``, the config's setting),
    :data:`REVIEW_NEEDS_RERUN`: the caller runs the stages again (the images are cached).

    A run nobody reviewed costs one look for its labels file and one read of its manifest; the
    counterfactuals are read only where sets are or should be left out."""
    run_uri = run_uri.rstrip("/")
    manifest = read_manifest(join(run_uri, MANIFEST_NAME), storage_options)
    published = manifest.get("review") or {}
    if not published and not exists(labels_uri(run_uri), storage_options):
        return REVIEW_CURRENT
    labels = read_labels(run_uri, storage_options)
    excluded = set(published.get("excluded_sets") or [])
    if exclude_rejected or excluded:
        counterfactuals = pl.read_parquet(io.BytesIO(read_bytes(join(run_uri, "counterfactuals.parquet"), storage_options,
                                                            max_bytes=RUN_TABLE_MAX_BYTES, what="a run table")))
        wanted = set(sets_to_exclude(counterfactuals, run_uri, storage_options)) if exclude_rejected else set()
        if wanted != excluded:
            return REVIEW_NEEDS_RERUN
    if labels.is_empty() or labels_sha256(labels) == published.get("labels_sha256"):
        return REVIEW_CURRENT
    apply_review(run_uri, storage_options)
    return REVIEW_APPLIED
