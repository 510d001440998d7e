"""Streaming ingest: Parquet record batches -> small per-row frames with every image checked.

A dataset is one Parquet file, a folder of them (other files are ignored), or a glob, on a
local path or ``s3://``. Record batches stream through ``pyarrow.dataset`` (fsspec's s3fs for
S3, pyarrow's native local filesystem on disk), so memory is bounded by ``batch_rows``, never
by the dataset size.

Per row, ingest resolves the image (struct{bytes, path}, plain binary, or a string path/URI
that must stay inside the dataset root and name a regular file: FIFOs, devices, sockets and
directories are never opened), computes its sha256 content key, parses the header
(decompression bombs and over-limit pixel counts are never decoded), decodes and converts it
to RGB, and optionally stores the RGB PNG in the content-addressed :class:`ImageStore`.
Nothing here rejects a row: problems are recorded in ``image_error``/``image_error_detail``
and the measured ``image_bytes``/``image_pixels``, and :mod:`counterfactual_lab.validation`
turns them into quarantine reasons. Frames carry no image bytes.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from fsspec.asyn import AsyncFileSystem

from counterfactual_lab.errors import DatasetUnreadable, TransientStorageError
from counterfactual_lab.images import ImageHeader, ImageRejected, content_key, decode_rgb, looks_like_bomb, open_header
from counterfactual_lab.images import REASON_DECOMPRESSION_BOMB
from counterfactual_lab.regular_files import NotARegularFile, read_regular_file
from counterfactual_lab.spec import DatasetSpec
from counterfactual_lab.storage import (
    ImageStore,
    credentials_hint,
    filesystem,
    is_credentials_error,
    is_transient,
    join,
    read_deadline_seconds,
)

REASON_MISSING_IMAGE = "missing_image"
REASON_IMAGE_NOT_FOUND = "image_not_found"
REASON_IMAGE_UNREADABLE = "image_unreadable"
REASON_PATH_ESCAPES_ROOT = "path_escapes_root"
REASON_INVALID_IMAGE_PATH = "invalid_image_path"
REASON_NOT_A_REGULAR_FILE = "not_a_regular_file"

# Longest image reference accepted, in UTF-8 bytes: Linux's PATH_MAX (S3 keys stop at 1024),
# and NAME_MAX for one local file or folder name. Longer ones name no file, only fill logs.
MAX_IMAGE_REF_BYTES = 4096
MAX_LOCAL_NAME_BYTES = 255

# Derived ids are the content key's prefix: 64 bits, short enough to read in a report.
DERIVED_ID_CHARS = 16

_GLOB_CHARS = set("*?[")

# Attributes an `attribute_pairs` layout names that have no vocabulary: context, not audited.
OTHER_ATTRIBUTES = "other_attributes"


@dataclass(frozen=True)
class ColumnPlan:
    """Which dataset column plays each role of the input contract (None: absent)."""

    image: str
    caption: str
    id: str | None
    label: str | None
    attributes: dict[str, str]
    counterfactual_set: str | None
    required: tuple[str, ...]
    # (type column, value column) pairs and the attributes they fill (spec ``attribute_pairs``).
    attribute_pairs: tuple[tuple[str, str], ...] = ()
    pair_attributes: tuple[str, ...] = ()

    @property
    def attribute_names(self) -> list[str]:
        """Every attribute column ingest yields, from plain columns or from pairs."""
        return [*self.attributes, *self.pair_attributes]

    def projection(self) -> list[str]:
        """The columns to read: nothing else leaves the Parquet file."""
        pairs = [name for pair in self.attribute_pairs for name in pair]
        names = [self.id, self.image, self.caption, self.label, *self.attributes.values(), *pairs, self.counterfactual_set]
        return list(dict.fromkeys(n for n in names if n))


def plan_columns(spec: DatasetSpec, available: list[str]) -> ColumnPlan:
    """Map the spec's column roles onto the dataset's columns.

    Image and caption are always required; id, label and attribute columns are required
    only when the spec names them explicitly (defaults apply when present).
    """
    cols = spec.columns
    explicit = cols.model_fields_set
    attributes = spec.attribute_columns(available)
    pairs = tuple(tuple(pair) for pair in cols.attribute_pairs or ())
    required = [cols.image, cols.caption, *attributes.values(), *[name for pair in pairs for name in pair]]
    if "id" in explicit:
        required.append(cols.id)
    if "label" in explicit and cols.label:
        required.append(cols.label)
    if cols.counterfactual_set:
        required.append(cols.counterfactual_set)
    return ColumnPlan(
        image=cols.image,
        caption=cols.caption,
        id=cols.id if cols.id in available or "id" in explicit else None,
        label=cols.label if cols.label and (cols.label in available or "label" in explicit) else None,
        attributes=attributes,
        counterfactual_set=cols.counterfactual_set,
        required=tuple(dict.fromkeys(required)),
        attribute_pairs=pairs,
        pair_attributes=tuple(spec.pair_attributes()),
    )


@dataclass
class DatasetSource:
    """A resolved dataset: its Parquet files, root folder and schema. Built by :func:`open_dataset`."""

    spec: DatasetSpec
    fs: Any  # fsspec filesystem: image paths and listings
    protocol: str  # "file" or "s3"
    root: str  # the dataset root, without protocol; image paths must stay inside it
    files: list[str]
    schema: pa.Schema
    plan: ColumnPlan
    _dataset: ds.Dataset = field(repr=False)
    # Real paths of the folders images lie in, for this source's life (one ingest or one
    # fingerprint): 20 000 images in one folder cost one realpath of it, not 20 000.
    _real_folders: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def uri(self) -> str:
        return self.spec.uri

    def missing_columns(self) -> list[str]:
        return [c for c in self.plan.required if c not in self.schema.names]

    def require_columns(self) -> None:
        """Raise :class:`DatasetUnreadable` naming every required column the dataset lacks."""
        missing = self.missing_columns()
        if missing:
            raise DatasetUnreadable(missing_columns_message(self.uri, missing, self.schema.names))
        _check_column_types(self)

    def relative(self, path: str) -> str:
        """``path`` relative to the dataset root: the same for a local copy and an S3 copy."""
        rel = posixpath.relpath(path, self.root) if self.root else path
        return path if rel.startswith("..") else rel

    def resolve_image(self, ref: str) -> str:
        """The filesystem path of image reference ``ref``; raises unless it is inside the root.

        Raises :class:`ImageRejected` with ``invalid_image_path`` for a reference no file can
        have (NUL or other control characters, over-long), checked before any system call, and
        ``path_escapes_root`` for one outside the root (``..``, absolute, another scheme or
        bucket, a sibling folder sharing the root's name as a prefix, a symlink leading out).
        """
        ref = ref.strip()
        problem = _invalid_reference(ref, self.protocol)
        if problem:
            raise ImageRejected(REASON_INVALID_IMAGE_PATH, f"image path {short_repr(ref)} {problem}")
        if "://" in ref:
            scheme, rest = ref.split("://", 1)
            same = scheme == "file" if self.protocol == "file" else scheme in ("s3", "s3a")
            if not same:
                raise ImageRejected(REASON_PATH_ESCAPES_ROOT, f"image URI {short_repr(ref)} is outside the dataset root")
            candidate = posixpath.normpath(rest if self.protocol == "file" else rest.lstrip("/"))
        elif ref.startswith("/"):
            candidate = posixpath.normpath(ref if self.protocol == "file" else ref.lstrip("/"))
        else:
            candidate = posixpath.normpath(posixpath.join(self.root, ref))
        if not _inside(candidate, self.root):
            bucket, root_bucket = candidate.split("/", 1)[0], self.root.split("/", 1)[0]
            if self.protocol == "s3" and "://" in ref and bucket != root_bucket:
                raise ImageRejected(
                    REASON_PATH_ESCAPES_ROOT,
                    f"image path {short_repr(ref)} escapes the dataset root: it is in bucket {bucket!r}, not {root_bucket!r}",
                )
            raise ImageRejected(REASON_PATH_ESCAPES_ROOT, f"image path {short_repr(ref)} escapes the dataset root")
        # A symlink inside the root may still point outside it: check where it really lands.
        if self.protocol == "file" and not _inside(self.real_path(candidate), self._real_folder(self.root)):
            raise ImageRejected(REASON_PATH_ESCAPES_ROOT, f"image path {short_repr(ref)} links outside the dataset root")
        return candidate

    def real_path(self, path: str) -> str:
        """``os.path.realpath(path)`` for a local path, with the folders' real paths remembered
        for this source's life (a path that is itself a symlink, or cannot be lstat'ed, is
        resolved in full)."""
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return os.path.realpath(path)
        except (OSError, ValueError):
            return os.path.realpath(path)
        folder, name = posixpath.split(posixpath.normpath(os.path.abspath(path)))
        return posixpath.join(self._real_folder(folder), name)

    def _real_folder(self, folder: str) -> str:
        real = self._real_folders.get(folder)
        if real is None:
            real = self._real_folders[folder] = os.path.realpath(folder)
        return real

    def record_batches(self, batch_rows: int) -> Iterator[tuple[str, int, pa.RecordBatch]]:
        """(file relative to the root, index of the batch's first row in that file, batch)."""
        columns = self.plan.projection()
        for fragment in self._dataset.get_fragments():
            offset = 0
            try:
                # No read-ahead and no scan threads: decoding dominates the time, and each
                # batch read ahead would hold another batch of image bytes in memory.
                batches = fragment.to_batches(
                    columns=columns, batch_size=batch_rows, batch_readahead=0, fragment_readahead=1, use_threads=False
                )
                for batch in batches:
                    yield self.relative(fragment.path), offset, batch
                    offset += batch.num_rows
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise DatasetUnreadable(
                    f"dataset {self.uri}: cannot read {self.relative(fragment.path)}: {_first_line(exc)}"
                ) from None


def missing_columns_message(uri: str, missing: list[str], found: list[str]) -> str:
    names = ", ".join(repr(m) for m in missing)
    return (
        f"dataset {uri} lacks required column(s) {names} (found: {', '.join(found) or 'none'}); "
        "map them under 'columns' in the dataset spec"
    )


def open_dataset(spec: DatasetSpec) -> DatasetSource:
    """Resolve ``spec.uri`` to its Parquet files and read the schema.

    Raises :class:`DatasetUnreadable` with a one-line message when the URI does not exist,
    holds no ``*.parquet`` file, or a file is not Parquet. Column checks are separate
    (:meth:`DatasetSource.require_columns`) so validation can run them as expectations.
    """
    uri = spec.uri
    fs, path = filesystem(uri, spec.storage_options)
    protocol = "s3" if uri.startswith(("s3://", "s3a://")) else "file"
    single = False
    try:
        if _GLOB_CHARS & set(path):
            matches = fs.glob(path, detail=True)
            files = [p for p, info in matches.items() if p.endswith(".parquet") and info.get("type") == "file"]
            root = _glob_root(path)
            if not root.strip("/"):
                # With no fixed folder before the first wildcard there is no root to confine
                # image paths to: any path on the machine would count as inside.
                raise DatasetUnreadable(
                    f"dataset glob {uri} has no folder before its first wildcard; start it with the dataset's "
                    "folder (e.g. /data/audits/part-*.parquet) so image paths can be confined to it"
                )
        elif fs.isdir(path):
            files = [p for p in fs.find(path) if p.endswith(".parquet")]
            root = path
        elif fs.isfile(path):
            files = [path]
            root = posixpath.dirname(path)
            single = True
        else:
            raise DatasetUnreadable(f"dataset {uri} does not exist")
    except FileNotFoundError:
        raise DatasetUnreadable(f"dataset {uri} does not exist") from None
    except PermissionError as exc:
        raise DatasetUnreadable(f"dataset {uri} cannot be read: permission denied ({_first_line(exc)})") from None
    except OSError as exc:
        if is_transient(exc):
            raise
        raise DatasetUnreadable(f"dataset {uri} cannot be read: {_first_line(exc)}") from None
    except Exception as exc:
        if is_credentials_error(exc):  # botocore's, not an OSError
            raise DatasetUnreadable(f"dataset {credentials_hint(uri, exc)}") from None
        raise
    files = sorted(f for f in files if single or not _hidden(posixpath.relpath(f, root)))
    if not files:
        raise DatasetUnreadable(f"dataset {uri} holds no *.parquet files")
    arrow_fs = pafs.LocalFileSystem() if protocol == "file" else fs
    # pre_buffer off: read column chunks page by page so a large row group does not land in memory at once.
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))
    try:
        dataset = ds.dataset(files, filesystem=arrow_fs, format=fmt)
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and is_transient(exc):
            raise
        raise DatasetUnreadable(f"dataset {uri} is not readable Parquet: {_first_line(exc)}") from None
    plan = plan_columns(spec, schema.names)
    return DatasetSource(spec, fs, protocol, root, files, schema, plan, dataset)


