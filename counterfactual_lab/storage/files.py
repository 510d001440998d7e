"""Storage over fsspec: local paths and ``s3://`` with one API.

S3 settings come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) or from
explicit storage options, which win.

**One reader**, :func:`read_bytes`, for every file the project did not just write (a manifest,
a run table, a stored image or mask, a cache record, a generation source): it reads a regular
file only, and never more than the caller's ``max_bytes``. Locally a FIFO, a device, a socket or a
directory is refused from ``stat`` without being opened
(:mod:`counterfactual_lab.storage.regular_files`); on an object store the object's listed type
and size are checked and at most ``max_bytes + 1`` bytes are asked for (one ranged request).
A refusal is :class:`~counterfactual_lab.storage.regular_files.UnreadableFile`: one line naming
the path (cflab exits 2), an ``OSError`` to callers that fail one item on any I/O error.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.core import url_to_fs
from PIL import Image

from counterfactual_lab.errors import TransientStorageError, UserError
from counterfactual_lab.storage.regular_files import (
    FileTooLarge,
    NotARegularFile,
    read_regular_file,
)

# The most a stored image (a counterfactual, a mask, a source in the store) may hold: far above
# any PNG this project writes, and what refuses an image swapped for something huge.
STORED_IMAGE_MAX_BYTES = 256 * 2**20

# botocore settings (s3fs ``config_kwargs``) applied to every S3 filesystem unless the storage
# options set them: a stalled endpoint fails a request after these many seconds instead of
# hanging the run. A timed-out request is retried (botocore's attempts, then s3fs's own), and
# a read that still fails is a transient error: the task retries it (runtime.retries).
S3_TIMEOUTS: dict[str, Any] = {"connect_timeout": 10, "read_timeout": 30, "retries": {"total_max_attempts": 3, "mode": "standard"}}


def read_deadline_seconds(uri: str, options: dict[str, Any] | None = None) -> float | None:
    """The most one remote object read (an image) may take, retries included: botocore's
    ``attempts × (connect_timeout + read_timeout)`` from the effective ``config_kwargs``
    (120 s with :data:`S3_TIMEOUTS`), where attempts is ``retries.total_max_attempts``, or
    ``retries.max_attempts + 1`` (botocore counts retries there). None for local paths, or
    when a timeout is switched off.

    s3fs wraps each request in two retry loops of its own (5 × 5 tries, measured), so without
    this bound one stalled object holds a run for 75 read timeouts (measured against a proxy that
    never answers: 75 requests, 127 s at read_timeout 1 s; about 40 min at the default 30 s).
    """
    if not uri.startswith(("s3://", "s3a://")):
        return None
    config = storage_options_for(uri, options)["config_kwargs"]
    connect, read = config.get("connect_timeout"), config.get("read_timeout")
    if connect is None or read is None:
        return None
    retries = config.get("retries") or {}
    if "total_max_attempts" in retries:
        attempts = int(retries["total_max_attempts"])
    elif "max_attempts" in retries:
        attempts = int(retries["max_attempts"]) + 1
    else:
        attempts = 3 if retries.get("mode", "standard") == "standard" else 5  # botocore's defaults
    attempts = max(attempts, 1)
    return float(attempts) * (float(connect) + float(read))


def storage_options_for(uri: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Storage options for ``uri``: explicit options over the standard AWS environment, and for
    S3 the :data:`S3_TIMEOUTS` defaults under ``config_kwargs`` (each key the options leave unset)."""
    options = dict(options or {})
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "client_kwargs" not in options:
            options["endpoint_url"] = endpoint
        # Nested dicts copied: botocore rewrites the retries dict in place, which would change
        # the caller's options (and these defaults) under them.
        config = {**S3_TIMEOUTS, **(options.get("config_kwargs") or {})}
        options["config_kwargs"] = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    return options


