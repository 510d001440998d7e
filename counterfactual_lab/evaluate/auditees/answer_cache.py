"""Every answer and score of a model under audit, cached in the output store as JSON.

Generations are the most expensive step of a generative audit, so nothing the model has answered
is ever asked again: not by a rerun, a resumed run, another run under the same output root, or a
worker on another machine. Each answer is one small JSON file::

    OUT/_auditee_cache/<probe>/<key[:2]>/<key>.json
    {"format": "cflab-auditee-answer", "version": 1, "key": "<key>", "fields": {...}, "value": {...}}

``key`` is the sha256 of the canonical JSON of ``fields``: the probe kind, the image content key
(or, for a score of a text, the text's sha256), the prompt, the model's identity (the sha256 of
its files, or a hub commit; :mod:`counterfactual_lab.models.identity`) and revision, the dtype it
ran in, and the decoding parameters (sample index, temperature, max new tokens, seed). ``fields``
is kept in the file, so every entry says what it is the answer to.

Entries are data only: a file that is not such a JSON object (a pickle, a truncated write,
another program's file, a key that does not match its name) is never decoded further; it is a
miss, with a warning naming its path, and the answer is computed and written again. Local
writes are atomic (a temp file renamed into place); on S3 a PUT is, and one batch's entries are
written concurrently (``fs.pipe``) and read in one bulk ``fs.cat``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from counterfactual_lab.storage.files import filesystem, join

CACHE_FOLDER = "_auditee_cache"
ENTRY_FORMAT = "cflab-auditee-answer"
ENTRY_VERSION = 1

logger = logging.getLogger(__name__)


def answer_key(fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields`` (sorted keys, no whitespace)."""
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CallCounts:
    """How many answers were computed by a model in this run and how many came from the cache."""

    computed: int = 0
    cached: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, computed: int = 0, cached: int = 0) -> None:
        with self._lock:
            self.computed += computed
            self.cached += cached

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "cached": self.cached}


class AnswerCache:
    """The answer store under ``root_uri`` (an output root, local or ``s3://``); see the module doc."""

    def __init__(self, root_uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root_uri = join(root_uri, CACHE_FOLDER)
        self.storage_options = dict(storage_options or {})

    def uri(self, probe: str, key: str) -> str:
        return join(self.root_uri, probe, key[:2], f"{key}.json")

    def get_many(self, probe: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """key → stored value, for the ``keys`` present and valid (one bulk read)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        fs, _ = filesystem(self.root_uri, self.storage_options)
        paths = {filesystem(self.uri(probe, key), self.storage_options)[1]: key for key in keys}
        found = fs.cat(list(paths), on_error="omit")
        values: dict[str, dict[str, Any]] = {}
        for path, data in found.items():
            key = paths.get(path) or paths.get(path.removeprefix("file://"))
            if key is None:
                continue
            value = _decode(data, key)
            if value is None:
                logger.warning("auditee cache entry %s is not an answer this project wrote; computing it again", path)
                continue
            values[key] = value
        return values

    def put_many(self, probe: str, entries: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """Store ``key → (fields, value)`` entries (``value``: a JSON object of plain data)."""
        blobs = {}
        for key, (fields, value) in entries.items():
            entry = {"format": ENTRY_FORMAT, "version": ENTRY_VERSION, "key": key, "fields": dict(fields), "value": dict(value)}
            blobs[self.uri(probe, key)] = json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")
        if "://" in self.root_uri and not self.root_uri.startswith("file://"):
            fs, _ = filesystem(self.root_uri, self.storage_options)
            fs.pipe({filesystem(uri, self.storage_options)[1]: data for uri, data in blobs.items()})  # one PUT each, concurrent
            return
        for uri, data in blobs.items():
            _write_local(uri.removeprefix("file://"), data)


def _write_local(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and a rename: readers see the whole entry or none.

    Unlike the run's tables, entries are not fsynced: a power cut can at worst leave an entry
    empty or cut short, which the reader refuses (a miss) and the next run computes again; an
    fsync per answer would cost more than a tiny model's forward pass.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _decode(data: bytes, key: str) -> dict[str, Any] | None:
    """The entry's value when ``data`` is a well-formed entry for ``key``; None otherwise."""
    if not data.startswith(b"{"):
        return None  # not a JSON object (a pickle starts with b"\x80"): never parsed further
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(entry, dict) and entry.get("format") == ENTRY_FORMAT and entry.get("key") == key):
        return None
    value = entry.get("value")
    if not isinstance(value, dict) or answer_key(entry.get("fields") or {}) != key:
        return None
    return value
