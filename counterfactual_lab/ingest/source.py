"""A dataset as ingest opens it: where its files are (a Parquet file, a folder, a glob; local or
``s3://``), which column plays each role of the input contract, whether their types fit, and
where each row's image reference may point (inside the dataset root, a regular file)."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.storage.files import (
    credentials_hint,
    filesystem,
    is_credentials_error,
    is_transient,
    read_deadline_seconds,
    read_object,
)
from counterfactual_lab.storage.images import (
    ImageRejected,
)
from counterfactual_lab.storage.regular_files import read_regular_file

_GLOB_CHARS = set("*?[")


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

    def read_bounded(self, path: str, limit: int) -> tuple[bytes | None, int]:
        """``(content, size)`` of the file at ``path`` (as :meth:`resolve_image` gives it); content
        None (not read) over ``limit`` bytes. Raises
        :class:`~counterfactual_lab.storage.regular_files.NotARegularFile` for anything but a regular
        file (a FIFO, a device: never opened), as every read of a path a row names must."""
        if self.protocol == "file":
            return read_regular_file(path, limit)
        return read_object(self.fs, path, limit, read_deadline_seconds(self.uri, self.spec.storage_options))

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
                    f"dataset {self.uri}: cannot read {self.relative(fragment.path)}: {first_line(exc)}"
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
        raise DatasetUnreadable(f"dataset {uri} cannot be read: permission denied ({first_line(exc)})") from None
    except OSError as exc:
        if is_transient(exc):
            raise
        raise DatasetUnreadable(f"dataset {uri} cannot be read: {first_line(exc)}") from None
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
        raise DatasetUnreadable(f"dataset {uri} is not readable Parquet: {first_line(exc)}") from None
    plan = plan_columns(spec, schema.names)
    return DatasetSource(spec, fs, protocol, root, files, schema, plan, dataset)


def _check_column_types(source: DatasetSource) -> None:
    """Raise :class:`DatasetUnreadable` naming the column (and field) whose type no row can use.

    A Parquet type belongs to the whole column, so a wrong one is a schema error, not one
    quarantine line per row: every row of the file carries it, and the fix is one change to
    how the file is written. A null-typed column (every value null) is accepted: its rows are
    quarantined one by one (missing image, missing caption).
    """
    plan, schema = source.plan, source.schema
    kind = schema.field(plan.image).type
    if not (pa.types.is_struct(kind) or is_binary(kind) or is_string(kind) or pa.types.is_null(kind)):
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
        if name == plan.caption and not (is_string(kind) or pa.types.is_null(kind)):
            raise DatasetUnreadable(f"dataset {source.uri}: caption column {name!r} has type {kind}; expected string")
        # Binary casts to text row by row and fails on the first non-UTF-8 value: not text.
        binary = is_binary(kind) or (pa.types.is_dictionary(kind) and is_binary(kind.value_type))
        try:
            if binary:
                raise pa.ArrowInvalid("binary")
            pa.array([], type=kind).cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise DatasetUnreadable(f"dataset {source.uri}: column {name!r} has type {kind}; expected text (string)") from None


def _check_image_struct_fields(source: DatasetSource, kind: pa.StructType) -> None:
    """``bytes`` must be binary and ``path`` text (or all null): ``struct<bytes: string, path:
    int64>`` would hand text to the image decoder and a number to the path resolver."""
    for name, expected, ok in (("bytes", "binary", is_binary), ("path", "string", is_string)):
        index = kind.get_field_index(name)
        if index < 0:
            continue
        field_type = kind.field(index).type
        if not (ok(field_type) or pa.types.is_null(field_type)):
            raise DatasetUnreadable(
                f"dataset {source.uri}: image struct column {source.plan.image!r} has field {name!r} of type "
                f"{field_type}; expected {expected} (struct<bytes: binary, path: string>)"
            )


def is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind) or pa.types.is_fixed_size_binary(kind)


def is_string(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return is_string(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


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


REASON_PATH_ESCAPES_ROOT = "path_escapes_root"


REASON_INVALID_IMAGE_PATH = "invalid_image_path"


# Longest image reference accepted, in UTF-8 bytes: Linux's PATH_MAX (S3 keys stop at 1024),
# and NAME_MAX for one local file or folder name. Longer ones name no file, only fill logs.
MAX_IMAGE_REF_BYTES = 4096


MAX_LOCAL_NAME_BYTES = 255


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


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/") or root == ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