def ingested_schema(spec: DatasetSpec, plan: ColumnPlan) -> dict[str, pl.DataType]:
    """Columns of the frames :func:`ingest` yields."""
    schema: dict[str, pl.DataType] = {
        "id": pl.Utf8,
        "content_key": pl.Utf8,
        "caption": pl.Utf8,
        "label": pl.Utf8,
    }
    for attribute in plan.attribute_names:
        schema[attribute] = pl.Utf8
    if plan.attribute_pairs:
        schema[OTHER_ATTRIBUTES] = pl.Utf8
    if plan.counterfactual_set:
        schema["counterfactual_set"] = pl.Utf8
    schema.update(
        image_uri=pl.Utf8,
        width=pl.Int64,
        height=pl.Int64,
        image_bytes=pl.Int64,
        image_pixels=pl.Int64,
        image_error=pl.Utf8,
        image_error_detail=pl.Utf8,
        source_file=pl.Utf8,
        row_index=pl.Int64,
    )
    return schema


def ingest(
    spec: DatasetSpec,
    *,
    image_store: ImageStore | None = None,
    batch_rows: int = 1024,
    workers: int | None = None,
    source: DatasetSource | None = None,
) -> Iterator[pl.DataFrame]:
    """Stream the dataset as one small frame per record batch (see :func:`ingested_schema`).

    ``image_store``: when given, every decodable image within limits is stored there as an
    RGB PNG under its content key (keys already stored are neither decoded nor rewritten)
    and ``image_uri`` points at it. ``workers``: decoding threads (default: CPU count, max 8).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    if source is None:
        source = open_dataset(spec)
        source.require_columns()
    reader = _BatchIngester(source, image_store)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cflab-ingest") as pool:
        for file, offset, batch in source.record_batches(batch_rows):
            yield reader.ingest_batch(batch, file, offset, pool)


def read_ingested(spec: DatasetSpec, *, image_store: ImageStore | None = None, batch_rows: int = 1024) -> pl.DataFrame:
    """All of :func:`ingest` as one frame (small: no image bytes)."""
    source = open_dataset(spec)
    source.require_columns()
    frames = list(ingest(spec, image_store=image_store, batch_rows=batch_rows, source=source))
    if not frames:
        return pl.DataFrame(schema=ingested_schema(spec, source.plan))
    return pl.concat(frames, how="vertical")


@dataclass
class _Row:
    """Per-row image state while a batch is processed."""

    data: bytes | None = None
    n_bytes: int | None = None
    header: ImageHeader | None = None
    decode: bool = False
    key: str | None = None
    width: int | None = None
    height: int | None = None
    pixels: int | None = None
    uri: str | None = None
    error: tuple[str, str] | None = None


class _BatchIngester:
    def __init__(self, source: DatasetSource, image_store: ImageStore | None) -> None:
        self.source = source
        self.plan = source.plan
        self.limits = source.spec.limits
        self.store = image_store
        self.stored = _stored_keys(image_store)
        self.schema = ingested_schema(source.spec, source.plan)
        self.read_deadline = read_deadline_seconds(source.uri, source.spec.storage_options)

    def ingest_batch(self, batch: pa.RecordBatch, file: str, offset: int, pool: ThreadPoolExecutor) -> pl.DataFrame:
        n = batch.num_rows
        plan = self.plan
        inline, paths = _image_refs(batch.column(plan.image))
        rows = [_Row() for _ in range(n)]
        for i in range(n):
            if inline[i] is not None:
                rows[i].data, rows[i].n_bytes = inline[i], len(inline[i])
            elif not (paths[i] or "").strip():
                rows[i].error = (REASON_MISSING_IMAGE, "image is null: no bytes and no path")
        # Phase 1 (threads): fetch images given by path.
        to_fetch = [i for i in range(n) if inline[i] is None and rows[i].error is None]
        for i, fetched in zip(to_fetch, pool.map(lambda i: self._fetch(paths[i]), to_fetch)):
            rows[i].data, rows[i].n_bytes, rows[i].error = fetched
        # Phase 2 (this thread only: it toggles the process-global warning filters): headers.
        for row in rows:
            if row.data is not None and row.error is None:
                self._check_header(row)
        # Phase 3 (threads): hash, decode, convert, store.
        list(pool.map(self._finish, rows))

        ids = _strings(batch, plan.id) if plan.id else [r.key[:DERIVED_ID_CHARS] if r.key else None for r in rows]
        columns: dict[str, list[Any]] = {
            "id": ids,
            "content_key": [r.key for r in rows],
            "caption": _strings(batch, plan.caption),
            "label": _strings(batch, plan.label) if plan.label else [None] * n,
        }
        for attribute, column in plan.attributes.items():
            columns[attribute] = [_blank_to_none(v) for v in _strings(batch, column)]
        if plan.attribute_pairs:
            columns.update(attribute_pair_columns(batch, plan))
        if plan.counterfactual_set:
            columns["counterfactual_set"] = _strings(batch, plan.counterfactual_set)
        columns.update(
            image_uri=[r.uri for r in rows],
            width=[r.width for r in rows],
            height=[r.height for r in rows],
            image_bytes=[r.n_bytes for r in rows],
            image_pixels=[r.pixels for r in rows],
            image_error=[r.error[0] if r.error else None for r in rows],
            image_error_detail=[r.error[1] if r.error else None for r in rows],
            source_file=[file] * n,
            row_index=list(range(offset, offset + n)),
        )
        return pl.DataFrame(columns, schema=self.schema)

    def _fetch(self, ref: str) -> tuple[bytes | None, int | None, tuple[str, str] | None]:
        try:
            path = self.source.resolve_image(ref)
        except ImageRejected as rejected:
            return None, None, (rejected.reason, rejected.detail)
        limit = self.limits.max_image_bytes
        try:
            if self.source.protocol == "file":
                data, size = read_regular_file(path, limit)  # FIFOs, devices, sockets: never opened
            else:
                data, size = _read_object(self.source.fs, path, limit, self.read_deadline)
        except NotARegularFile as exc:
            return None, None, (
                REASON_NOT_A_REGULAR_FILE,
                f"image {short_repr(ref)} is a {exc.kind}, not a regular file; only regular files are read",
            )
        except (FileNotFoundError, NotADirectoryError):
            return None, None, (REASON_IMAGE_NOT_FOUND, f"image {short_repr(ref)} does not exist under the dataset root")
        except Exception as exc:  # noqa: BLE001 - any failure to read one object is that row's, unless transient
            if is_transient(exc):
                # Not the row's fault: the task's transient-only retry policy tries again.
                why = _first_line(exc)
                if isinstance(exc, TimeoutError) and self.read_deadline:
                    why = (
                        f"no complete read within {self.read_deadline:g} s (set by the dataset's "
                        "storage_options.config_kwargs: connect_timeout, read_timeout, retries.total_max_attempts)"
                    )
                raise TransientStorageError(f"image {short_repr(ref)} could not be read: {why}") from exc
            if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
                return None, None, (REASON_INVALID_IMAGE_PATH, f"image path {short_repr(ref)} is too long for the filesystem")
            if not isinstance(exc, OSError) and self.source.protocol == "file":
                raise  # a local read fails with OSError only: anything else is a bug, not a row problem
            return None, None, (REASON_IMAGE_UNREADABLE, f"image {short_repr(ref)} cannot be read: {_first_line(exc)}")
        if data is None:
            return None, size, None  # over the byte limit: never read, validation reports the size
        return data, size, None

    def _check_header(self, row: _Row) -> None:
        assert row.data is not None
        if row.n_bytes is not None and row.n_bytes > self.limits.max_image_bytes:
            return  # validation reports the size; a file over the limit is not parsed
        try:
            header = open_header(row.data)
        except ImageRejected as rejected:
            row.error = (rejected.reason, rejected.detail)
            return
        row.width, row.height, row.pixels = header.width, header.height, header.pixels
        if header.pixels > self.limits.max_pixels:
            if looks_like_bomb(header.pixels, len(row.data)):
                row.error = (
                    REASON_DECOMPRESSION_BOMB,
                    f"{len(row.data)}-byte {header.format} claims {header.width}x{header.height} pixels",
                )
            return  # too many pixels: reported by validation, never decoded
        row.header, row.decode = header, True

    def _finish(self, row: _Row) -> None:
        if row.data is None:
            return
        row.key = content_key(row.data)
        if not row.decode or row.header is None:
            return
        if self.store is not None and row.key in self.stored:
            # Same bytes decoded fine before: the stored PNG is this image.
            row.uri = self.store.uri(row.key)
            return
        header, row.header, row.data = row.header, None, None  # free memory as we go
        source_image = header.image
        try:
            rgb = decode_rgb(header)
        except ImageRejected as rejected:
            row.error = (rejected.reason, rejected.detail)
            source_image.close()
            return
        row.width, row.height = rgb.size
        if self.store is not None:
            row.uri = self.store.put_png(row.key, rgb)
            self.stored.add(row.key)
        rgb.close()
        source_image.close()


def _stored_keys(store: ImageStore | None) -> set[str]:
    """Keys already in the store, from one listing (not one request per image)."""
    if store is None:
        return set()
    fs, path = filesystem(join(store.root_uri, "images"), store.storage_options)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return set()
    return {n.rsplit("/", 1)[-1][: -len(".png")] for n in names if n.endswith(".png")}


def _image_refs(column: pa.Array | pa.ChunkedArray) -> tuple[list[bytes | None], list[str | None]]:
    """(inline bytes, path) per row for a struct{bytes, path}, binary or string image column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    kind = column.type
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        valid = column.is_valid().to_pylist()
        data = column.field("bytes").to_pylist() if "bytes" in names else [None] * n
        paths = column.field("path").to_pylist() if "path" in names else [None] * n
        return (
            [d if ok else None for d, ok in zip(data, valid)],
            [p if ok else None for p, ok in zip(paths, valid)],
        )
    if _is_binary(kind):
        return column.to_pylist(), [None] * n
    if _is_string(kind):
        return [None] * n, column.to_pylist()
    if pa.types.is_null(kind):
        return [None] * n, [None] * n
    raise DatasetUnreadable(f"image column has type {kind}; expected struct<bytes: binary, path: string>, binary or string")


