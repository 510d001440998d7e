"""Notice new or changed datasets under watched prefixes (local paths or ``s3://``).

A *dataset* is a folder that holds ``*.parquet`` files directly (Hive partition folders
such as ``year=2024/`` below it belong to it), a single ``.parquet`` file named as a
prefix, or a glob named as a prefix (the files it matches). Its *listing fingerprint* is the
sha256 of the sorted list of ``(path relative to the dataset, ETag or size+mtime)`` of its
Parquet files, so any added, removed, renamed or rewritten file changes it, and listing alone
computes it (no file is read).

The listing fingerprint is the watcher's cheap change detector, nothing more: a copy of a
dataset (new mtimes) looks new to it, and images referenced by path are not listed. What an
audit is keyed on, the run id and the manifest's ``dataset.fingerprint``, is the *content*
fingerprint of :mod:`counterfactual_lab.ingest.fingerprints` (sha256 or ETag of every file the audit
reads, referenced images included). A dataset the watcher announces although its content is
unchanged is answered by the audit as "already complete" at the cost of that fingerprint.

What was already seen is kept as JSON at ``OUT/_watch/state.json``::

    {"version": 1, "datasets": {"<dataset uri>": {"fingerprint": "...", "seen_at": "..."}}}

The caller announces a change first and calls :func:`record_seen` only afterwards, so a crash
between the two repeats an announcement rather than losing one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from typing import Any

from counterfactual_lab.errors import UserError
from counterfactual_lab.storage.files import (
    credentials_named,
    filesystem,
    join,
    write_bytes_atomic,
)
from counterfactual_lab.storage.json_files import DamagedJson, read_json

STATE_VERSION = 1
# One entry per dataset seen (~200 bytes): a state file larger than this was not written by the watcher.
STATE_MAX_BYTES = 64 * 2**20
PARQUET_SUFFIX = ".parquet"
# Hive-style partition folder: `key=value`; it belongs to the dataset above it.
_PARTITION_DIR = re.compile(r"^[^=/]+=[^/]*$")


def watch_state_uri(output_uri: str) -> str:
    """Where the watcher keeps what it has seen: ``OUT/_watch/state.json``."""
    return join(output_uri, "_watch", "state.json")


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _options(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    # Explicit storage options describe the object store; a local path must not get them.
    return storage_options if _is_remote(uri) else None


def _to_uri(uri_like: str, fs_path: str) -> str:
    """Turn a filesystem path back into a URI of the same kind as the prefix it came from."""
    if _is_remote(uri_like):
        protocol = uri_like.split("://", 1)[0]
        return f"{protocol}://{fs_path.lstrip('/')}"
    return fs_path


def _hidden(relative_parts: list[str]) -> bool:
    # `_watch/`, `_temporary/`, `_SUCCESS`, `.cache/`: bookkeeping, never data.
    return any(part.startswith(("_", ".")) for part in relative_parts)


def _dataset_root(relative_dir: str) -> str:
    """The dataset folder a file's folder belongs to: climb out of partition folders."""
    parts = [p for p in relative_dir.split("/") if p]
    while parts and _PARTITION_DIR.match(parts[-1]):
        parts.pop()
    return "/".join(parts)


def _file_token(info: dict[str, Any]) -> str:
    """What identifies one version of a file: its ETag, else size and modification time."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(mtime, _dt.datetime):
        mtime = mtime.timestamp()
    return f"size:{info.get('size')}:mtime:{mtime}"


def _has_glob(uri: str) -> bool:
    return any(ch in uri for ch in "*?[")


def _scan_glob(pattern: str, storage_options: dict[str, Any] | None) -> dict[str, list[tuple[str, str]]]:
    """A glob is one dataset: the Parquet files it matches, relative to its fixed part."""
    fs, path = filesystem(pattern, _options(pattern, storage_options))
    fixed = path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    matches = fs.glob(path, detail=True)
    entries = [
        (name[len(fixed) :].lstrip("/"), _file_token(detail))
        for name, detail in sorted(matches.items())
        if name.endswith(PARQUET_SUFFIX) and detail.get("type", "file") == "file"
    ]
    if not entries:
        raise UserError(f"dataset glob {pattern!r} matches no {PARQUET_SUFFIX} files")
    return {pattern: entries}


def _scan(prefix: str, storage_options: dict[str, Any] | None) -> dict[str, list[tuple[str, str]]]:
    """Datasets under ``prefix``: dataset URI -> [(relative file path, version token)]."""
    if _has_glob(prefix):
        return _scan_glob(prefix, storage_options)
    fs, root = filesystem(prefix, _options(prefix, storage_options))
    root = root.rstrip("/")
    try:
        info = fs.info(root)
    except FileNotFoundError:
        if _is_remote(prefix) and "/" in root and fs.exists(root.split("/", 1)[0]):
            return {}  # an object-store prefix with nothing under it yet: no datasets
        where = "" if _is_remote(prefix) else f" ({os.path.abspath(prefix)})"
        raise UserError(
            f"watched prefix {prefix!r}{where} does not exist; create it, or set the watcher's prefixes "
            "(the watch-datasets deployment's parameter) to where new data lands"
        ) from None
    if info.get("type") == "file":
        if not root.endswith(PARQUET_SUFFIX):
            raise UserError(f"watched prefix {prefix!r} is a file but not a {PARQUET_SUFFIX} file")
        return {_to_uri(prefix, root): [(os.path.basename(root), _file_token(info))]}

    datasets: dict[str, list[tuple[str, str]]] = {}
    for path, detail in sorted(fs.find(root, detail=True).items()):
        if not path.endswith(PARQUET_SUFFIX) or detail.get("type", "file") != "file":
            continue
        relative = path[len(root) :].lstrip("/")
        parts = relative.split("/")
        if _hidden(parts):
            continue
        dataset_rel = _dataset_root("/".join(parts[:-1]))
        dataset_path = f"{root}/{dataset_rel}" if dataset_rel else root
        in_dataset = path[len(dataset_path) :].lstrip("/")
        datasets.setdefault(_to_uri(prefix, dataset_path), []).append((in_dataset, _file_token(detail)))
    return datasets


def _fingerprint_entries(entries: list[tuple[str, str]]) -> str:
    payload = json.dumps(sorted(entries), separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def scan_datasets(prefixes: list[str], storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Every dataset under ``prefixes`` with its listing fingerprint, from one listing per prefix."""
    if isinstance(prefixes, str):
        raise UserError("prefixes must be a list of URIs, not a single string")
    found: dict[str, str] = {}
    for prefix in prefixes:
        with credentials_named(prefix):
            scanned = _scan(prefix, storage_options)
        for uri, entries in scanned.items():
            found[uri] = _fingerprint_entries(entries)
    return dict(sorted(found.items()))


