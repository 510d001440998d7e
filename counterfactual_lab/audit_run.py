"""What one audit run is: its id, its candidate table, and its accounting.

Plain functions the orchestration layer strings together; nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from counterfactual_lab.config import AuditConfig
from counterfactual_lab.errors import UserError
from counterfactual_lab.model_identity import ModelIdentity
from counterfactual_lab.redaction import RedactedInJson, redact
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


# text2image-sets: (attribute, value) of each attribute a set member varies, in template order.
ATTRIBUTE_VALUES_TYPE = pl.List(pl.Struct({"attribute": pl.String, "value": pl.String}))

# Which config section names the model of each role, and under which keys (default: model, revision).
MODEL_SECTIONS = {"generator": "generation", "judge": "judge", "audit": "audit", "toxicity": "audit"}
MODEL_KEYS = {"toxicity": ("toxicity_model", "toxicity_revision")}


def model_reference(config: AuditConfig, role: str) -> tuple[str | None, str | None]:
    """(model, revision) of ``role`` as the config names them."""
    section = getattr(config, MODEL_SECTIONS[role])
    model_key, revision_key = MODEL_KEYS.get(role, ("model", "revision"))
    return getattr(section, model_key), getattr(section, revision_key)


def model_roles(spec: DatasetSpec, evaluate: bool, config: AuditConfig | None = None) -> list[str]:
    """The roles whose models the run loads: generation and judge unless the dataset already holds
    counterfactual sets; the model under audit unless the run stops after the judge; the toxicity
    classifier when ``config`` has one and generations for it to score."""
    roles = [] if spec.columns.counterfactual_set else ["generator", "judge"]
    roles += ["audit"] if evaluate else []
    if evaluate and config is not None and config.audit.toxicity_model and config.audit.generate.prompts:
        roles.append("toxicity")
    return roles


def run_identity(
    config: AuditConfig, spec: DatasetSpec, dataset_fingerprint: str, models: dict[str, ModelIdentity]
) -> dict[str, Any]:
    """What the run id hashes: what things are, never how they are spelled.

    * the stages of the config (attributes, generation, judge, audit), with each model path and
      revision replaced by the model's identity (sha256 of its files, or a hub commit), so a
      relative and an absolute path to one folder, or two copies of it, are one model;
    * the dataset by its content fingerprint and the resolved spec's columns, vocabularies and
      limits (what ingest reads), not by its URI or the spec file's name;
    * the library version: a fixed metric must not be served from an old run.

    The output location and the runtime (threads or Ray, workers, retries) are left out: they
    decide where and how fast, not what. The dataset name is left out too; it prefixes the id.
    """
    from counterfactual_lab import __version__

    stages = config.model_dump(mode="json", exclude={"output", "runtime", "base_dir", "dataset"})
    for role, section in MODEL_SECTIONS.items():
        for key in MODEL_KEYS.get(role, ("model", "revision")):
            stages[section].pop(key, None)
    if config.audit.generate.prompts:
        # The lexicon by content, like a model: its words change the lexicon_ metrics, its path does not.
        from counterfactual_lab.auditees.lexicon import load_lexicon

        stages["audit"]["lexicon"] = "sha256:" + load_lexicon(config.audit.lexicon, config.base_dir).digest()
    mask = stages["generation"]["params"].get("mask")
    if isinstance(mask, dict):  # the CLIPSeg model of inpainting masks: by identity (models.segmenter)
        mask.pop("model", None)
    return {
        "library_version": __version__,
        "stages": stages,
        "models": {role: models[role].key for role in sorted(models)},
        "dataset": {
            "fingerprint": dataset_fingerprint,
            "spec": spec.model_dump(mode="json", exclude={"storage_options", "uri", "name"}),
        },
    }


def run_id_for(dataset_name: str, identity: dict[str, Any], evaluate: bool = True) -> str:
    """``<dataset name>-<12 hex digits of sha256(identity)>``: the same for the same audit.

    Re-running an interrupted audit therefore writes into the same run folder and finishes it,
    and a scheduled audit of unchanged data reproduces the same run instead of a near-copy.
    A generate-only run (``evaluate=False``, ``cflab generate``) is a different run
    (``<dataset>-generate-<digest>``): sharing a folder with the full audit would leave that
    audit's predictions and metrics beside a manifest that does not vouch for them.
    """
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset_name).strip("-") or "dataset"
    return f"{safe_name}-{digest}" if evaluate else f"{safe_name}-generate-{digest}"


def dataset_name_for_uri(uri: str) -> str:
    """A dataset's name from its URI: the last path part without extension, glob parts skipped
    (``s3://b/incoming/batch-7`` -> ``batch-7``; ``/data/x/part-*.parquet`` -> ``x``)."""
    parts = [p for p in uri.split("://", 1)[-1].rstrip("/").split("/") if p]
    while parts and any(ch in parts[-1] for ch in "*?["):
        parts.pop()
    name = parts[-1] if parts else ""
    for suffix in (".parquet", ".yaml", ".yml"):
        name = name.removesuffix(suffix)
    return name or "dataset"


def audited_spec(config: AuditConfig, dataset_uri: str | None = None, spec: DatasetSpec | None = None) -> DatasetSpec:
    """The dataset spec of the data this run audits, named after that data.

    ``dataset_uri`` (``--dataset``, a deployment's parameter, the watcher's event) replaces the
    config's dataset; a URI that points elsewhere than the config's own dataset gives the run the
    name of the data it audits (its folder or file name), not the config's dataset name. A spec
    YAML brings its own name. ``spec``: the dataset spec when the caller has already resolved it
    (e.g. with credentials from a Secret block); by default ``config.dataset_spec(dataset_uri)``.
    """
    spec = spec if spec is not None else config.dataset_spec(dataset_uri)
    if not dataset_uri or dataset_uri.endswith((".yaml", ".yml")):
        return spec
    try:
        configured = config.dataset_spec(None).uri
    except UserError:
        configured = None
    if configured is not None and absolute_uri(configured).rstrip("/") == absolute_uri(dataset_uri).rstrip("/"):
        return spec
    return spec.model_copy(update={"name": dataset_name_for_uri(dataset_uri)})


class RunLocation(RedactedInJson, BaseModel):
    """Where one audit run lives, and what identifies it.

    A pydantic model (not a dataclass) so that its JSON dump, which Prefect stores as a flow-run
    parameter, has the output's and the dataset's credentials redacted.
    """

    model_config = ConfigDict(frozen=True)

    spec: DatasetSpec
    out_uri: str
    storage_options: dict[str, Any] | None
    dataset_fingerprint: str
    run_id: str
    # The manifest's dataset details (what the fingerprint covers), the models by role, and
    # what the run id hashes.
    dataset_details: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelIdentity] = Field(default_factory=dict)
    identity: dict[str, Any] = Field(default_factory=dict)

    @property
    def run_uri(self) -> str:
        return join(self.out_uri, self.run_id)


