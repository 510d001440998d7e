"""Publish one run under ``OUT/<run_id>/`` (local or ``s3://``), ``manifest.json`` last.

A run directory without ``manifest.json`` is incomplete: it was interrupted or is still
being written. Every file is written atomically, so a reader sees the old file, the new
one, or none, never half of one:

serialise in memory, then ``storage.write_bytes_atomic``: locally a hidden temp file beside
the target and ``os.replace`` (the temp file is removed if the write fails); on S3 one PUT,
which S3 applies all or nothing.

Every table gets ``run_id`` and ``dataset`` columns, so many runs can be scanned together
(``pl.scan_parquet("out/*/metrics.parquet")`` or DuckDB) and still be told apart.
"""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.storage.files import (
    exists,
    filesystem,
    join,
    write_bytes_atomic,
)
from counterfactual_lab.storage.json_files import DamagedJson, read_json

MANIFEST_NAME = "manifest.json"
# A manifest is tens of kilobytes; one this large is not a manifest this project wrote.
MANIFEST_MAX_BYTES = 64 * 2**20
REPORT_NAME = "report.html"
# The tables of the output contract, in the order a run writes them.
TABLE_NAMES = ("counterfactuals", "predictions", "metrics", "quarantine", "drift")
# The tables only a run with a generative model under audit writes (README "Generative VLMs under audit").
GENERATIVE_TABLE_NAMES = ("probes", "generations")
# The tables only a run with a contrastive model under audit writes: its retrieval rankings
# (docs/metrics.md, "Retrieval fairness").
CONTRASTIVE_TABLE_NAMES = ("retrieval",)
# The table a run has once people reviewed its counterfactuals (``cflab review``: counterfactual_lab/review).
REVIEW_TABLE_NAMES = ("review",)
# Every table a run may write: what a reader of a run looks for.
RUN_TABLE_NAMES = TABLE_NAMES + GENERATIVE_TABLE_NAMES + CONTRASTIVE_TABLE_NAMES + REVIEW_TABLE_NAMES


def is_complete(run_uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True when the run at ``run_uri`` has its ``manifest.json`` (the last file a run writes) and
    the manifest does not mark it failed. A failed run is finished but not complete: the next
    audit of the same config and data runs it again (manifests from before ``status`` count as complete)."""
    uri = join(run_uri, MANIFEST_NAME)
    if not exists(uri, storage_options):
        return False
    try:
        manifest = read_manifest(uri, storage_options)
    except (DamagedJson, FileNotFoundError):
        return False  # damaged or removed meanwhile: not something to vouch for
    return isinstance(manifest, dict) and manifest.get("status", "complete") == "complete"


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The JSON value of the manifest at ``uri``, read with the bounds of every file the project did
    not just write (``storage.json_files.read_json``): a FIFO, a device or a file over
    :data:`MANIFEST_MAX_BYTES` is refused with one line naming it (``UnreadableFile``), never
    waited on or read whole; a damaged one is ``DamagedJson``."""
    return read_json(uri, storage_options, max_bytes=MANIFEST_MAX_BYTES, what=uri)


def _file_name(name: str, suffix: str) -> str:
    """``metrics`` -> ``metrics.parquet``; refuses names that would leave the run directory."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UserError(f"output name {name!r} must be a plain file name (no '/', not hidden)")
    return name if name.endswith(suffix) else f"{name}{suffix}"


def mark_incomplete(run_uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Remove the run's ``manifest.json`` so every reader sees the run as incomplete; True if there was one.

    A run that is about to be written again (``--force``, a retried publish) calls this before
    it rewrites anything, so no reader ever finds the old manifest beside files it does not vouch for.
    """
    uri = join(run_uri, MANIFEST_NAME)
    if not exists(uri, storage_options):
        return False
    fs, path = filesystem(uri, storage_options)
    fs.rm_file(path)
    return True


class RunPublisher:
    """Writes the files of one run under ``<out_uri>/<run_id>/``.

    The first write removes a ``manifest.json`` left by an earlier attempt of the same run id,
    so a retried publish is marked incomplete until :meth:`write_manifest` runs again. A flow
    that writes other files into the run folder first (validation outputs) calls
    :meth:`mark_incomplete` before them.
    """

    def __init__(
        self,
        out_uri: str,
        run_id: str,
        dataset_name: str,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not out_uri or not str(out_uri).strip():
            raise UserError("output URI is empty: set output.uri in the config or pass --out")
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise UserError(f"run id {run_id!r} must be a non-empty name without '/'")
        self.out_uri = str(out_uri)
        self.run_id = run_id
        self.dataset_name = dataset_name
        self.storage_options = dict(storage_options or {})
        self._started = False
        self.written: dict[str, str] = {}

    @property
    def run_uri(self) -> str:
        return join(self.out_uri, self.run_id)

    def uri_of(self, file_name: str) -> str:
        return join(self.run_uri, file_name)

    def is_complete(self, run_uri: str | None = None) -> bool:
        """Whether ``run_uri`` (default: this run) has its manifest."""
        return is_complete(run_uri or self.run_uri, self.storage_options)

    def write_table(self, name: str, frame: pl.DataFrame) -> str:
        """Write ``frame`` as ``<name>.parquet`` with ``run_id`` and ``dataset`` columns; returns its URI.

        Existing ``run_id``/``dataset`` columns are replaced: the publisher is the one source of both.
        """
        if not isinstance(frame, pl.DataFrame):
            raise TypeError(f"write_table({name!r}) needs a polars DataFrame, got {type(frame).__name__}")
        file_name = _file_name(name, ".parquet")
        tagged = frame.with_columns(
            pl.lit(self.run_id, dtype=pl.String).alias("run_id"),
            pl.lit(self.dataset_name, dtype=pl.String).alias("dataset"),
        )
        # Serialise fully before touching storage: a frame that cannot be written fails here.
        buffer = io.BytesIO()
        tagged.write_parquet(buffer)
        uri = self._write_bytes(file_name, buffer.getvalue())
        self.written[file_name.removesuffix(".parquet")] = uri
        return uri

    def write_text(self, name: str, text: str) -> str:
        """Write ``text`` (UTF-8) as ``name`` under the run, atomically; returns its URI."""
        file_name = _file_name(name, "")
        if file_name == MANIFEST_NAME:
            raise UserError("manifest.json is written by write_manifest, last")
        return self._write_bytes(file_name, text.encode("utf-8"))

    def write_manifest(self, manifest: dict[str, Any]) -> str:
        """Write ``manifest.json``, the mark of a complete run; returns its URI.

        Refuses when a table the manifest lists is not there: a manifest must never
        vouch for files that do not exist.
        """
        missing = [
            f"{name} ({uri})"
            for name, uri in sorted((manifest.get("tables") or {}).items())
            if not exists(uri, self.storage_options)
        ]
        if missing:
            raise UserError(f"cannot mark run {self.run_id} complete: tables missing: {', '.join(missing)}")
        data = json.dumps(manifest, indent=2, sort_keys=True, default=str, allow_nan=False).encode("utf-8")
        return self._write_bytes(MANIFEST_NAME, data, is_manifest=True)

    def mark_incomplete(self) -> bool:
        """Remove a manifest left by an earlier run of this id, before anything is rewritten; True if there was one."""
        self._started = True
        return mark_incomplete(self.run_uri, self.storage_options)

    def _write_bytes(self, file_name: str, data: bytes, is_manifest: bool = False) -> str:
        if not self._started and not is_manifest:
            self.mark_incomplete()
        self._started = True
        uri = self.uri_of(file_name)
        write_bytes_atomic(uri, data, self.storage_options)
        return uri