def list_datasets(prefixes: list[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """The dataset URIs under ``prefixes``, sorted. Local results are absolute paths."""
    return list(scan_datasets(prefixes, storage_options))


def listing_fingerprint(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """The watcher's listing fingerprint of the dataset at ``uri`` (a dataset folder, one Parquet
    file, or a glob): size+mtime or ETag per Parquet file. Not the audit's content fingerprint."""
    scanned = _scan(uri, storage_options)
    if _has_glob(uri):
        return _fingerprint_entries(scanned[uri])
    fs, path = filesystem(uri, _options(uri, storage_options))
    base = _to_uri(uri, path.rstrip("/"))
    # Every Parquet file ingest would read counts, sub-folders included: a change to a nested
    # file must change the fingerprint (and so the audit's run id).
    entries = []
    for dataset_uri, files in scanned.items():
        if dataset_uri == base or dataset_uri.startswith(base.rstrip("/") + "/"):
            sub = dataset_uri[len(base) :].strip("/")
            entries.extend((f"{sub}/{name}" if sub else name, token) for name, token in files)
    if not entries:
        raise UserError(f"{uri!r} is not a dataset: it holds no {PARQUET_SUFFIX} files")
    return _fingerprint_entries(sorted(entries))


def read_state(state_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
    """The datasets seen so far: URI -> {"fingerprint", "seen_at"}; empty when no state exists."""
    try:
        with credentials_named(state_uri):
            state = read_json(state_uri, _options(state_uri, storage_options), max_bytes=STATE_MAX_BYTES, what=state_uri)
    except FileNotFoundError:
        return {}
    except DamagedJson as exc:
        raise UserError(f"watch state is corrupt: {exc}; delete it to re-announce every dataset") from None
    try:
        datasets = state["datasets"]
        if not isinstance(datasets, dict):
            raise TypeError("'datasets' is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"watch state {state_uri} is corrupt ({exc}); delete it to re-announce every dataset"
        ) from None
    return datasets


def changed_datasets(
    prefixes: list[str], state_uri: str, storage_options: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(uri, fingerprint)`` of each dataset that is new or whose fingerprint changed, sorted."""
    seen = read_state(state_uri, storage_options)
    return [
        (uri, fp)
        for uri, fp in scan_datasets(prefixes, storage_options).items()
        if seen.get(uri, {}).get("fingerprint") != fp
    ]


def record_seen(
    state_uri: str, uri: str, fingerprint: str, storage_options: dict[str, Any] | None = None
) -> None:
    """Remember that ``uri`` was announced with ``fingerprint`` (atomic rewrite of the state).

    Two watchers writing at once can lose one update, which only repeats an announcement;
    the ``watch-datasets`` deployment runs one watcher at a time.
    """
    datasets = read_state(state_uri, storage_options)
    datasets[uri] = {
        "fingerprint": fingerprint,
        "seen_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    payload = json.dumps({"version": STATE_VERSION, "datasets": dict(sorted(datasets.items()))}, indent=1)
    with credentials_named(state_uri):
        write_bytes_atomic(state_uri, payload.encode(), _options(state_uri, storage_options))


def check_output_outside_prefixes(output_uri: str, prefixes: list[str]) -> None:
    """Refuse an output location inside a watched prefix: the audit's own Parquet outputs
    would be announced as new datasets, and each audit would trigger the next."""
    out = _normalise(output_uri)
    for prefix in prefixes:
        watched = _normalise(prefix)
        if out == watched or out.startswith(watched + "/"):
            raise UserError(
                f"output_uri {output_uri!r} lies inside the watched prefix {prefix!r}: "
                "the audit's own Parquet files would be seen as new datasets; write outputs elsewhere"
            )


def _normalise(uri: str) -> str:
    if _is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(uri.removeprefix("file://")).rstrip("/")