def _check_column_types(source: DatasetSource) -> None:
    """Raise :class:`DatasetUnreadable` naming the column (and field) whose type no row can use.

    A Parquet type belongs to the whole column, so a wrong one is a schema error, not one
    quarantine line per row: every row of the file carries it, and the fix is one change to
    how the file is written. A null-typed column (every value null) is accepted: its rows are
    quarantined one by one (missing image, missing caption).
    """
    plan, schema = source.plan, source.schema
    kind = schema.field(plan.image).type
    if not (pa.types.is_struct(kind) or _is_binary(kind) or _is_string(kind) or pa.types.is_null(kind)):
        raise DatasetUnreadable(
            f"dataset {source.uri}: column {plan.image!r} has type {kind}; "
            "expected struct<bytes: binary, path: string>, binary or string"
        )
    if pa.types.is_struct(kind):
        names = {kind.field(i).name for i in range(kind.num_fields)}
        _check_image_struct_fields(source, kind)
        if not names & {"bytes", "path"}:
            raise DatasetUnreadable(
                f"dataset {source.uri}: image struct column {plan.image!r} has neither a 'bytes' nor a 'path' field"
            )
    pairs = [name for pair in plan.attribute_pairs for name in pair]
    text_columns = [plan.caption, plan.id, plan.label, *plan.attributes.values(), *pairs, plan.counterfactual_set]
    for name in (c for c in text_columns if c and c in schema.names):
        kind = schema.field(name).type
        if name == plan.caption and not (_is_string(kind) or pa.types.is_null(kind)):
            raise DatasetUnreadable(f"dataset {source.uri}: caption column {name!r} has type {kind}; expected string")
        # Binary casts to text row by row and fails on the first non-UTF-8 value: not text.
        binary = _is_binary(kind) or (pa.types.is_dictionary(kind) and _is_binary(kind.value_type))
        try:
            if binary:
                raise pa.ArrowInvalid("binary")
            pa.array([], type=kind).cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise DatasetUnreadable(f"dataset {source.uri}: column {name!r} has type {kind}; expected text (string)") from None


