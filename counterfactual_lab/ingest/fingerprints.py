"""The content fingerprint of a dataset: what the audit reads, by content, not by name or date.

This is the fingerprint an audit's run id and manifest carry (``dataset.fingerprint``). It is
the sha256 of a canonical JSON list of

* every Parquet file ingest reads (the same file list: :func:`counterfactual_lab.ingest.source.open_dataset`),
  as (path relative to the dataset root, content token), and
* every image the rows reference by path (a string image column, or the ``path`` of an image
  struct), as (path relative to the dataset root, content token), or a token saying it is missing,
  not a regular file, or refused (outside the root). Only the path column is read for this (a
  few kilobytes per file, not the image bytes). A struct's paths are skipped in a row group whose
  ``bytes`` are never null (the Parquet footer's statistics say so: the Hugging Face layout, where
  the path is only a file name); in a row group that mixes inline and path-only rows every path
  is covered, since telling the rows apart would mean reading the bytes, and a needless rerun is
  cheaper than a stale "complete".

The content token of a file is ``sha256:<hex>`` for a local file (through the stat-keyed cache of
:mod:`counterfactual_lab.storage.file_hashes`: a rerun reads nothing it has hashed before) and
``etag:<ETag>`` on S3 (one listing, no reads). Byte-identical copies of a dataset therefore get
the same fingerprint wherever they lie, and any changed, added, removed or renamed file (an
image included) changes it. Two caveats: a local copy and an S3 copy of the same data differ
(sha256 vs ETag), and an S3 object uploaded in parts has an ETag that depends on the part size.

Not to be confused with the dataset *watcher's* listing fingerprint
(:func:`counterfactual_lab.ingest.watch.listing_fingerprint`): size and modification time of
the Parquet files from one listing, cheap enough to poll every few minutes, and only used to
notice that something may have changed. The audit then decides with this one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.ingest.source import DatasetSource, open_dataset
from counterfactual_lab.storage.file_hashes import (
    StatKey,
    sha256_files,
    sha256_of_keys,
    stat_key,
)
from counterfactual_lab.storage.files import credentials_hint, is_credentials_error
from counterfactual_lab.storage.images import ImageRejected
from counterfactual_lab.storage.regular_files import NotARegularFile

FINGERPRINT_VERSION = 1
PATH_BATCH_ROWS = 65_536

# Tokens of an image reference that has no content to hash (why it has none).
MISSING = "missing"
NOT_A_REGULAR_FILE = "not_a_regular_file"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class DatasetFingerprint:
    """A dataset's content fingerprint and what it covers."""

    value: str  # sha256 hex
    method: str  # "sha256" (local files) or "etag" (S3 objects)
    parquet_files: int
    referenced_images: int  # distinct image paths the rows reference
    unresolved_images: int  # of those: missing, not a regular file, or refused

    def manifest_fields(self) -> dict[str, Any]:
        """The ``dataset`` keys of the manifest besides name and URI."""
        return {
            "fingerprint": self.value,
            "fingerprint_method": f"content ({self.method}) of every Parquet file and every image referenced by path",
            "parquet_files": self.parquet_files,
            "referenced_images": self.referenced_images,
            "unresolved_images": self.unresolved_images,
        }


def dataset_fingerprint(spec: DatasetSpec) -> DatasetFingerprint:
    """The content fingerprint of the dataset ``spec`` names (see the module docstring).

    Raises :class:`DatasetUnreadable` (one line) when the dataset cannot be listed or its
    image path column cannot be read.
    """
    source = open_dataset(spec)
    tokens = _tokens_for(source)
    files = [(source.relative(path), tokens.of_file(path)) for path in source.files]
    images = tokens.of_images(sorted(set(_image_references(source))))
    unresolved = sum(1 for _, token in images if not token.startswith(("sha256:", "etag:")))
    payload = json.dumps(
        {"version": FINGERPRINT_VERSION, "files": sorted(files), "images": sorted(images)}, separators=(",", ":")
    )
    return DatasetFingerprint(
        value=hashlib.sha256(payload.encode()).hexdigest(),
        method=tokens.method,
        parquet_files=len(files),
        referenced_images=len(images),
        unresolved_images=unresolved,
    )


def _image_references(source: DatasetSource) -> Iterator[str]:
    """Every non-blank image path in the image column (its ``path`` field for a struct), reading nothing else."""
    column = source.plan.image
    if column not in source.schema.names:
        return  # ingest names the missing column; nothing is referenced
    kind = source.schema.field(column).type
    nested = pa.types.is_struct(kind)
    if nested:
        if kind.get_field_index("path") < 0:
            return
        leaf = f"{column}.path"
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        leaf = column
    else:
        return  # inline bytes only: the Parquet files' own hashes cover them
    for path in source.files:
        try:
            with source.fs.open(path, "rb") as handle:
                yield from _paths_in_file(pq.ParquetFile(handle), column, leaf, nested)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DatasetUnreadable(
                f"dataset {source.uri}: cannot read the image paths of {source.relative(path)}: {str(exc).splitlines()[0]}"
            ) from None


