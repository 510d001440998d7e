"""People's answers on counterfactuals: ``OUT/<run>/review/labels.parquet``.

One row per (reviewer, set, member): the reviewer's latest answer on one counterfactual of one
set. Columns (:data:`LABELS_SCHEMA`)::

    reviewer, set_id, member, target_shown, other_change, note, answered_at, sample_seed

``member`` is the counterfactual's ``content_key``; ``target_shown`` is one of
:data:`TARGET_SHOWN` (does the image show the target value of the attribute), ``other_change``
one of :data:`OTHER_CHANGE` (did something else change that matters); ``answered_at`` is UTC.

Every answer is written at once: the file is read, the row upserted (or deleted, for undo) and
the whole file written again with :func:`~counterfactual_lab.storage.files.write_bytes_atomic`
(a temp file beside it, fsync, rename; one PUT on S3), so a reader, a killed server or a closed
tab sees every answer that was acknowledged and never half a file. Writers of one run (a server
per reviewer, an import) take a lock first: a thread lock in the process and a lock file under
``review/.locks`` between processes and machines, so no writer loses another's rows. At a few
thousand labels a write costs milliseconds.
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.runs.reader import RUN_TABLE_MAX_BYTES
from counterfactual_lab.storage.files import exists, join, read_bytes, write_bytes_atomic
from counterfactual_lab.storage.locks import StoreLockManager

REVIEW_FOLDER = "review"
LABELS_NAME = "labels.parquet"
SAMPLE_NAME = "sample.json"

# The answers, in the order the page offers them (the keys the page binds are beside them there).
TARGET_SHOWN = ("yes", "no", "cant_tell")
OTHER_CHANGE = ("none", "other_attribute", "background", "identity", "unusable")

LABELS_SCHEMA = {
    "reviewer": pl.String,
    "set_id": pl.String,
    "member": pl.String,
    "target_shown": pl.String,
    "other_change": pl.String,
    "note": pl.String,
    "answered_at": pl.Datetime("us", "UTC"),
    "sample_seed": pl.Int64,
}
LABEL_KEY = ("reviewer", "set_id", "member")
MAX_NOTE_CHARS = 2000
MAX_REVIEWER_CHARS = 80
# A writer holds the labels lock this long at most (a write takes milliseconds); a crashed one
# blocks the others no longer than this.
_LOCK_LEASE_SECONDS = 30.0
_LOCK_WAIT_SECONDS = 60.0
# Temp files of writes killed half-way are removed when older than this (a live write is younger).
_STALE_TEMP_SECONDS = 600.0


def review_uri(run_uri: str) -> str:
    """The run's review folder, ``OUT/<run>/review``."""
    return join(run_uri.rstrip("/"), REVIEW_FOLDER)


def labels_uri(run_uri: str) -> str:
    return join(review_uri(run_uri), LABELS_NAME)


def empty_labels() -> pl.DataFrame:
    return pl.DataFrame(schema=LABELS_SCHEMA)


def check_reviewer(name: str) -> str:
    """A reviewer's name as given, or a one-line error saying what a name may be."""
    text = (name or "").strip()
    if not text or len(text) > MAX_REVIEWER_CHARS or any(ord(c) < 32 for c in text):
        raise UserError(f"--reviewer {name!r}: give a name of 1 to {MAX_REVIEWER_CHARS} printable characters "
                        "(each person their own, e.g. --reviewer ana)")
    return text


def answer_problem(target_shown: Any, other_change: Any, note: Any = None) -> str | None:
    """Why an answer is not one the vocabularies allow (None when it is)."""
    if target_shown not in TARGET_SHOWN:
        return f"target_shown {target_shown!r} is not one of {', '.join(TARGET_SHOWN)}"
    if other_change not in OTHER_CHANGE:
        return f"other_change {other_change!r} is not one of {', '.join(OTHER_CHANGE)}"
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        return f"note must be text of at most {MAX_NOTE_CHARS} characters"
    return None