def _check_image_struct_fields(source: DatasetSource, kind: pa.StructType) -> None:
    """``bytes`` must be binary and ``path`` text (or all null): ``struct<bytes: string, path:
    int64>`` would hand text to the image decoder and a number to the path resolver."""
    for name, expected, ok in (("bytes", "binary", _is_binary), ("path", "string", _is_string)):
        index = kind.get_field_index(name)
        if index < 0:
            continue
        field_type = kind.field(index).type
        if not (ok(field_type) or pa.types.is_null(field_type)):
            raise DatasetUnreadable(
                f"dataset {source.uri}: image struct column {source.plan.image!r} has field {name!r} of type "
                f"{field_type}; expected {expected} (struct<bytes: binary, path: string>)"
            )


def attribute_pair_columns(batch: pa.RecordBatch, plan: ColumnPlan) -> dict[str, list[str | None]]:
    """One column per attribute of ``plan.pair_attributes``, and ``other_attributes``, from the pairs.

    A pair whose type names an attribute (case-insensitively) gives that attribute its
    value; a type naming any other attribute (SocialCounterfactuals' "physical") is kept in
    ``other_attributes`` as sorted ``type=value`` entries joined by "; ", so evaluate-only
    comparison groups hold it fixed. Two pairs giving one attribute different values make
    a value the vocabulary check quarantines, naming both.
    """
    n = batch.num_rows
    known = {name.casefold(): name for name in plan.pair_attributes}
    values: dict[str, list[str | None]] = {name: [None] * n for name in plan.pair_attributes}
    others: list[list[str]] = [[] for _ in range(n)]
    pairs = [(_strings(batch, t), _strings(batch, v)) for t, v in plan.attribute_pairs]
    for i in range(n):
        for types, stated in pairs:
            kind, value = _blank_to_none(types[i]), _blank_to_none(stated[i])
            if kind is None:
                continue  # no type: the value names no attribute
            attribute = known.get(kind.strip().casefold())
            if attribute is None:
                others[i].append(f"{kind.strip()}={value or ''}")
                continue
            current = values[attribute][i]
            if current is None:
                values[attribute][i] = value
            elif value is not None and current.strip().casefold() != value.strip().casefold():
                values[attribute][i] = f"conflicting values {current!r} and {value!r}"
    return {**values, OTHER_ATTRIBUTES: ["; ".join(sorted(o)) if o else None for o in others]}


