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
and the measured ``image_bytes``/``image_pixels``, and :mod:`counterfactual_lab.ingest.validation`
turns them into quarantine reasons. Frames carry no image bytes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.errors import DatasetUnreadable, TransientStorageError
from counterfactual_lab.ingest.source import (
    REASON_INVALID_IMAGE_PATH,
    ColumnPlan,
    DatasetSource,
    first_line,
    is_binary,
    is_string,
    open_dataset,
    short_repr,
)
from counterfactual_lab.storage.files import (
    ImageStore,
    filesystem,
    is_transient,
    join,
    read_deadline_seconds,
)
from counterfactual_lab.storage.images import (
    REASON_DECOMPRESSION_BOMB,
    ImageHeader,
    ImageRejected,
    content_key,
    decode_rgb,
    looks_like_bomb,
    open_header,
)
from counterfactual_lab.storage.regular_files import NotARegularFile

REASON_MISSING_IMAGE = "missing_image"
REASON_IMAGE_NOT_FOUND = "image_not_found"
REASON_IMAGE_UNREADABLE = "image_unreadable"
REASON_NOT_A_REGULAR_FILE = "not_a_regular_file"


# Derived ids are the content key's prefix: 64 bits, short enough to read in a report.
DERIVED_ID_CHARS = 16


# Attributes an `attribute_pairs` layout names that have no vocabulary: context, not audited.
OTHER_ATTRIBUTES = "other_attributes"


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
            data, size = self.source.read_bounded(path, limit)  # FIFOs, devices, sockets: never opened
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
                why = first_line(exc)
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
            return None, None, (REASON_IMAGE_UNREADABLE, f"image {short_repr(ref)} cannot be read: {first_line(exc)}")
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
    """Keys already in the store, from one listing (not one request per image). Only regular files
    count: a FIFO or a device planted under an image's name is not that image, so it is stored
    again (replacing what was planted) instead of being read later."""
    if store is None:
        return set()
    fs, path = filesystem(join(store.root_uri, "images"), store.storage_options)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return set()
    return {e["name"].rsplit("/", 1)[-1][: -len(".png")] for e in entries
            if e["name"].endswith(".png") and e.get("type") == "file"}


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
    if is_binary(kind):
        return column.to_pylist(), [None] * n
    if is_string(kind):
        return [None] * n, column.to_pylist()
    if pa.types.is_null(kind):
        return [None] * n, [None] * n
    raise DatasetUnreadable(f"image column has type {kind}; expected struct<bytes: binary, path: string>, binary or string")


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
    if not is_string(values.type) or pa.types.is_dictionary(values.type):
        values = values.cast(pa.string())
    return values.to_pylist()


def _blank_to_none(value: str | None) -> str | None:
    """A blank attribute value means "unknown", the same as null."""
    return value if value is not None and value.strip() else None


