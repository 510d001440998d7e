"""Read a published run back (local or ``s3://``) and summarise it for the terminal.

``cflab report URI`` is :func:`report_text`: for a run folder, :func:`read_run` then
:func:`format_headline`; for an output root (the folder runs are written under, ``OUT``),
:func:`list_runs` then :func:`format_run_list`. A run without ``manifest.json`` is refused:
its tables may be from an interrupted or unfinished publish.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.runs.failure import is_failed
from counterfactual_lab.runs.publisher import (
    MANIFEST_NAME,
    REPORT_NAME,
    RUN_TABLE_NAMES,
    read_manifest,
)
from counterfactual_lab.storage.files import exists, filesystem, join, read_bytes
from counterfactual_lab.storage.json_files import DamagedJson

# A run table is read whole into memory: larger than this, it is not a table this project wrote.
RUN_TABLE_MAX_BYTES = 4 * 2**30


@dataclass(frozen=True)
class RunTables:
    """The tables and manifest of one complete run. A table the run did not write is an empty frame
    (``probes`` and ``generations`` are written by a run with a generative model under audit only,
    ``retrieval`` by one with a contrastive model, ``review`` once people reviewed its counterfactuals)."""

    run_uri: str
    manifest: dict[str, Any]
    counterfactuals: pl.DataFrame = field(default_factory=pl.DataFrame)
    predictions: pl.DataFrame = field(default_factory=pl.DataFrame)
    metrics: pl.DataFrame = field(default_factory=pl.DataFrame)
    quarantine: pl.DataFrame = field(default_factory=pl.DataFrame)
    drift: pl.DataFrame = field(default_factory=pl.DataFrame)
    probes: pl.DataFrame = field(default_factory=pl.DataFrame)
    generations: pl.DataFrame = field(default_factory=pl.DataFrame)
    retrieval: pl.DataFrame = field(default_factory=pl.DataFrame)
    review: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.run_uri.rstrip("/").rsplit("/", 1)[-1]))

    @property
    def report_uri(self) -> str:
        return join(self.run_uri, REPORT_NAME)

    @property
    def failed(self) -> bool:
        """True for a finished run marked failed (too many failed work items): not an audit to rely on."""
        return is_failed(self.manifest)


def read_run(run_uri: str, storage_options: dict[str, Any] | None = None,
             tables: Sequence[str] = RUN_TABLE_NAMES) -> RunTables:
    """The run at ``run_uri``; raises :class:`UserError` when it is missing, incomplete or damaged.

    Tables are read from the run directory itself (not the URIs recorded in the manifest), so a
    run copied elsewhere, e.g. from S3 to a laptop, still reads. ``tables``: the tables to read
    (the others are empty frames), e.g. ``("metrics",)`` for a history of many runs.
    """
    run_uri = run_uri.rstrip("/")
    manifest_uri = join(run_uri, MANIFEST_NAME)
    if not exists(manifest_uri, storage_options):
        if not _has_run_files(run_uri, storage_options):
            raise UserError(f"no run at {run_uri}: nothing there that a run writes, no manifest.json (check the URI)")
        raise UserError(
            f"run at {run_uri} is incomplete: no manifest.json (the run was interrupted or is still running)"
        )
    try:
        manifest = read_manifest(manifest_uri, storage_options)
    except DamagedJson as exc:
        raise UserError(f"run at {run_uri} has a damaged manifest.json: {str(exc).removeprefix(manifest_uri + ' ')}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"run at {run_uri} has a damaged manifest.json: expected an object")
    listed = manifest.get("tables") or {}
    frames: dict[str, pl.DataFrame] = {}
    for name in RUN_TABLE_NAMES:
        if name not in tables:
            frames[name] = pl.DataFrame()
            continue
        uri = join(run_uri, f"{name}.parquet")
        if not exists(uri, storage_options):
            if name in listed:
                raise UserError(f"run at {run_uri} lists table {name!r} in its manifest but {name}.parquet is missing")
            frames[name] = pl.DataFrame()
            continue
        # Not a regular file, or over the limit: one line naming it (UnreadableFile).
        data = read_bytes(uri, storage_options, max_bytes=RUN_TABLE_MAX_BYTES, what="a run table")
        try:
            frames[name] = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:  # polars raises several types for a damaged file
            raise UserError(f"run at {run_uri}: {name}.parquet is not readable Parquet ({exc})") from None
    return RunTables(run_uri=run_uri, manifest=manifest, **frames)


# --- a folder of runs ------------------------------------------------------------------------

STATUS_COMPLETE, STATUS_INCOMPLETE, STATUS_FAILED = "complete", "incomplete", "failed"
# Files only a run folder holds; a sibling folder without any (OUT/images, anything else) is not a run.
_RUN_FILES = {MANIFEST_NAME, REPORT_NAME, "validation.json", "expectations.json", *(f"{t}.parquet" for t in RUN_TABLE_NAMES)}
_RUN_ID_SUFFIX = re.compile(r"(-generate)?-[0-9a-f]{12}$")


@dataclass(frozen=True)
class RunListing:
    """One run folder under an output root, as ``cflab report OUT`` lists it.

    ``status``: ``complete`` (a manifest), ``failed`` (a manifest that says so) or
    ``incomplete`` (no manifest: interrupted, or still running). ``finished_at`` is the
    manifest's; ``last_written`` the newest file's time (what tells a stalled run from a running one).
    """

    run_id: str
    run_uri: str
    dataset: str | None
    status: str
    finished_at: str | None
    last_written: str | None
    report_uri: str | None
    problem: str | None = None  # e.g. a damaged manifest.json


def list_runs(root_uri: str, storage_options: dict[str, Any] | None = None) -> list[RunListing]:
    """Every run folder directly under ``root_uri`` (local or ``s3://``), newest first.

    One listing of the root, one per run folder and one read of each manifest; tables are not read.
    An empty list means ``root_uri`` holds no run folders (or does not exist).
    """
    fs, path = filesystem(root_uri, storage_options)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    runs = []
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or name.startswith("."):
            continue
        try:
            files = {f["name"].rstrip("/").rsplit("/", 1)[-1]: f for f in fs.ls(entry["name"], detail=True)}
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not _RUN_FILES & set(files):
            continue
        runs.append(_listing(join(root_uri.rstrip("/"), name), name, files, storage_options))
    return sorted(runs, key=lambda r: (r.finished_at or r.last_written or "", r.run_id), reverse=True)


def _listing(run_uri: str, name: str, files: dict[str, dict], storage_options: dict[str, Any] | None) -> RunListing:
    times = [t for t in (_modified(f) for f in files.values()) if t is not None]
    last_written = max(times).isoformat(timespec="seconds") if times else None
    report = join(run_uri, REPORT_NAME) if REPORT_NAME in files else None
    dataset = _RUN_ID_SUFFIX.sub("", name) if _RUN_ID_SUFFIX.search(name) else None
    if MANIFEST_NAME not in files:
        return RunListing(name, run_uri, dataset, STATUS_INCOMPLETE, None, last_written, report)
    manifest_uri = join(run_uri, MANIFEST_NAME)
    try:
        manifest = read_manifest(manifest_uri, storage_options)
        if not isinstance(manifest, dict):
            raise DamagedJson("expected an object")
    except DamagedJson as exc:
        return RunListing(name, run_uri, dataset, STATUS_INCOMPLETE, None, last_written, report,
                          problem=f"damaged manifest.json ({str(exc).removeprefix(manifest_uri + ' ')})")
    status = STATUS_FAILED if manifest.get("status") == STATUS_FAILED else STATUS_COMPLETE
    dataset = (manifest.get("dataset") or {}).get("name") or dataset
    finished = manifest.get("finished_at")
    return RunListing(str(manifest.get("run_id") or name), run_uri, dataset, status,
                      None if finished is None else str(finished), last_written, report)


def _modified(info: dict[str, Any]) -> datetime | None:
    """A listing entry's modification time (``mtime`` locally, ``LastModified`` on S3), in UTC."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


def _has_run_files(uri: str, storage_options: dict[str, Any] | None) -> bool:
    """True when ``uri`` holds any file a run writes (so it is a run, finished or not)."""
    fs, path = filesystem(uri, storage_options)
    try:
        names = {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return False
    return bool(_RUN_FILES & names)