def filesystem(uri: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for ``uri``."""
    fs, path = url_to_fs(uri, **storage_options_for(uri, options))
    return fs, path


def absolute_uri(uri: str) -> str:
    """``uri`` with a local path made absolute (remote URIs unchanged), so printed and recorded
    locations stay valid whatever directory a reader runs in."""
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def is_transient(exc: BaseException) -> bool:
    """True for storage errors that a retry can fix (timeouts, throttling, resets)."""
    if isinstance(exc, TransientStorageError | TimeoutError | ConnectionError):
        return True
    # A missing or forbidden file fails the same way every time, whatever its name contains
    # (content keys are hex: one in ~70 contains "503").
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    text = f"{type(exc).__name__} {exc}".lower()
    if any(marker in text for marker in ("timeout", "timed out", "throttl", "slowdown", "connection reset")):
        return True
    # HTTP 500/503 as a status, not as digits inside a path or a key.
    return re.search(r"(?<![0-9a-z])50[03](?![0-9a-z])", text) is not None


# botocore's errors for credentials it cannot find or use. They are not OSErrors (s3fs passes
# them through), so an ``except OSError`` misses them; callers that turn storage errors into
# one-line messages test for them with :func:`is_credentials_error`.
CREDENTIAL_ERRORS = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoAuthTokenError",
    "TokenRetrievalError", "UnauthorizedSSOTokenError", "SSOTokenLoadError",
})


def is_credentials_error(exc: BaseException) -> bool:
    """True for a botocore error about missing or unusable credentials (no botocore import)."""
    return any(cls.__module__.startswith("botocore") and cls.__name__ in CREDENTIAL_ERRORS for cls in type(exc).__mro__)


def credentials_hint(uri: str, exc: BaseException, secret_key: str = "storage_options_secret") -> str:
    """One line for a credentials error on ``uri``: what the process (a worker, a shell) lacks and
    the two ways to give it; ``secret_key`` is where a Secret block is named (a config key, a
    deployment parameter)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"{uri}: no usable S3 credentials in this process ({first}); set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO or another S3-compatible store) in the "
        "environment of the worker or command that runs this, or save them in a Prefect Secret block "
        f"({{\"key\": ..., \"secret\": ...}}) and name it with {secret_key}"
    )


@contextlib.contextmanager
def credentials_named(uri: str, secret_key: str = "storage_options_secret") -> Iterator[None]:
    """Turn botocore's credentials errors (not OSErrors) inside the block into a
    :class:`UserError` on ``uri`` that names the fix (:func:`credentials_hint`)."""
    try:
        yield
    except Exception as exc:
        if is_credentials_error(exc):
            raise UserError(credentials_hint(uri, exc, secret_key)) from None
        raise


@contextlib.contextmanager
def naming_the_path(uri: str) -> Iterator[None]:
    """Let an I/O error that does not say where it happened (a full disk, an S3 "Access
    Denied") carry ``uri`` as its ``filename``: the CLI's one-line error then names the path."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = uri
        raise


def write_bytes_atomic(uri: str, data: bytes, options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``uri`` so that readers see the old file, the new one, or none.

    Locally: a hidden temp file beside the target, flushed to disk, then ``os.replace``; the
    temp file never outlives a failure. On S3 a single PUT is already all or nothing. An I/O
    error names ``uri`` (:func:`naming_the_path`).
    """
    with naming_the_path(uri):
        _write_bytes_atomic(uri, data, options)


