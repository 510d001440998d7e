"""The run manifest: what ran, on what, with which models and library versions, and whether
the row accounting closes.

The manifest is what an auditor cites to defend a number, and what reproduces it: the config,
the dataset's content fingerprint, the sha256 of every model file per role
(``models.<role>.weights_sha256``), the device and dtype the loaders used (``runtime``), the
versions of every package that changes numbers (``versions``), the bootstrap seed and every
metric parameter (``metrics``), the inputs of the run id (``run_identity``), and the two
accounting identities of the output contract:

    rows_in  = valid + quarantined
    planned  = kept + dropped + failed

Versions are read with ``importlib.metadata`` only, so building a manifest imports none of the
heavy libraries it reports on.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from datetime import date, datetime
from importlib import metadata
from pathlib import PurePath
from typing import Any

from counterfactual_lab.errors import ConfigError

MANIFEST_SCHEMA_VERSION = 2

# Distribution names whose versions change the numbers or the files of a run: the models'
# kernels and loading (torch, its CUDA libraries, diffusers, transformers, tokenizers, ...), the
# metrics (numpy, scipy, polars), decoding (pillow), validation (great-expectations and the pandas
# frames it validates) and the orchestration that decides what is rerun. Only what the library
# imports or loads through (tests/test_dependencies.py checks each is a declared dependency).
VERSIONED_DISTRIBUTIONS = (
    "counterfactual-lab",
    "torch",
    # cuBLAS and cuDNN of torch's CUDA build: older builds' -cu12 wheels, and the CUDA 13 ones
    # (nvidia-cublas, nvidia-cudnn-cu13) that torch 2.13's and 2.14's depend on.
    "nvidia-cublas-cu12",
    "nvidia-cudnn-cu12",
    "nvidia-cublas",
    "nvidia-cudnn-cu13",
    "diffusers",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "accelerate",
    "safetensors",
    "prefect",
    "prefect-ray",
    "ray",
    "scipy",
    "pandas",
    "polars",
    "pyarrow",
    "great-expectations",
    "pillow",
    "numpy",
    "rouge-score",  # answer_change's ROUGE-L
)
MODEL_ROLES = ("generator", "judge", "audit", "toxicity", "sentiment", "text_embedder")


# What each count of the manifest counts. Work items that share a content key (an img2img
# reconstruction asked for by several attributes) share one image, so the two differ.
COUNT_UNITS = {
    "generation_counts": "images: one per unique content key (generated, served from the store, or failed)",
    "cache_hits": "images served from the store or the task cache",
    "row_accounting": "rows_in/valid/quarantined: dataset rows; planned/kept/dropped/failed: work items "
    "(rows of counterfactuals.parquet)",
    "failure": "work items, as row_accounting counts them",
}


def library_versions() -> dict[str, str]:
    """``{"python": ..., dist: version}`` for the installed distributions that matter; absent ones are left out."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in VERSIONED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def config_block(config: Any) -> dict[str, Any]:
    """The ``config`` section of the manifest: the audit config as it was run, JSON-ready.

    The one place the config is dumped into the manifest (the report shows the manifest's copy),
    so it is also where secrets given inline are redacted.
    """
    # here, not at the top: it imports pydantic
    from counterfactual_lab.storage.redaction import redact

    return jsonable(redact(config.model_dump(mode="json", exclude={"base_dir"})))


def metric_parameters(audit: Any, judge: Any = None, attributes: list[str] | None = None) -> dict[str, Any]:
    """The ``metrics`` section: every parameter that changes a number in ``metrics.parquet``
    (:func:`counterfactual_lab.metrics.parameters.metric_parameters`), plus the labels, prompt
    and queries the model under audit was asked with, and the negative controls it was measured on."""
    # here, not at the top: these import polars, numpy and pydantic
    from counterfactual_lab.judge.drift import drift_attribute_names
    from counterfactual_lab.metrics.parameters import metric_parameters as parameters  # (as the line above)

    drift_attributes = None
    if judge is not None and attributes is not None:
        drift_attributes = drift_attribute_names(judge, attributes)
    return {
        **parameters(audit, judge, drift_attributes),
        "labels": list(audit.labels),
        "prompt": audit.prompt,
        "queries": list(audit.queries),
        "negative_controls": _negative_controls(audit),
        **_generative_parameters(audit),
    }


def _negative_controls(audit: Any) -> list[str] | None:
    """The negative controls the run measured (audit.negative_controls, or its kind's defaults)."""
    # here, not at the top: reading the kind may import transformers
    from counterfactual_lab.evaluate.auditees.kinds import resolve_kind, resolved_negative_controls

    try:
        return resolved_negative_controls(audit, resolve_kind(audit))
    except ConfigError:  # the kind cannot be read here; the config's own list, as written
        return None if audit.negative_controls is None else list(audit.negative_controls)


def _generative_parameters(audit: Any) -> dict[str, Any]:
    """The parameters of a generative audit's metrics (counterfactual_lab/auditees), when it has probes."""
    keys = getattr(audit, "generative_keys_set", None)
    if keys is None or not keys():
        return {}
    # here, not at the top: it imports polars
    from counterfactual_lab.evaluate.auditees.answers import YES_NO_ANSWERS, spellings

    return {
        "choice_prompt": audit.choice_prompt,
        "yes_no": list(audit.yes_no),
        "yes_no_spellings": {answer: spellings(answer) for answer in YES_NO_ANSWERS},
        "ratings": list(audit.ratings),
        "rating_scale": audit.rating_scale,
        "generate": audit.generate.model_dump(mode="json"),
        "toxicity_threshold": audit.toxicity_threshold,
        "lexicon": audit.lexicon,
        "phrasings": {prompt: list(alternatives) for prompt, alternatives in audit.phrasings.items()},
        "unclear_option": audit.unclear_option,
    }