def _strings(batch: pa.RecordBatch, column: str) -> list[str | None]:
    values = batch.column(column)
    if not _is_string(values.type) or pa.types.is_dictionary(values.type):
        values = values.cast(pa.string())
    return values.to_pylist()


def _read_object(fs: Any, path: str, limit: int, deadline: float | None) -> tuple[bytes | None, int]:
    """``(content, size)`` of an object store's object; content None (not read) over ``limit`` bytes.

    Reads at most ``limit + 1`` bytes (one ranged request) whatever the object's size. Each
    call ends within ``deadline`` seconds, retries included (``storage.read_deadline_seconds``):
    fsspec cancels it and raises a ``TimeoutError``.
    """
    # fsspec's synchronous wrappers of an async filesystem (s3fs) take a total timeout.
    bounded = {"timeout": deadline} if deadline and isinstance(fs, AsyncFileSystem) else {}
    info = fs.info(path, **bounded)
    if info.get("type") != "file":
        raise NotARegularFile(path, str(info.get("type") or "non-file entry"))
    size = info.get("size")
    if size is not None and size > limit:
        return None, int(size)
    data = fs.cat_file(path, start=0, end=limit + 1, **bounded)
    if len(data) > limit:
        return None, max(len(data), int(size or 0))
    return data, len(data)