def _write_bytes_atomic(uri: str, data: bytes, options: dict[str, Any] | None) -> None:
    if "://" in uri and not uri.startswith("file://"):
        fs, path = filesystem(uri, options)
        fs.pipe_file(path, data)
        return
    path = uri.removeprefix("file://")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def read_bytes(uri: str, options: dict[str, Any] | None = None, *, max_bytes: int, what: str = "a file") -> bytes:
    """The bytes of the regular file (or object) at ``uri``, at most ``max_bytes`` of them.

    Raises :class:`~counterfactual_lab.storage.regular_files.NotARegularFile` for anything else
    (never opened), :class:`~counterfactual_lab.storage.regular_files.FileTooLarge` when there is
    more (``what`` names the kind of file in its message), ``FileNotFoundError`` when missing.
    """
    with naming_the_path(uri):
        if not _is_remote(uri):
            path = uri.removeprefix("file://")
            data, size = read_regular_file(path, max_bytes)
            if data is None:
                raise FileTooLarge(uri, size, max_bytes, what)
            return data
        fs, path = filesystem(uri, options)
        data, size = read_object(fs, path, max_bytes, read_deadline_seconds(uri, options))
        if data is None:
            raise FileTooLarge(uri, size, max_bytes, what)
        return data


def read_object(fs: Any, path: str, limit: int, deadline: float | None) -> tuple[bytes | None, int]:
    """``(content, size)`` of an object store's object; content None (not read) over ``limit`` bytes.

    Reads at most ``limit + 1`` bytes (one ranged request) whatever the object's size. Each
    call ends within ``deadline`` seconds, retries included (:func:`read_deadline_seconds`):
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


def exists(uri: str, options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.exists(path)


# ImageStore.existing on an object store: up to this many keys, one lookup each; more, one listing.
LISTING_THRESHOLD = 256
LOOKUP_THREADS = 8


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass(frozen=True)
class ImageStore:
    """Content-addressed PNG store shared by every run under one output root.

    ``OUT/images/<key>.png``: a key already present is never computed or written again.
    """

    root_uri: str
    storage_options: dict[str, Any] | None = None

    def uri(self, key: str) -> str:
        return join(self.root_uri, "images", f"{key}.png")

    def has(self, key: str) -> bool:
        return exists(self.uri(key), self.storage_options)

    def existing(self, keys: list[str]) -> set[str]:
        """The subset of ``keys`` already stored.

        Cost follows ``len(keys)``, not the size of the store: every generation batch asks
        about its own few keys while the store grows to every image of every run, so a
        listing per batch made generation quadratic (10⁴ work items: 12.6 s of 74 s in
        listings). Locally one ``stat`` per key. On an object store a few keys are looked up
        one request each, on threads; more than :data:`LISTING_THRESHOLD` keys take one
        listing (one request per 1,000 stored images).
        """
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()
        fs, path = filesystem(join(self.root_uri, "images"), self.storage_options)
        if not _is_remote(self.root_uri):
            return {k for k in keys if os.path.isfile(os.path.join(path, f"{k}.png"))}
        if len(keys) <= LISTING_THRESHOLD:
            with ThreadPoolExecutor(max_workers=min(LOOKUP_THREADS, len(keys))) as pool:
                found = pool.map(lambda k: fs.exists(f"{path}/{k}.png"), keys)
                return {k for k, there in zip(keys, found) if there}
        try:
            names = {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            return set()
        return {k for k in keys if f"{k}.png" in names}

    def put_png(self, key: str, image: Any) -> str:
        """Store a PIL image as PNG under ``key``; returns its URI."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        uri = self.uri(key)
        write_bytes_atomic(uri, buffer.getvalue(), self.storage_options)
        return uri

    def get(self, key: str) -> Any:
        """The stored image as an RGB PIL image."""
        return read_image(self.uri(key), self.storage_options)

    def load(self, uri: str) -> Any:
        """Any image URI this store's credentials can read, as an RGB PIL image."""
        return read_image(uri, self.storage_options)


def read_image(uri: str, options: dict[str, Any] | None = None, max_bytes: int = STORED_IMAGE_MAX_BYTES) -> Any:
    """The image at ``uri`` (any store, any format) as an RGB PIL image; a regular file of at
    most ``max_bytes`` (:func:`read_bytes`)."""

    with Image.open(io.BytesIO(read_bytes(uri, options, max_bytes=max_bytes, what="an image"))) as img:
        return img.convert("RGB")
