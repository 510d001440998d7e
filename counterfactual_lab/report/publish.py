"""Publish one run: every table, the HTML report, then ``manifest.json`` last (a run without a
manifest is incomplete)."""

from __future__ import annotations

from typing import Any

import polars as pl

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.models.identity import is_tiny_model, weights_sha256
from counterfactual_lab.models.runtime_record import runtime_section
from counterfactual_lab.report.html import render_report
from counterfactual_lab.report.reviewed import review_for_publish, with_review_rows
from counterfactual_lab.runs.location import RunLocation
from counterfactual_lab.runs.manifest import (
    build_manifest,
    config_block,
    metric_parameters,
)
from counterfactual_lab.runs.publisher import REPORT_NAME
from counterfactual_lab.storage.files import absolute_uri
from counterfactual_lab.storage.redaction import redact


def publish_run(
    *,
    publisher: Any,
    config: AuditConfig,
    location: RunLocation,
    tables: dict[str, pl.DataFrame],
    accounting: dict[str, Any],
    counts: dict[str, int],
    started_at: Any,
    finished_at: Any,
    load_image: Any,
    failure: dict[str, Any] | None = None,
    auditee_counts: dict[str, int] | None = None,
    excluded_sets: list[str] | None = None,
) -> dict[str, Any]:
    """Write every table, the HTML report, then ``manifest.json`` last; returns the manifest.

    ``failure`` (``run_failure.FailedItems.manifest_entry()``) marks the run failed in both.
    ``auditee_counts`` (a generative model under audit): answers computed vs served from the
    output store's cache, the manifest's ``counts.auditee``. Where people have labelled the run
    (``review/labels.parquet``), its review is published too: ``review.parquet``, the review rows
    of the metrics, the manifest's ``review`` block; ``excluded_sets``: the sets people rejected
    that the run left out (``review.exclude_rejected``)."""

    review = review_for_publish(publisher.run_uri, tables.get("counterfactuals", pl.DataFrame()),
                                metric_parameters(config.audit), config.review.exclude_rejected, excluded_sets,
                                location.storage_options)
    if review is not None:
        tables = {**tables, "review": review.review}
        if "metrics" in tables:
            tables["metrics"] = with_review_rows(tables["metrics"], review)
    uris = {name: publisher.write_table(name, frame) for name, frame in tables.items()}
    manifest = build_manifest(
        run_id=publisher.run_id,
        config=config_block(config),
        dataset=redact({"name": location.spec.name, "uri": absolute_uri(location.spec.uri),
                        "fingerprint": location.dataset_fingerprint, **location.dataset_details}),
        models=manifest_models(config, location),
        runtime=_runtime(config, location),
        metrics=metric_parameters(config.audit, config.judge, list(config.attributes)),
        run_identity=location.identity,
        row_accounting=accounting,
        generation_counts=counts,
        cache_hits=counts.get("cache_hits", 0),
        tables=uris,
        started_at=started_at,
        finished_at=finished_at,
        tiny_models=any(is_tiny_model(identity.model) for identity in location.models.values()),
        failure=failure,
        counts={"auditee": auditee_counts} if auditee_counts is not None else None,
    )
    if review is not None:
        manifest["review"] = review.manifest
    html = render_report(
        manifest=manifest,
        metrics=tables.get("metrics", pl.DataFrame()),
        counterfactuals=tables.get("counterfactuals", pl.DataFrame()),
        predictions=tables.get("predictions", pl.DataFrame()),
        quarantine=tables.get("quarantine"),
        load_image=load_image,
        probes=tables.get("probes"),
        generations=tables.get("generations"),
    )
    manifest["report"] = publisher.write_text(REPORT_NAME, html)
    publisher.write_manifest(manifest)
    return manifest


def manifest_models(config: AuditConfig, location: RunLocation) -> dict[str, dict[str, Any]]:
    """``models.<role>`` of the manifest: the identity of each model the run loaded, its files'
    sha256 (a hub snapshot is hashed now, after the loaders fetched it), and the generation method."""

    models = {role: weights_sha256(identity).manifest_entry() for role, identity in location.models.items()}
    if "generator" in models:
        models["generator"]["method"] = config.generation.method
    return models


def _runtime(config: AuditConfig, location: RunLocation) -> dict[str, Any]:

    section = runtime_section(
        {role: (identity.model, identity.revision) for role, identity in location.models.items()},
        config.runtime.device,
    )
    return {**section, "task_runner": config.runtime.task_runner}