def build_manifest(
    *,
    run_id: str,
    config: Mapping[str, Any],
    dataset: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any]],
    runtime: Mapping[str, Any],
    metrics: Mapping[str, Any],
    run_identity: Mapping[str, Any] | None = None,
    row_accounting: Mapping[str, Any],
    generation_counts: Mapping[str, Any],
    cache_hits: int,
    tables: Mapping[str, str],
    started_at: datetime | str,
    finished_at: datetime | str,
    tiny_models: bool,
    failure: Mapping[str, Any] | None = None,
    counts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of one run as a JSON-ready dict.

    ``dataset`` holds ``name``, ``uri``, ``fingerprint`` (the content fingerprint); ``models``
    maps a role (generator, judge, audit) to ``{"model": id or path, "revision": ...,
    "weights_sha256": {file: sha256}, ...}``; ``runtime`` holds the ``device`` and ``dtype``
    used; ``metrics`` the metric parameters (:func:`metric_parameters`); ``run_identity`` what
    the run id hashes; ``tables`` maps a table name to its URI. ``row_accounting_problems``
    lists where the accounting does not close (empty: it does).
    ``status`` is ``"failed"`` when ``failure`` is given (why: ``run_failure.FailedItems.manifest_entry``,
    kept as ``failure``), else ``"complete"``. ``counts``: further counts of the run, e.g.
    ``{"auditee": {"computed": N, "cached": M, "objects_written": K}}`` (a generative model's answers
    computed in this run vs served from the output store's cache, and the cache objects written).
    """
    for key in ("name", "uri", "fingerprint"):
        if key not in dataset:
            raise ValueError(f"manifest dataset needs {key!r}; got keys {sorted(dataset)}")
    for role, model in models.items():
        if "model" not in model:
            raise ValueError(f"manifest model {role!r} needs a 'model' id or path")
        if not isinstance(model.get("weights_sha256"), Mapping):
            raise ValueError(f"manifest model {role!r} needs 'weights_sha256' (a dict of file -> sha256)")
    for key in ("device", "dtype"):
        if not runtime.get(key):
            raise ValueError(f"manifest runtime needs {key!r}; got keys {sorted(runtime)}")
    for key in ("bootstrap_seed", "bootstrap_samples", "confidence"):
        if key not in metrics:
            raise ValueError(f"manifest metrics needs {key!r}; got keys {sorted(metrics)}")
    start, finish = _timestamp(started_at), _timestamp(finished_at)
    duration = None
    if isinstance(started_at, datetime) and isinstance(finished_at, datetime):
        duration = round((finished_at - started_at).total_seconds(), 3)
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "run_id": run_id,
        "started_at": start,
        "finished_at": finish,
        "duration_s": duration,
        "tiny_models": bool(tiny_models),
        "dataset": dict(dataset),
        "models": {role: {"model": m["model"], "revision": m.get("revision"), **m} for role, m in models.items()},
        "runtime": dict(runtime),
        "metrics": dict(metrics),
        "run_identity": dict(run_identity or {}),
        "row_accounting": dict(row_accounting),
        "row_accounting_problems": check_row_accounting(row_accounting),
        "generation_counts": dict(generation_counts),
        "count_units": dict(COUNT_UNITS),
        "cache_hits": int(cache_hits),
        "tables": dict(tables),
        "config": dict(config),
        "versions": library_versions(),
        "status": "failed" if failure else "complete",
    }
    if failure:
        manifest["failure"] = dict(failure)
    if counts:
        manifest["counts"] = dict(counts)
    return jsonable(manifest)


def jsonable(value: Any) -> Any:
    """``value`` with paths, dates, sets and tuples turned into JSON types; NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    if hasattr(value, "model_dump"):  # pydantic models
        return jsonable(value.model_dump())
    return str(value)


def _timestamp(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


ROW_ACCOUNTING_KEYS = ("rows_in", "valid", "quarantined", "planned", "kept", "dropped", "failed")


def check_row_accounting(acc: Mapping[str, Any]) -> list[str]:
    """Problems with the row accounting, one plain sentence each; empty when it closes.

    Checks ``rows_in == valid + quarantined`` and ``planned == kept + dropped + failed``,
    that every count is present, and that none is negative or fractional.
    """
    problems: list[str] = []
    counts: dict[str, int] = {}
    for key in ROW_ACCOUNTING_KEYS:
        value = acc.get(key)
        if value is None:
            problems.append(f"row accounting has no {key!r} count")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            problems.append(f"row accounting {key!r} must be a whole number, got {value!r}")
        elif value < 0:
            problems.append(f"row accounting {key!r} is negative ({value})")
        else:
            counts[key] = int(value)
    if all(k in counts for k in ("rows_in", "valid", "quarantined")):
        total = counts["valid"] + counts["quarantined"]
        if counts["rows_in"] != total:
            problems.append(
                f"rows in ({counts['rows_in']}) != valid ({counts['valid']}) + quarantined "
                f"({counts['quarantined']}) = {total}: {abs(counts['rows_in'] - total)} rows unaccounted for"
            )
    if all(k in counts for k in ("planned", "kept", "dropped", "failed")):
        total = counts["kept"] + counts["dropped"] + counts["failed"]
        if counts["planned"] != total:
            problems.append(
                f"planned work items ({counts['planned']}) != kept ({counts['kept']}) + dropped "
                f"({counts['dropped']}) + failed ({counts['failed']}) = {total}: "
                f"{abs(counts['planned'] - total)} items unaccounted for"
            )
    return problems