def _invalid_reference(ref: str, protocol: str) -> str | None:
    """Why no file can have the name ``ref`` (None when it could): said before any system call,
    which would raise (``embedded null byte``) or mangle the name."""
    if "\0" in ref:
        return "contains a NUL byte"
    control = next((c for c in ref if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:
        return f"contains the control character U+{ord(control):04X}"
    size = len(ref.encode("utf-8"))
    if size > MAX_IMAGE_REF_BYTES:
        return f"is {size:,} bytes long; image paths are limited to {MAX_IMAGE_REF_BYTES:,} bytes"
    if protocol != "file":
        return None  # an S3 key may hold long "names": only the whole key is bounded
    longest = max((len(part.encode("utf-8")) for part in ref.split("/")), default=0)
    if longest > MAX_LOCAL_NAME_BYTES:
        return f"has a {longest:,}-byte name; file names are limited to {MAX_LOCAL_NAME_BYTES} bytes"
    return None


def short_repr(ref: str, limit: int = 120) -> str:
    """``repr(ref)`` cut to ``limit`` characters: quarantine details stay one short readable line
    whatever a row holds (a 5 kB path, a megabyte of caption in an attribute column)."""
    text = repr(ref)
    return text if len(text) <= limit else f"{text[: limit - 20]}...' ({len(ref):,} characters)"


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind) or pa.types.is_fixed_size_binary(kind)


def _is_string(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_string(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _blank_to_none(value: str | None) -> str | None:
    """A blank attribute value means "unknown", the same as null."""
    return value if value is not None and value.strip() else None


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/") or root == ""


def _hidden(relative: str) -> bool:
    """Files under ``.name`` or ``_name`` folders (checkpoints, Spark/Delta logs) are not data."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return "/".join(fixed)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