def locate_run(
    config: AuditConfig,
    dataset_uri: str | None = None,
    output_uri: str | None = None,
    evaluate: bool = True,
    spec: DatasetSpec | None = None,
) -> RunLocation:
    """Resolve the dataset, the models and the output, and derive the run id; no Prefect, no model loaded.

    Costs one listing and one stat per file (dataset files, referenced images, model files) once
    their hashes are cached; the first time, each file is read once to hash it. ``spec``: the
    dataset spec when the caller has already resolved it (see :func:`audited_spec`).
    """
    from counterfactual_lab.fingerprints import dataset_fingerprint
    from counterfactual_lab.method_params import METHODS_WITHOUT_WEIGHTS
    from counterfactual_lab.model_identity import model_identity, weightless_identity

    from counterfactual_lab.masks import segmenter_reference
    from counterfactual_lab.text2image_sets import template_fingerprint

    spec = audited_spec(config, dataset_uri, spec)
    fingerprint = template_fingerprint(config) if config.prompts_from_templates() else dataset_fingerprint(spec)
    models = {}
    for role in model_roles(spec, evaluate, config):
        if role == "generator" and config.generation.method in METHODS_WITHOUT_WEIGHTS:
            models[role] = weightless_identity(config.generation.method, config.generation.model)
        else:
            models[role] = model_identity(*model_reference(config, role))
    segmenter = segmenter_reference(config.generation) if "generator" in models else None
    if segmenter is not None:  # inpainting masks from CLIPSeg: a model the run loads too
        models["segmenter"] = model_identity(segmenter, None)
    identity = run_identity(config, spec, fingerprint.value, models)
    return RunLocation(
        spec=spec,
        out_uri=absolute_uri(output_uri or config.output.uri),
        storage_options=config.output.storage_options or None,
        dataset_fingerprint=fingerprint.value,
        run_id=run_id_for(spec.name, identity, evaluate),
        dataset_details=fingerprint.manifest_fields(),
        models=models,
        identity=identity,
    )


