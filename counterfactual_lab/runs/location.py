"""Where one audit run lives and what identifies it: the run id from what the run reads, never how it is spelled.

Plain functions the orchestration layer strings together; nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.config.methods import method_facts
from counterfactual_lab.errors import UserError
from counterfactual_lab.generation.text2image_sets import template_fingerprint
from counterfactual_lab.ingest.fingerprints import dataset_fingerprint
from counterfactual_lab.models.identity import (
    ModelIdentity,
    model_identity,
    weightless_identity,
)
from counterfactual_lab.plan.masks import segmenter_reference
from counterfactual_lab.storage.files import absolute_uri, join
from counterfactual_lab.storage.redaction import RedactedInJson
from counterfactual_lab.version import __version__

# Which config section names the model of each role, and under which keys (default: model, revision).
MODEL_SECTIONS = {"generator": "generation", "judge": "judge", "audit": "audit", "toxicity": "audit",
                  "sentiment": "audit", "text_embedder": "audit"}
MODEL_KEYS = {"toxicity": ("toxicity_model", "toxicity_revision"), "sentiment": ("sentiment_model", "sentiment_revision"),
              "text_embedder": ("text_embedder", "text_embedder_revision")}
# The text models that score generations: loaded only when the config has generations for them.
TEXT_MODEL_ROLES = ("toxicity", "sentiment", "text_embedder")


def model_reference(config: AuditConfig, role: str) -> tuple[str | None, str | None]:
    """(model, revision) of ``role`` as the config names them."""
    section = getattr(config, MODEL_SECTIONS[role])
    model_key, revision_key = MODEL_KEYS.get(role, ("model", "revision"))
    return getattr(section, model_key), getattr(section, revision_key)


def model_roles(spec: DatasetSpec, evaluate: bool, config: AuditConfig | None = None) -> list[str]:
    """The roles whose models the run loads: generation and judge unless the dataset already holds
    counterfactual sets; the model under audit unless the run stops after the judge; the toxicity
    classifier, the sentiment classifier and the text embedder when ``config`` has them and
    generations for them to score."""
    roles = [] if spec.columns.counterfactual_set else ["generator", "judge"]
    roles += ["audit"] if evaluate else []
    if evaluate and config is not None and config.audit.generate.prompts:
        roles += [role for role in TEXT_MODEL_ROLES if model_reference(config, role)[0]]
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
    decide where and how fast, not what. So is ``review``: people's labels arrive after the run,
    and the next audit of the same run applies them (``counterfactual_lab.review.exclusion``).
    The dataset name is left out too; it prefixes the id.
    """

    stages = config.model_dump(mode="json", exclude={"output", "runtime", "base_dir", "dataset", "review"})
    for role, section in MODEL_SECTIONS.items():
        for key in MODEL_KEYS.get(role, ("model", "revision")):
            stages[section].pop(key, None)
    if config.audit.generate.prompts:
        # The lexicon by content, like a model: its words change the lexicon_ metrics, its path does not.
        from counterfactual_lab.evaluate.auditees.lexicon import load_lexicon

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
    spec = audited_spec(config, dataset_uri, spec)
    fingerprint = template_fingerprint(config) if config.prompts_from_templates() else dataset_fingerprint(spec)
    models = {}
    for role in model_roles(spec, evaluate, config):
        if role == "generator" and not method_facts(config.generation.method).has_weights:
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


