"""Reproduce a run from its manifest: check this machine against it, then rebuild its config.

A manifest records everything that decides a run's numbers (see :mod:`counterfactual_lab.runs.manifest`).
:func:`reproduction_differences` lists, one sentence each, where this machine differs from it:
a model file whose sha256 is not the recorded one, an installed package at another version,
a dataset whose content fingerprint changed, another library version. :func:`config_from_manifest`
turns the manifest back into an audit config that names the same models (the folders that were
hashed, or the hub commit), the same dataset (its resolved spec: URI, columns, vocabularies,
limits) and the same device, writing to a new output. Run that config (``cflab audit --config``
or ``dataset_audit``) and, with no differences, the tables are the same: the run id, which hashes
the same content, is the same too.

Credentials are not in a manifest; they come from the environment as for any run.

A manifest names folders, and checking one means reading (hashing) every file in it, so only
model folders under the **model roots** are hashed: ``model_roots`` when given, else
``CFLAB_MODEL_ROOTS`` (paths separated by ``os.pathsep``), the Hugging Face cache and the demo's
``./.cflab/models`` (:func:`default_model_roots`); and only when their files add up to at most
``max_model_bytes`` (:data:`MAX_MODEL_BYTES`), summed by ``stat`` before any byte is read. A
manifest naming ``/usr`` gets a difference line in milliseconds, not a 36 s hash of the system.

    from counterfactual_lab.runs.reproduce import config_from_manifest, reproduction_differences

    manifest = read_run("out/sample-1a2b3c4d5e6f").manifest
    assert reproduction_differences(manifest) == []
    config = config_from_manifest(manifest, output_uri="/tmp/rerun")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from counterfactual_lab.config.audit_config import TEMPLATES_URI, AuditConfig
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.errors import UserError
from counterfactual_lab.ingest.fingerprints import dataset_fingerprint
from counterfactual_lab.models.identity import model_identity, weights_sha256
from counterfactual_lab.runs.location import MODEL_KEYS, MODEL_SECTIONS
from counterfactual_lab.runs.manifest import library_versions
from counterfactual_lab.version import __version__

# Recorded versions that describe the machine rather than a package that computes numbers.
_NOT_COMPARED = ("platform",)
MODEL_ROOTS_ENV = "CFLAB_MODEL_ROOTS"
# The most a model folder may hold to be hashed (the largest public VLM checkpoints are ~30 GB).
MAX_MODEL_BYTES = 64 * 2**30


def default_model_roots() -> list[str]:
    """The folders a manifest's local models may be in to be checked: ``$CFLAB_MODEL_ROOTS``
    (``os.pathsep``-separated), the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
    ``~/.cache/huggingface/hub``) and the demo's ``./.cflab/models``."""
    roots = [p for p in os.environ.get(MODEL_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    roots.append(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub"))
    roots.append(os.path.join(".cflab", "models"))
    return roots


def _outside_roots(where: str, roots: Sequence[str]) -> bool:
    real = os.path.realpath(where)
    for root in roots:
        base = os.path.realpath(os.path.expanduser(str(root)))
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return False
    return True


def _folder_bytes(where: str, limit: int) -> int:
    """The bytes of the regular files under ``where`` (symlinks followed, as the hash reads them),
    counted by ``stat`` and only until they pass ``limit``."""
    total = 0
    for folder, _, names in os.walk(where, followlinks=False):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue
            if total > limit:
                return total
    return total


def config_from_manifest(
    manifest: Mapping[str, Any], output_uri: str, output_storage_options: dict[str, Any] | None = None
) -> AuditConfig:
    """The audit config that reruns the run ``manifest`` describes, writing under ``output_uri``."""
    for key in ("config", "dataset", "models", "run_identity", "runtime"):
        if not manifest.get(key):
            raise UserError(f"manifest has no {key!r} section: it was written by an older version and cannot be rerun exactly")
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in manifest["config"].items()}
    recorded_spec = manifest["run_identity"].get("dataset", {}).get("spec") or {}
    raw["dataset"] = {"name": manifest["dataset"]["name"], "uri": manifest["dataset"]["uri"], **recorded_spec}
    for role, section in MODEL_SECTIONS.items():
        model = manifest["models"].get(role)
        if model is None:
            continue
        model_key, revision_key = MODEL_KEYS.get(role, ("model", "revision"))
        if model.get("source") == "hub":
            raw[section].update({model_key: model["model"], revision_key: model.get("commit") or model.get("revision")})
        else:
            raw[section].update({model_key: model.get("path") or model["model"], revision_key: model.get("revision")})
    raw["output"] = {"uri": output_uri, "storage_options": dict(output_storage_options or {})}
    runtime = dict(raw.get("runtime") or {})
    # The device the loaders used ("cuda:0" -> "cuda"), not "auto", which may pick another here.
    runtime["device"] = str(manifest["runtime"]["device"]).split(":")[0]
    raw["runtime"] = runtime
    return AuditConfig.parse_config(raw, source="config rebuilt from the manifest")


def reproduction_differences(manifest: Mapping[str, Any], model_roots: Sequence[str | Path] | None = None,
                             max_model_bytes: int = MAX_MODEL_BYTES) -> list[str]:
    """Where this machine differs from what ``manifest`` records; empty when a rerun must match it.

    ``model_roots``: the folders local models must be under to be hashed (default
    :func:`default_model_roots`); ``max_model_bytes``: the most one model folder may hold (module doc).
    """
    roots = [str(r) for r in model_roots] if model_roots is not None else default_model_roots()
    problems: list[str] = []
    recorded_library = (manifest.get("run_identity") or {}).get("library_version")
    if recorded_library and recorded_library != __version__:
        problems.append(f"counterfactual-lab is {__version__} here, the run used {recorded_library}")

    for role, model in sorted((manifest.get("models") or {}).items()):
        where = model.get("path") if model.get("source") == "local" else model.get("model")
        revision = model.get("commit") or model.get("revision")
        if model.get("source") == "local":
            if not isinstance(where, str) or _outside_roots(where, roots):
                problems.append(f"models.{role}: {where} is not under the model roots ({os.pathsep.join(roots)}); "
                                f"not hashed (add its folder to {MODEL_ROOTS_ENV})")
                continue
            size = _folder_bytes(where, max_model_bytes)
            if size > max_model_bytes:
                problems.append(f"models.{role}: {where} holds more than {max_model_bytes:,} bytes; not hashed")
                continue
        try:
            here = weights_sha256(model_identity(str(where), revision))
        except UserError as exc:
            problems.append(f"models.{role}: {exc}")
            continue
        recorded = {**(model.get("files_sha256") or {}), **(model.get("weights_sha256") or {})}
        current = {**here.files_sha256, **here.weights_sha256}
        for name in sorted(set(recorded) | set(current)):
            if recorded.get(name) != current.get(name):
                state = "missing here" if name not in current else "not in the run" if name not in recorded else "has other bytes"
                problems.append(f"models.{role}: {name} {state} ({where})")

    installed = library_versions()
    for dist, version in sorted((manifest.get("versions") or {}).items()):
        if dist in _NOT_COMPARED:
            continue
        if installed.get(dist) != version:
            problems.append(f"versions.{dist}: the run used {version}, here {installed.get(dist) or 'not installed'}")

    dataset = manifest.get("dataset") or {}
    spec_fields = (manifest.get("run_identity") or {}).get("dataset", {}).get("spec") or {}

    if dataset.get("uri") == TEMPLATES_URI:  # text2image-sets from templates: they are in the config
        return problems
    try:
        current_fp = dataset_fingerprint(DatasetSpec.parse_spec({"name": dataset.get("name", "dataset"),
                                                                 "uri": dataset.get("uri"), **spec_fields}))
    except UserError as exc:
        problems.append(f"dataset: {exc}")
    else:
        if current_fp.value != dataset.get("fingerprint"):
            problems.append(f"dataset.fingerprint: {dataset.get('uri')} has other content than the run audited")
    return problems