def _paths_in_file(parquet: pq.ParquetFile, column: str, leaf: str, nested: bool) -> Iterator[str]:
    for group in _groups_with_path_images(parquet, column if nested else None):
        # Only the requested leaf's column chunks are read, not the image bytes beside it.
        for batch in parquet.iter_batches(batch_size=PATH_BATCH_ROWS, row_groups=[group], columns=[leaf]):
            values = batch.column(0)
            if nested:  # read as struct<path>: take the child
                values = values.field("path")
            if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
                return  # a wrongly typed path field in this file: ingest quarantines its rows
            for ref in values.to_pylist():
                if ref is not None and ref.strip():
                    yield ref


def _groups_with_path_images(parquet: pq.ParquetFile, struct_column: str | None) -> list[int]:
    """The row groups where some row may take its image from a path.

    For an image struct, a row group whose ``bytes`` leaf has no null (its footer statistics say
    so, for free) has every image inline: its paths are names, not references, and are skipped.
    Without statistics every row group counts.
    """
    groups = range(parquet.metadata.num_row_groups)
    if struct_column is None:
        return list(groups)
    leaf = f"{struct_column}.bytes"
    wanted = []
    for group in groups:
        meta = parquet.metadata.row_group(group)
        stats = next(
            (meta.column(i).statistics for i in range(meta.num_columns) if meta.column(i).path_in_schema == leaf),
            None,
        )
        if stats is not None and stats.has_null_count and stats.null_count == 0:
            continue
        wanted.append(group)
    return wanted


class _LocalTokens:
    """Content tokens of local files: sha256 through the stat-keyed cache."""

    method = "sha256"

    def __init__(self, source: DatasetSource) -> None:
        self.source = source
        self._files = sha256_files(source.files)

    def of_file(self, path: str) -> str:
        return f"sha256:{self._files[path]}"

    def of_images(self, refs: list[str]) -> list[tuple[str, str]]:
        entries: dict[str, str] = {}
        to_hash: dict[str, StatKey] = {}  # relative path -> the file's stat key
        for ref in refs:
            resolved = _resolve(self.source, ref)
            if isinstance(resolved, tuple):
                entries[resolved[0]] = resolved[1]
                continue
            relative = self.source.relative(resolved)
            try:
                to_hash[relative] = stat_key(resolved, real=self.source.real_path(resolved))
            except FileNotFoundError:
                entries[relative] = MISSING
            except NotARegularFile:
                entries[relative] = NOT_A_REGULAR_FILE  # a FIFO would block a reader: never opened
            except (OSError, ValueError):
                entries[relative] = UNREADABLE
        try:
            hashes = sha256_of_keys(to_hash)
        except OSError:
            # A file vanished, became unreadable or was swapped for a FIFO between stat and
            # read: hash one by one.
            hashes = {}
            for relative, key in to_hash.items():
                try:
                    hashes.update(sha256_of_keys({relative: key}))
                except OSError:
                    pass
        for relative in to_hash:
            entries[relative] = f"sha256:{hashes[relative]}" if relative in hashes else UNREADABLE
        return sorted(entries.items())


class _S3Tokens:
    """Content tokens of S3 objects: their ETags, from one fresh listing of the dataset root."""

    method = "etag"

    def __init__(self, source: DatasetSource) -> None:
        self.source = source
        fs = source.fs
        # s3fs keeps listings in memory for the life of the process: a long-lived worker must
        # see today's objects, not the ones it listed yesterday.
        fs.invalidate_cache(source.root)
        try:
            listing = fs.find(source.root, detail=True)
        except OSError as exc:
            raise DatasetUnreadable(f"dataset {source.uri} cannot be listed: {str(exc).splitlines()[0]}") from None
        except Exception as exc:
            if is_credentials_error(exc):  # botocore's, not an OSError
                raise DatasetUnreadable(f"dataset {credentials_hint(source.uri, exc)}") from None
            raise
        self._etags = {path: _etag(info) for path, info in listing.items() if info.get("type", "file") == "file"}

    def of_file(self, path: str) -> str:
        etag = self._etags.get(path)
        if not etag:
            raise DatasetUnreadable(f"dataset {self.source.uri}: {path} has no ETag in the listing")
        return f"etag:{etag}"

    def of_images(self, refs: list[str]) -> list[tuple[str, str]]:
        entries: dict[str, str] = {}
        for ref in refs:
            resolved = _resolve(self.source, ref)
            if isinstance(resolved, tuple):
                entries[resolved[0]] = resolved[1]
                continue
            etag = self._etags.get(resolved)
            entries[self.source.relative(resolved)] = f"etag:{etag}" if etag else MISSING
        return sorted(entries.items())


def _tokens_for(source: DatasetSource) -> _LocalTokens | _S3Tokens:
    return _LocalTokens(source) if source.protocol == "file" else _S3Tokens(source)


def _resolve(source: DatasetSource, ref: str) -> str | tuple[str, str]:
    """The path ``ref`` names inside the root, or ``(ref, "refused:<reason>")`` as ingest would refuse it."""
    try:
        return source.resolve_image(ref)
    except ImageRejected as rejected:
        return f"ref:{ref}", f"refused:{rejected.reason}"
    except ValueError:  # e.g. an embedded NUL byte
        return f"ref:{ref}", "refused:invalid_path"


def _etag(info: dict[str, Any]) -> str | None:
    etag = info.get("ETag") or info.get("etag")
    return str(etag).strip('"') if etag else None