def as_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the label columns, in order and of their types."""
    return frame.select([pl.col(name).cast(dtype) for name, dtype in LABELS_SCHEMA.items()])


def read_labels(run_uri: str, storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """Every label of the run (an empty frame with the columns when nobody has answered yet)."""
    uri = labels_uri(run_uri)
    if not exists(uri, storage_options):
        return empty_labels()
    data = read_bytes(uri, storage_options, max_bytes=RUN_TABLE_MAX_BYTES, what="a labels file")
    try:
        return as_labels(pl.read_parquet(io.BytesIO(data)))
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:  # not Parquet, or not the labels' columns
        raise UserError(f"{uri} is not a readable labels file ({str(exc).splitlines()[0]}); move it aside "
                        "and import a good copy (cflab review RUN --import FILE)") from None


def labels_bytes(labels: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    as_labels(labels).sort(list(LABEL_KEY)).write_parquet(buffer)
    return buffer.getvalue()


class LabelStore:
    """Reads and writes one run's ``labels.parquet``, one answer at a time (see the module doc)."""

    def __init__(self, run_uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.run_uri = run_uri.rstrip("/")
        self.uri = labels_uri(self.run_uri)
        self.storage_options = dict(storage_options or {})
        self._thread_lock = threading.Lock()
        self._locks = StoreLockManager(join(review_uri(self.run_uri), ".locks"), self.storage_options,
                                       lease_seconds=_LOCK_LEASE_SECONDS, poll_seconds=0.02)
        self._holder = f"labels-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def read(self) -> pl.DataFrame:
        return read_labels(self.run_uri, self.storage_options)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if not self._locks.acquire_lock("labels", self._holder, acquire_timeout=_LOCK_WAIT_SECONDS,
                                            hold_timeout=_LOCK_LEASE_SECONDS):
                raise TimeoutError(f"another writer has held the lock of {self.uri} for over {_LOCK_WAIT_SECONDS:.0f} s")
            try:
                yield
            finally:
                self._locks.release_lock("labels", self._holder)

    def upsert(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Write ``rows`` (label columns), replacing any row with the same (reviewer, set, member); returns the file's rows."""
        rows = as_labels(rows).unique(subset=list(LABEL_KEY), keep="last", maintain_order=True)
        with self._locked():
            current = self.read()
            merged = pl.concat([current.join(rows.select(LABEL_KEY), on=list(LABEL_KEY), how="anti"), rows])
            write_bytes_atomic(self.uri, labels_bytes(merged), self.storage_options)
        return merged

    def answer(self, reviewer: str, set_id: str, member: str, target_shown: str, other_change: str,
               note: str | None, sample_seed: int | None) -> pl.DataFrame:
        """Save one answer now (the latest answer of a reviewer on a member replaces the earlier one)."""
        row = {"reviewer": reviewer, "set_id": set_id, "member": member, "target_shown": target_shown,
               "other_change": other_change, "note": note or None, "answered_at": datetime.now(timezone.utc),
               "sample_seed": sample_seed}
        return self.upsert(pl.DataFrame([row], schema=LABELS_SCHEMA))

    def take_back_latest(self, reviewer: str) -> dict[str, Any] | None:
        """Undo: delete ``reviewer``'s most recent answer; returns it (None when there is none)."""
        with self._locked():
            current = self.read()
            mine = current.filter(pl.col("reviewer") == reviewer)
            if mine.is_empty():
                return None
            latest = mine.sort("answered_at").row(-1, named=True)
            kept = current.filter(~((pl.col("reviewer") == reviewer) & (pl.col("set_id") == latest["set_id"])
                                    & (pl.col("member") == latest["member"])))
            write_bytes_atomic(self.uri, labels_bytes(kept), self.storage_options)
        return latest

    def remove_stale_temp_files(self) -> int:
        """Delete temp files that writes killed half-way left beside a local labels file; returns how many."""
        if "://" in self.uri and not self.uri.startswith("file://"):
            return 0  # an object store's PUT leaves nothing behind
        folder = os.path.dirname(self.uri.removeprefix("file://"))
        if not os.path.isdir(folder):
            return 0
        removed = 0
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.startswith(f".{LABELS_NAME}.tmp-") and time.time() - os.path.getmtime(path) > _STALE_TEMP_SECONDS:
                os.remove(path)
                removed += 1
        return removed
