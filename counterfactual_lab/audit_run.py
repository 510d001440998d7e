"""What one audit run is: its id, its candidate table, and its accounting.

Plain functions the orchestration layer strings together; nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from counterfactual_lab.config import AuditConfig
from counterfactual_lab.spec import DatasetSpec
from counterfactual_lab.storage import absolute_uri, join
from counterfactual_lab.plan import WorkItem

CANDIDATE_SCHEMA = {
    "source_id": pl.String,
    "source_key": pl.String,
    "source_image_uri": pl.String,
    "attribute": pl.String,
    "source_value": pl.String,
    "target_value": pl.String,
    "variant": pl.String,
    "control": pl.Boolean,
    "set_id": pl.String,
    "method": pl.String,
    "seed": pl.Int64,
    "caption": pl.String,
    "counterfactual_caption": pl.String,
    "explanation": pl.String,
    "instruction": pl.String,
    "content_key": pl.String,
    "image_uri": pl.String,
    "status": pl.String,
    "error": pl.String,
    "oom_halvings": pl.Int64,
}


def run_id_for(config: AuditConfig, spec: DatasetSpec, dataset_fingerprint: str, evaluate: bool = True) -> str:
    """A run id that is the same for the same config, the same data and the same stages.

    Re-running an interrupted audit therefore writes into the same run folder and finishes it,
    and a scheduled audit of unchanged data reproduces the same run instead of a near-copy.
    A generate-only run (``evaluate=False``, ``cflab generate``) is a different run
    (``<dataset>-generate-<digest>``): sharing a folder with the full audit would leave that
    audit's predictions and metrics beside a manifest that does not vouch for them.
    """
    from counterfactual_lab import __version__

    # What the audit reads: the config's stages and the *resolved* dataset spec (columns,
    # vocabularies, limits), not the config's reference to a spec file, whose contents can change.
    relevant = config.model_dump(exclude={"output", "runtime", "base_dir", "dataset"})
    dataset = spec.model_dump(exclude={"storage_options"})
    # The library version is part of the identity: a fixed metric must not be served from an old run.
    payload = json.dumps([relevant, dataset, dataset_fingerprint, __version__], sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "-" for c in spec.name) or "dataset"
    return f"{safe_name}-{digest}" if evaluate else f"{safe_name}-generate-{digest}"


@dataclass(frozen=True)
class RunLocation:
    """Where one audit run lives, and what identifies it."""

    spec: DatasetSpec
    out_uri: str
    storage_options: dict[str, Any] | None
    dataset_fingerprint: str
    run_id: str

    @property
    def run_uri(self) -> str:
        return join(self.out_uri, self.run_id)


def locate_run(
    config: AuditConfig, dataset_uri: str | None = None, output_uri: str | None = None, evaluate: bool = True
) -> RunLocation:
    """Resolve the dataset and output, fingerprint the data and derive the run id (one listing, no reads)."""
    from counterfactual_lab.dataset_watch import fingerprint

    spec = config.dataset_spec(dataset_uri)
    dataset_fingerprint = fingerprint(spec.uri, spec.storage_options)
    return RunLocation(
        spec=spec,
        out_uri=absolute_uri(output_uri or config.output.uri),
        storage_options=config.output.storage_options or None,
        dataset_fingerprint=dataset_fingerprint,
        run_id=run_id_for(config, spec, dataset_fingerprint, evaluate),
    )


def candidates_frame(items: list[WorkItem], records: list[Any], method: str) -> pl.DataFrame:
    """One row per planned work item, joined with its generation record (by content key).

    ``variant`` ("counterfactual" | "reconstruction"), ``control`` and ``set_id`` (one per
    (source, attribute, seed), see :func:`counterfactual_lab.plan.set_id_for`) say how the
    judge groups the candidates and how the evaluation pool uses them. Items that share a
    content key share its record (and image).
    """
    by_key = {record.content_key: record for record in records}
    rows = []
    for item in items:
        record = by_key.get(item.content_key)
        rows.append(
            {
                "source_id": item.source_id,
                "source_key": item.source_key,
                "source_image_uri": item.source_image_uri,
                "attribute": item.attribute,
                "source_value": item.source_value,
                "target_value": item.target_value,
                "variant": item.variant,
                "control": item.control,
                "set_id": item.set_id,
                "method": method,
                "seed": item.seed,
                "caption": item.caption,
                "counterfactual_caption": item.counterfactual_caption,
                "explanation": item.explanation,
                "instruction": item.instruction,
                "content_key": item.content_key,
                "image_uri": record.image_uri if record else None,
                "status": record.status if record else "failed",
                "error": (record.error if record else "no generation record (batch lost)"),
                "oom_halvings": record.oom_halvings if record else 0,
            }
        )
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)


def as_cache_hits(records: list[Any]) -> list[Any]:
    """The records of a batch served whole by the orchestrator's task cache, as this run saw them.

    A cached task result holds the records of the run that made the images (status
    ``generated``); for this run those images were reused, so they count as cache hits.
    Failures stay failures.
    """
    return [replace(r, status="cached", seconds=0.0) if r.status == "generated" else r for r in records]


def generation_counts(records: list[Any]) -> dict[str, int]:
    """How many items were generated, served from the store, or failed; OOM halvings."""
    statuses = Counter(record.status for record in records)
    return {
        "generated": statuses.get("generated", 0),
        "cache_hits": statuses.get("cached", 0),
        "failed": statuses.get("failed", 0),
        "oom_halvings": sum(record.oom_halvings for record in records),
    }


def row_accounting(rows_in: int, valid: int, quarantined: int, counterfactuals: pl.DataFrame) -> dict[str, Any]:
    """Rows in = valid + quarantined; planned = kept + dropped + failed, with drop reasons."""
    if counterfactuals.is_empty():
        kept = dropped = failed = 0
        by_reason: dict[str, int] = {}
    else:
        failed_mask = pl.col("status") == "failed"
        kept = counterfactuals.filter(pl.col("kept")).height
        failed = counterfactuals.filter(failed_mask).height
        dropped_rows = counterfactuals.filter(~pl.col("kept") & ~failed_mask)
        dropped = dropped_rows.height
        by_reason = {
            str(reason): int(n)
            for reason, n in dropped_rows.group_by("drop_reason").len().sort("drop_reason").iter_rows()
        }
    return {
        "rows_in": rows_in,
        "valid": valid,
        "quarantined": quarantined,
        "planned": counterfactuals.height,
        "kept": kept,
        "dropped": dropped,
        "failed": failed,
        "dropped_by_reason": by_reason,
    }


def is_tiny_model(model: str) -> bool:
    """True for a model folder built by ``cflab models tiny`` (random weights, numbers mean nothing)."""
    from pathlib import Path

    from counterfactual_lab.tiny_models import TINY_MARKER

    return (Path(model).expanduser() / TINY_MARKER).exists()


def publish_run(
    *,
    publisher: Any,
    config: AuditConfig,
    dataset: dict[str, Any],
    tables: dict[str, pl.DataFrame],
    accounting: dict[str, Any],
    counts: dict[str, int],
    started_at: Any,
    finished_at: Any,
    load_image: Any,
) -> dict[str, Any]:
    """Write every table, the HTML report, then ``manifest.json`` last; returns the manifest."""
    from counterfactual_lab.manifest import build_manifest
    from counterfactual_lab.publish import REPORT_NAME
    from counterfactual_lab.report_html import render_report

    uris = {name: publisher.write_table(name, frame) for name, frame in tables.items()}
    models = {
        "generator": {"model": config.generation.model, "revision": config.generation.revision,
                      "method": config.generation.method},
        "judge": {"model": config.judge.model, "revision": config.judge.revision},
        "audit": {"model": config.audit.model, "revision": config.audit.revision},
    }
    manifest = build_manifest(
        run_id=publisher.run_id,
        config=config.model_dump(mode="json", exclude={"base_dir"}),
        dataset=dataset,
        models=models,
        row_accounting=accounting,
        generation_counts=counts,
        cache_hits=counts.get("cache_hits", 0),
        tables=uris,
        started_at=started_at,
        finished_at=finished_at,
        tiny_models=any(is_tiny_model(m["model"]) for m in models.values()),
    )
    html = render_report(
        manifest=manifest,
        metrics=tables.get("metrics", pl.DataFrame()),
        counterfactuals=tables.get("counterfactuals", pl.DataFrame()),
        predictions=tables.get("predictions", pl.DataFrame()),
        quarantine=tables.get("quarantine"),
        load_image=load_image,
    )
    manifest["report"] = publisher.write_text(REPORT_NAME, html)
    publisher.write_manifest(manifest)
    return manifest
