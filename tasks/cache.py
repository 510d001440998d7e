"""The generation cache policy: a batch's cache key is the content keys of its work items.

A work item's ``content_key`` already identifies the pixels it produces (source image
sha256, change, seed, generator fingerprint; see ``counterfactual_lab/plan/work_items.py``), so the
policy never hashes images, models or pipelines. The key is::

    sha256(json([policy version, task name, [item.content_key, ...], small plain inputs]))

"Small plain inputs" are the task's other parameters that are short strings, numbers,
booleans, None, or small lists / dicts / dataclasses / pydantic models of those (for
example the output URI, which the returned image URIs depend on). Anything else is left
out of the key, so whatever it changes must already be in the content keys.

Credentials never enter the key: a ``storage_options`` field (of the ``ImageStore``, say) is
left out whole (options say how to reach the store, ``root_uri`` says which store it is), and
any other secret-looking key (:func:`counterfactual_lab.storage.redaction.is_secret_key`) is hashed as
a placeholder. Otherwise every credential rotation would invalidate every cached batch, and a
hash of the secret would sit in the shared key storage under every cache record's name.

Prefect keeps each cache record's metadata in its own small file in ``key_storage`` (see
:func:`generation_cache_policy`). That storage is always wrapped in
``tasks.result_serialization.VerifiedKeyStorage``: a record is handed to Prefect only if it
names our data-only JSON serializer and its result decodes as generation records, so a pickle
planted in the result storage is refused unread (a cache miss), never unpickled.

With a ``lock_manager`` (``counterfactual_lab.storage.locks.StoreLockManager`` on the output
store) the policy runs at Prefect's ``SERIALIZABLE`` isolation: a batch's task holds the lock
of its cache key from the lookup to the stored result, so of two audits that reach the same
batch at once one generates it and the other waits and reads it from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.settings import get_current_settings

from counterfactual_lab.storage.redaction import is_secret_key, redact_text
from counterfactual_lab.tasks.result_serialization import VerifiedKeyStorage

# Bump when the meaning of a cached result changes (e.g. the result's shape).
# 2: records stored as data-only JSON (tasks/result_serialization.py), no longer pickled.
# 3: records carry a checksum over themselves and their cache key.
GENERATION_CACHE_VERSION = "3"

# Fields that say how to reach storage, not what is stored: never part of a key.
_NOT_IDENTITY_FIELDS = frozenset({"storage_options"})
_SECRET_PLACEHOLDER = "<secret>"

# Inputs larger than this (in scalar elements) are never hashed.
_MAX_PLAIN_ELEMENTS = 256
_MAX_PLAIN_STRING = 4096


class _NotPlain(Exception):
    pass


def _plain(value: Any, budget: list[int]) -> Any:
    """A JSON-ready copy of ``value`` if it is small and plain, else raise _NotPlain."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _NotPlain
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > _MAX_PLAIN_STRING:
            raise _NotPlain
        return redact_text(value)  # a password in a URI (scheme://user:password@host) is not identity
    if isinstance(value, list | tuple):
        return [_plain(v, budget) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _NotPlain
        return _plain_fields(sorted(value.items()), budget)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_fields(((f.name, getattr(value, f.name)) for f in dataclasses.fields(value)), budget)
    model_dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(model_dump):
        return _plain(model_dump(mode="json"), budget)
    raise _NotPlain


def _plain_fields(fields: Any, budget: list[int]) -> dict[str, Any]:
    """Named fields as :func:`_plain` would hash them: storage options left out, secrets as a placeholder."""
    plain: dict[str, Any] = {}
    for name, value in fields:
        if name in _NOT_IDENTITY_FIELDS:
            continue
        plain[name] = _SECRET_PLACEHOLDER if is_secret_key(name) and value else _plain(value, budget)
    return plain


def content_key_of(item: Any) -> str:
    """The content key of a work item (a WorkItem, or its ``to_dict()`` form)."""
    key = item.get("content_key") if isinstance(item, dict) else getattr(item, "content_key", None)
    if not isinstance(key, str) or not key:
        raise TypeError(f"work item {item!r:.80} has no content_key")
    return key


@dataclass
class WorkItemsCachePolicy(CachePolicy):
    """Cache a batch task on its work items' content keys plus a version string.

    ``items_parameter`` names the task parameter that holds the work items. The key also
    covers the task's name (two tasks over the same items do not share results) and its
    small plain inputs (see the module docstring). Item order matters: results are
    returned in item order. ``key_storage`` defaults to :func:`default_key_storage`.
    """

    items_parameter: str = "items"
    version: str = GENERATION_CACHE_VERSION

    def __post_init__(self) -> None:
        # Always keep cache records apart from results, behind the check that refuses any
        # record our serializer did not write.

        self.key_storage = VerifiedKeyStorage.wrapping(
            self.key_storage if self.key_storage is not None else default_key_storage()
        )
        if self.isolation_level == "SERIALIZABLE" and self.lock_manager is None:
            raise ValueError("WorkItemsCachePolicy: SERIALIZABLE isolation needs a lock_manager")

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        task_name = task_ctx.task.name if task_ctx is not None else None
        if self.items_parameter not in inputs:
            raise ValueError(
                f"WorkItemsCachePolicy: task {task_name!r} has no parameter {self.items_parameter!r}; "
                f"set items_parameter to the parameter that holds the work items (got {sorted(inputs)})"
            )
        keys = [content_key_of(item) for item in inputs[self.items_parameter]]
        small: dict[str, Any] = {}
        for name, value in sorted(inputs.items()):
            if name == self.items_parameter:
                continue
            try:
                small.update(_plain_fields([(name, value)], [_MAX_PLAIN_ELEMENTS]))
            except _NotPlain:
                continue  # large or opaque (a pipeline, an image): never hashed
        payload = json.dumps(
            {"version": self.version, "task": task_name, "content_keys": keys, "inputs": small},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def default_key_storage() -> Path:
    """Cache records next to Prefect's local result storage: ``<results path>/cache-keys``."""

    return Path(get_current_settings().results.local_storage_path).expanduser() / "cache-keys"


def generation_cache_policy(
    key_storage: str | Path | Any | None = None,
    items_parameter: str = "items",
    version: str = GENERATION_CACHE_VERSION,
    lock_manager: Any | None = None,
) -> WorkItemsCachePolicy:
    """The policy for generation (or any work-item batch) tasks, with ``key_storage`` set.

    ``key_storage`` is a local folder (str or Path), an ``s3://`` URI, a Prefect ``WritableFileSystem``
    block (e.g. ``RemoteFileSystem(basepath="s3://bucket/prefect-cache-keys")`` when
    workers run on several machines), or None for :func:`default_key_storage`; it is always
    wrapped in ``VerifiedKeyStorage``. ``lock_manager`` (a Prefect lock manager, e.g.
    ``StoreLockManager``) makes the policy ``SERIALIZABLE``: one writer per batch. Use it
    with ``persist_result=True`` and ``GenerationRecordsSerializer`` on the task.
    """
    # Prefect reads a str with exactly one "/" as a block slug ("type/name"): a local folder
    # such as "out/keys" becomes a Path here (VerifiedKeyStorage.wrapping makes URIs remote).
    if isinstance(key_storage, str) and ("://" not in key_storage or key_storage.startswith("file://")):
        key_storage = Path(key_storage.removeprefix("file://"))
    return WorkItemsCachePolicy(
        key_storage=key_storage,
        items_parameter=items_parameter,
        version=version,
        isolation_level="SERIALIZABLE" if lock_manager is not None else None,
        lock_manager=lock_manager,
    )
