"""What a model *is*: the sha256 of its files, not the way a config spells its path.

``./.cflab/models/clip``, ``/home/me/project/.cflab/models/clip`` and a copy of that folder on
another disk are one model, and a folder whose weights were retrained in place is another.
:func:`model_identity` says which, for the run id and for the manifest:

* a **local folder**: every file under it (hidden ones such as ``.cache/`` aside) is hashed with
  sha256, through the stat-keyed cache of :mod:`counterfactual_lab.storage.file_hashes` (a rerun costs
  one ``stat`` per file). ``key`` is ``sha256:<digest of the sorted (file, sha256) list>``, so
  the same files give the same key wherever they lie.
* a **hub id** (``org/name``): the revision is resolved to the commit of the local Hugging Face
  cache's snapshot (or, when it is not cached yet, the hub's), without downloading anything;
  ``key`` is ``hub:<repo>@<commit>``. A git commit is itself a content address: its tree holds
  the sha256 of every LFS weight file. Pin ``revision`` to a commit for audits you must
  reproduce: a branch moves. The snapshot's files, once the loaders have downloaded them, are
  hashed for the manifest (:func:`weights_sha256`).

``weights_sha256`` (file → sha256) lists the weight files (``*.safetensors`` and the pickle
formats the loaders refuse but a folder may still hold); ``files_sha256`` every other file
(configs, tokenizer, scheduler), which changes outputs just as much and is part of ``key``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from counterfactual_lab.errors import UserError
from counterfactual_lab.storage.file_hashes import sha256_files

# Written into every tiny model folder, so reports can say their numbers mean nothing.
TINY_MARKER = "CFLAB_TINY_RANDOM_WEIGHTS"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".gguf", ".onnx", ".msgpack", ".h5")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelIdentity:
    """One model as the run id and the manifest see it (plain fields: it travels as a flow parameter)."""

    model: str  # as the config gives it
    revision: str | None
    source: str  # "local" or "hub"
    key: str  # what the run id hashes: "sha256:<hex>" (local) or "hub:<repo>@<commit>"
    path: str | None = None  # the folder hashed: the resolved local folder or the hub snapshot
    commit: str | None = None  # hub only
    weights_sha256: dict[str, str] = field(default_factory=dict)
    files_sha256: dict[str, str] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        """``models.<role>`` of the manifest (the loader's options, e.g. ``method``, are added by the caller)."""
        return {
            "model": self.model,
            "revision": self.revision,
            "source": self.source,
            "path": self.path,
            "commit": self.commit,
            "identity": self.key,
            "weights_sha256": dict(self.weights_sha256),
            "files_sha256": dict(self.files_sha256),
        }


def model_identity(model: str, revision: str | None = None) -> ModelIdentity:
    """The identity of ``model`` (local folder or hub id); see the module docstring."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"model {model!r} is a file; give the folder written by save_pretrained")
        root = local.resolve()
        weights, others = folder_sha256(root)
        if not weights and not others:
            raise UserError(f"model folder {model!r} holds no files")
        return ModelIdentity(
            model=model, revision=revision, source="local", key=f"sha256:{_digest({**weights, **others})}",
            path=str(root), weights_sha256=weights, files_sha256=others,
        )
    if model.startswith((".", "/", "~")):
        raise UserError(f"model {model!r}: no such local folder")
    repo, commit, snapshot = _resolve_hub(model, revision)
    weights, others = folder_sha256(snapshot) if snapshot is not None else ({}, {})
    return ModelIdentity(
        model=model, revision=revision, source="hub", key=f"hub:{repo}@{commit}",
        path=str(snapshot) if snapshot is not None else None, commit=commit,
        weights_sha256=weights, files_sha256=others,
    )


def weightless_identity(method: str, model: str) -> ModelIdentity:
    """The identity of a generation method that loads no weights (the planted-bias world's
    ``validation`` editor): the method itself is the generator; ``model`` names nothing."""
    return ModelIdentity(model=model, revision=None, source="none", key=f"method:{method}")


def folder_sha256(root: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(weight files, other files) under ``root``: relative POSIX path → sha256; hidden paths skipped."""
    root = Path(root)
    files = sorted(
        p for p in root.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(root).parts) and p.is_file()
    )
    hashes = sha256_files(files)
    weights: dict[str, str] = {}
    others: dict[str, str] = {}
    for path in files:
        relative = path.relative_to(root).as_posix()
        (weights if path.name.endswith(WEIGHT_SUFFIXES) else others)[relative] = hashes[str(path)]
    return weights, others


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items()), separators=(",", ":")).encode()).hexdigest()


def _resolve_hub(model: str, revision: str | None) -> tuple[str, str, Path | None]:
    """(repo id, commit, local snapshot folder or None) for a hub id, downloading nothing.

    The local cache answers first (it is what the loaders read offline); a commit given as the
    revision is taken as it is; otherwise the hub is asked which commit the revision names.
    """
    # here, not at the top: it imports huggingface_hub
    from huggingface_hub import snapshot_download

    # here, not at the top: it imports huggingface_hub
    from huggingface_hub.utils import HFValidationError

    try:
        snapshot = Path(snapshot_download(model, revision=revision, local_files_only=True))
        return model, snapshot.name, snapshot
    except HFValidationError as exc:
        raise UserError(f"model {model!r} is neither a local folder nor a valid hub id ({exc})") from None
    except Exception:  # noqa: BLE001 - not in the local cache (the error type varies by version)
        pass
    if revision and _COMMIT.match(revision):
        return model, revision, None
    try:
        # here, not at the top: only a hub id needs it
        from huggingface_hub import HfApi

        commit = HfApi().model_info(model, revision=revision).sha
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all one answer for the user
        raise UserError(
            f"model {model!r} (revision {revision or 'main'}) is not a local folder, not in the local Hugging Face "
            f"cache, and the hub cannot say which commit it is ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "download it first or give a local folder"
        ) from None
    if not commit:
        raise UserError(f"the hub gave no commit for model {model!r} (revision {revision or 'main'})")
    return model, commit, None


def weights_sha256(identity: ModelIdentity) -> ModelIdentity:
    """``identity`` with its files hashed, now that the loaders may have downloaded a hub snapshot.

    A local folder was hashed already. A hub model whose snapshot is still not on this machine
    (the model ran on other Ray workers) keeps empty hash lists; its commit still identifies it.
    """
    if identity.source != "hub" or identity.weights_sha256 or identity.commit is None:
        return identity
    # here, not at the top: it imports huggingface_hub
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(identity.model, revision=identity.commit, local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded here
        return identity
    weights, others = folder_sha256(snapshot)
    return ModelIdentity(
        model=identity.model, revision=identity.revision, source="hub", key=identity.key, path=str(snapshot),
        commit=identity.commit, weights_sha256=weights, files_sha256=others,
    )


def is_tiny_model(model: str) -> bool:
    """True for a model folder built by ``cflab models tiny`` (random weights, numbers mean nothing)."""

    return (Path(model).expanduser() / TINY_MARKER).exists()
