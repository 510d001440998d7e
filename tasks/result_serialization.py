"""Stored task results that cannot run code: our own JSON records, and nothing else is read.

Why Prefect's own serializers are not enough. A stored result is two files: the result, and a
small metadata record (in the cache policy's ``key_storage``) that names the serializer
which *reads* it. Prefect decodes with whatever serializer the stored metadata names, not the
one the task was configured with. So whoever can write to the result storage (a shared S3
prefix, as several machines need) chooses the decoder:

* ``{"type": "pickle"}`` unpickles the result: arbitrary code;
* ``{"type": "json"}`` is no better. Its default ``object_decoder``
  (``prefect.serializers.prefect_json_object_decoder``) imports the module named by any
  ``"__class__"`` key in the data (running that module's top-level code) and builds that class
  from attacker data with pydantic; and ``jsonlib`` and ``object_decoder`` are themselves
  qualified names taken from the stored metadata, imported and called.

What this module does instead:

* :class:`GenerationRecordsSerializer` writes a batch's records as plain JSON
  (``{"format": "cflab.generation-records", "version": 2, "key": <cache key>, "records": [...],
  "checksum": "sha256:..."}``) and reads them back with ``json.loads`` (no hooks) and
  :meth:`GenerationRecord.from_dict`, which builds nothing but a GenerationRecord (and checks
  each field's type and range). Anything else raises :class:`UntrustedResultError`.
* The **checksum** covers the records and the cache key they were stored under (the
  transaction's key when the result is written), so an edited record (a ``failed`` item made
  ``generated``, another batch's records copied in) does not match: it is refused like a foreign
  record, with a warning naming it, and the batch runs again. A checksum stops edits by anyone
  who does not recompute it; the images themselves are content-addressed in the store.
* Every read goes through the bounded reader (a regular file, at most :data:`MAX_RESULT_BYTES`
  or :data:`MAX_RECORD_BYTES`): a FIFO or ``/dev/zero`` planted as a record is refused, never read.
* :class:`VerifiedKeyStorage` is the cache policy's key storage. It hands Prefect a cache
  record only after checking that it names exactly this serializer and points at its own
  result, and that the result decodes as records. A record that fails is *refused unread*:
  Prefect's cache lookup treats the refusal as a miss, so the batch is made again (from the
  images already in the store, when they are there) and its record rewritten; a warning names
  the path. We regenerate rather than fail the run: the run never trusts the record's content
  (images are content-addressed and checked in the store), so regenerating gives the same
  outputs, and failing would let anyone with write access to the cache, or a truncated write,
  stop every scheduled audit until someone cleaned it by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import get_run_logger
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.serializers import Serializer
from prefect.transactions import get_transaction
from pydantic import Field

from counterfactual_lab.errors import UntrustedResultError
from counterfactual_lab.generation.records import GenerationRecord
from counterfactual_lab.storage.files import read_bytes, storage_options_for
from counterfactual_lab.storage.regular_files import UnreadableFile

log = logging.getLogger(__name__)

RECORDS_FORMAT = "cflab.generation-records"
# 2: a checksum over the records and their cache key.
RECORDS_FORMAT_VERSION = 2
SERIALIZER_TYPE = "cflab-generation-records"
# A batch's records are ~200 bytes each; anything near this is not ours.
MAX_RESULT_BYTES = 16 * 2**20
# A cache record (Prefect's metadata: storage key, serializer, expiration) is a few hundred bytes.
MAX_RECORD_BYTES = 64 * 2**10
_METADATA_KEYS = frozenset(("storage_key", "expiration", "serializer", "prefect_version", "storage_block_id"))
# A result checked during a task run's cache lookup is not read and checked again when the
# same run loads it moments later (the load still decodes with the strict serializer, so a
# result swapped in between fails that task run; it is never run).
_VERIFIED_FOR_SECONDS = 60.0
_VERIFIED: dict[str, float] = {}  # sha256(task run, result path, cache record) -> when it decoded
_VERIFIED_GUARD = threading.Lock()


class StoredTaskError(RuntimeError):
    """A task failure read back from result storage: its type name and message, as data."""

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def records_checksum(key: str | None, records: list[Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of the cache key and the records (as stored)."""
    payload = json.dumps({"key": key, "records": records}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def decode_generation_result(blob: bytes, key: str | None = None) -> list[GenerationRecord] | StoredTaskError:
    """The records (or the stored failure) in ``blob``; :class:`UntrustedResultError` unless it is
    exactly what :class:`GenerationRecordsSerializer` writes, its checksum matches, and (when
    ``key``, the cache key it is stored under, is given) it was written for that key. Builds
    nothing but our own types."""
    if not isinstance(blob, bytes | bytearray):
        raise UntrustedResultError(f"stored result is {type(blob).__name__}, not bytes")
    if len(blob) > MAX_RESULT_BYTES:
        raise UntrustedResultError(f"stored result is {len(blob)} bytes, over the {MAX_RESULT_BYTES} a record may have")
    try:
        data = json.loads(bytes(blob).decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UntrustedResultError(
            f"stored result is not JSON ({type(exc).__name__}); pickles and other formats that can carry code are never read"
        ) from None
    if not isinstance(data, dict) or data.get("format") != RECORDS_FORMAT:
        raise UntrustedResultError(f"stored result is JSON but not a {RECORDS_FORMAT} record")
    if data.get("version") != RECORDS_FORMAT_VERSION:
        raise UntrustedResultError(f"stored {RECORDS_FORMAT} record has version {data.get('version')!r}, not {RECORDS_FORMAT_VERSION}")
    if set(data) == {"format", "version", "key", "records", "checksum"} and isinstance(data["records"], list):
        stored_key = data["key"]
        try:
            expected = records_checksum(stored_key, data["records"])
        except (TypeError, ValueError):
            expected = None
        if data["checksum"] != expected:
            raise UntrustedResultError(f"stored {RECORDS_FORMAT} record does not match its checksum (edited after it was written)")
        if key is not None and stored_key is not None and stored_key != key:
            raise UntrustedResultError(f"stored {RECORDS_FORMAT} record was written for cache key {stored_key}, not {key}")
        try:
            return [GenerationRecord.from_dict(record) for record in data["records"]]
        except ValueError as exc:
            raise UntrustedResultError(f"stored {RECORDS_FORMAT} record is malformed: {exc}") from None
    error = data.get("error")
    if set(data) == {"format", "version", "error"} and isinstance(error, dict) and set(error) == {"type", "message"} \
            and all(isinstance(v, str) for v in error.values()):
        return StoredTaskError(f"{error['type']}: {error['message']}")
    raise UntrustedResultError(f"stored {RECORDS_FORMAT} record has fields {sorted(data)}")


class GenerationRecordsSerializer(Serializer):
    """Prefect result serializer for generation batches: plain JSON in, plain JSON out.

    ``dumps`` takes a list of :class:`GenerationRecord` (a batch's result) or an exception (a
    failed attempt, kept as its type name and message); ``loads`` is
    :func:`decode_generation_result`.
    """

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, BaseException):
            payload: dict[str, Any] = {"error": {"type": type(obj).__name__, "message": str(obj)[:4000]}}
        elif isinstance(obj, list) and all(isinstance(record, GenerationRecord) for record in obj):
            records = [record.to_dict() for record in obj]
            key = _transaction_key()
            payload = {"key": key, "records": records, "checksum": records_checksum(key, records)}
        else:
            raise TypeError(f"{SERIALIZER_TYPE} stores lists of GenerationRecord only, not {type(obj).__name__}")
        payload = {"format": RECORDS_FORMAT, "version": RECORDS_FORMAT_VERSION, **payload}
        return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def loads(self, blob: bytes) -> list[GenerationRecord] | StoredTaskError:
        return decode_generation_result(blob)


def check_cache_record(data: bytes, key: str, where: str) -> str:
    """The result path that the cache record ``data`` (stored under ``key``) points at, or
    :class:`UntrustedResultError` naming ``where`` unless it is a record this project writes:
    plain JSON, exactly our serializer, no storage block, and a result named after its own key."""
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UntrustedResultError(f"refused cache record {where}: not JSON") from None
    if not isinstance(record, dict) or not set(record) <= _METADATA_KEYS:
        raise UntrustedResultError(f"refused cache record {where}: not a Prefect result record")
    serializer = record.get("serializer")
    if serializer != {"type": SERIALIZER_TYPE}:
        named = serializer.get("type") if isinstance(serializer, dict) else serializer
        raise UntrustedResultError(
            f"refused cache record {where}: it names serializer {named!r}, and only {SERIALIZER_TYPE!r} is read"
        )
    if record.get("storage_block_id") is not None:
        raise UntrustedResultError(f"refused cache record {where}: it points at a storage block")
    storage_key = record.get("storage_key")
    if not isinstance(storage_key, str) or PurePosixPath(storage_key.replace("\\", "/")).name != key:
        raise UntrustedResultError(f"refused cache record {where}: its result {storage_key!r} is not the result of {key}")
    return storage_key


def _call_block(block: WritableFileSystem, method: str, *args: Any) -> Any:
    # Prefect's storage blocks dispatch sync/async on `_sync` (see prefect._internal.compatibility.blocks).
    return getattr(block, method)(*args, _sync=True)


def _as_block(storage: WritableFileSystem | str | Path) -> WritableFileSystem:
    if isinstance(storage, WritableFileSystem):
        return storage
    text = str(storage)
    if "://" in text and not text.startswith("file://"):
        return RemoteFileSystem(basepath=text, settings=storage_options_for(text))
    return LocalFileSystem(basepath=str(Path(text.removeprefix("file://")).expanduser()))


class VerifiedKeyStorage(WritableFileSystem):
    """Cache-record storage that refuses any record :func:`check_cache_record` does not accept.

    Wraps the real storage (``inner``: a local folder, ``RemoteFileSystem`` on S3, any
    writable Prefect storage block). On a lookup it also reads the result the record points at
    (through the task's result storage) and checks it decodes, so a planted result is a cache
    miss too, not a failed task. A refusal is logged as a warning naming the path.
    """

    _block_type_name = "Cflab Verified Key Storage"

    inner: WritableFileSystem = Field(description="the storage that holds the cache records")

    @classmethod
    def wrapping(cls, storage: WritableFileSystem | str | Path) -> VerifiedKeyStorage:
        """``storage`` (a folder, an ``s3://`` URI or a block) behind the check; a VerifiedKeyStorage stays as it is."""
        if isinstance(storage, VerifiedKeyStorage):
            return storage
        return cls(inner=_as_block(storage))

    def describe(self, path: str) -> str:
        """Where ``path`` lives, for messages: the inner storage's base path joined with it."""
        base = getattr(self.inner, "basepath", None)
        return f"{str(base).rstrip('/')}/{path}" if base else path

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        where = self.describe(path)
        try:
            data = read_block_path(self.inner, path, MAX_RECORD_BYTES)
        except UnreadableFile as exc:
            _warn(f"refused cache record {where}: {exc}; the batch runs again and its record is rewritten")
            raise UntrustedResultError(f"refused cache record {where}: {exc}") from None
        try:
            storage_key = check_cache_record(data, PurePosixPath(path).name, where)
            self._check_result(storage_key, data)
        except UntrustedResultError as exc:
            _warn(f"{exc}; the batch runs again and its record is rewritten")
            raise
        return data

    async def aread_path(self, path: str) -> bytes:

        return await asyncio.to_thread(self.read_path, path)

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        if isinstance(self.inner, LocalFileSystem):
            # A refused record that was not a regular file (a FIFO, a symlink to a device) is
            # removed, so the record is rewritten (Prefect's LocalFileSystem will not write over it).
            target = _local_block_path(self.inner, path)
            if target.is_symlink() or (target.exists() and not target.is_file()):
                target.unlink()
        return _call_block(self.inner, "write_path", path, content)

    async def awrite_path(self, path: str, content: bytes) -> str:

        return await asyncio.to_thread(self.write_path, path, content)

    def _check_result(self, storage_key: str, record: bytes) -> None:
        """Decode the result ``storage_key`` from the running task's result storage (if any)."""

        context = TaskRunContext.get()
        storage = getattr(getattr(context, "result_store", None), "result_storage", None)
        if storage is None:
            return  # outside a task run: Prefect decodes with the strict serializer anyway
        # Checked once per task run: its lookup and its load follow each other.
        run_id = str(getattr(getattr(context, "task_run", None), "id", ""))
        memo = hashlib.sha256(f"{run_id}\0{storage_key}\0".encode() + record).hexdigest()
        now = time.monotonic()
        with _VERIFIED_GUARD:
            if now - _VERIFIED.get(memo, float("-inf")) < _VERIFIED_FOR_SECONDS:
                return
        try:
            blob = read_block_path(storage, storage_key, MAX_RESULT_BYTES)
            decode_generation_result(blob, PurePosixPath(str(storage_key).replace("\\", "/")).name)
        except FileNotFoundError:
            return  # a miss Prefect reports itself
        except (UntrustedResultError, UnreadableFile) as exc:
            base = getattr(storage, "basepath", None)
            where = storage_key if not base or str(storage_key).startswith(str(base)) else f"{base}/{storage_key}"
            raise UntrustedResultError(f"refused stored result {where}: {str(exc).removeprefix('stored result ')}") from None
        with _VERIFIED_GUARD:
            if len(_VERIFIED) > 10_000:
                _VERIFIED.clear()
            _VERIFIED[memo] = now


def read_block_path(block: WritableFileSystem, path: str, max_bytes: int) -> bytes:
    """``block.read_path(path)`` through the bounded reader for the blocks this project makes
    (a local folder, a remote one): a regular file of at most ``max_bytes`` (``UnreadableFile``
    otherwise). Another kind of block is read by its own ``read_path``."""
    if isinstance(block, LocalFileSystem):
        return read_bytes(str(_local_block_path(block, path)), max_bytes=max_bytes, what="a stored task result")
    if isinstance(block, RemoteFileSystem):
        return read_bytes(block._resolve_path(path), dict(block.settings or {}), max_bytes=max_bytes,
                          what="a stored task result")
    return _call_block(block, "read_path", path)


def _local_block_path(block: LocalFileSystem, path: str) -> Path:
    """Where ``path`` is in a local block, without following a symlink at its end (Prefect's own
    ``_resolve_path`` resolves it, so a record linked to ``/dev/zero`` would be "outside the base
    path", an error the cache lookup swallows); a path that leaves the block's folder is refused."""
    base = Path(block.basepath or ".").expanduser().resolve()
    candidate = Path(path).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    folder = candidate.parent.resolve()
    if folder != base and base not in folder.parents:
        raise ValueError(f"{candidate} is outside of the base path {base}")
    return folder / candidate.name


def _transaction_key() -> str | None:
    """The cache key of the result being written (the running transaction's), if any."""
    transaction = get_transaction()
    key = getattr(transaction, "key", None)
    return key if isinstance(key, str) else None


def _warn(message: str) -> None:
    """Warn in the task run's log when there is one (the Prefect UI shows it), else in ours."""
    try:
            get_run_logger().warning(message)
    except Exception:  # noqa: BLE001 - no run context
        log.warning(message)