def candidates_frame(items: list[WorkItem], records: list[Any], method: str) -> pl.DataFrame:
    """One row per planned work item, joined with its generation record (by content key).

    ``variant`` ("counterfactual" | "reconstruction"), ``control`` and ``set_id`` (one per
    (source, attribute, seed), see :func:`counterfactual_lab.plan.set_id_for`) say how the
    judge groups the candidates and how the evaluation pool uses them. Items that share a
    content key share its record (and image). ``inpaint`` adds ``mask_uri``; ``text2image-sets``
    adds ``attribute_values`` (:data:`ATTRIBUTE_VALUES_TYPE`).
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
    frame = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)
    from counterfactual_lab.method_params import MASKED_METHODS, SOURCELESS_METHODS

    if method in MASKED_METHODS:  # the mask each image was edited inside (null: its source had none)
        frame = frame.with_columns(pl.Series("mask_uri", [item.mask_uri for item in items], dtype=pl.String))
    if method in SOURCELESS_METHODS:  # a text-to-image set member's value of each attribute it varies
        values = [[{"attribute": a, "value": v} for a, v in item.attribute_values] for item in items]
        frame = frame.with_columns(pl.Series("attribute_values", values, dtype=ATTRIBUTE_VALUES_TYPE))
    return frame


def as_cache_hits(records: list[Any]) -> list[Any]:
    """The records of a batch served whole by the orchestrator's task cache, as this run saw them.

    A cached task result holds the records of the run that made the images (status
    ``generated``); for this run those images were reused, so they count as cache hits.
    Failures stay failures.
    """
    return [replace(r, status="cached", seconds=0.0) if r.status == "generated" else r for r in records]


def generation_counts(records: list[Any]) -> dict[str, int]:
    """How many *images* were generated, served from the store, or failed; OOM halvings.

    One generation record per unique content key: work items that share a key (an ``img2img``
    reconstruction asked for by several attributes) share one image and count once here, while
    ``row_accounting`` and a failed run's ``failure`` count work items (candidate rows).
    """
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
    location: RunLocation,
    tables: dict[str, pl.DataFrame],
    accounting: dict[str, Any],
    counts: dict[str, int],
    started_at: Any,
    finished_at: Any,
    load_image: Any,
    failure: dict[str, Any] | None = None,
    auditee_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write every table, the HTML report, then ``manifest.json`` last; returns the manifest.

    ``failure`` (``run_failure.FailedItems.manifest_entry()``) marks the run failed in both.
    ``auditee_counts`` (a generative model under audit): answers computed vs served from the
    output store's cache, the manifest's ``counts.auditee``."""
    from counterfactual_lab.manifest import build_manifest, config_block, metric_parameters
    from counterfactual_lab.publish import REPORT_NAME
    from counterfactual_lab.report_html import render_report

    uris = {name: publisher.write_table(name, frame) for name, frame in tables.items()}
    manifest = build_manifest(
        run_id=publisher.run_id,
        config=config_block(config),
        dataset=redact({"name": location.spec.name, "uri": absolute_uri(location.spec.uri),
                        "fingerprint": location.dataset_fingerprint, **location.dataset_details}),
        models=manifest_models(config, location),
        runtime=_runtime(config, location),
        metrics=metric_parameters(config.audit),
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
    from counterfactual_lab.model_identity import weights_sha256

    models = {role: weights_sha256(identity).manifest_entry() for role, identity in location.models.items()}
    if "generator" in models:
        models["generator"]["method"] = config.generation.method
    return models


def _runtime(config: AuditConfig, location: RunLocation) -> dict[str, Any]:
    from counterfactual_lab.runtime_record import runtime_section

    section = runtime_section(
        {role: (identity.model, identity.revision) for role, identity in location.models.items()},
        config.runtime.device,
    )
    return {**section, "task_runner": config.runtime.task_runner}
