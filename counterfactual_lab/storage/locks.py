"""Leased locks in a folder of the output store (local disk or ``s3://``): one writer per key.

Two audits of the same config, on one machine or several, generate the same batches into the
same content-addressed store. :class:`StoreLockManager` lets one of them make a batch while the
other waits and then reuses it. It implements the lock-manager protocol of Prefect's
transactions (``prefect.locking.protocol.LockManager``: ``acquire_lock``, ``release_lock``,
``is_locked``, ``is_lock_holder``, ``wait_for_lock`` and their async forms) without importing
Prefect, so a cache policy with ``isolation_level="SERIALIZABLE"`` can use it.

How a lock works:

* The lock of ``key`` is the file ``<root>/<key>.lock``, holding JSON ``{holder, host, pid,
  acquired_at, expires_at}``. It is created only if absent, atomically with its content:
  locally a hard link of a finished temporary file (``link`` fails if the name exists); on S3
  a conditional PUT (``If-None-Match: *``), which S3 applies to exactly one of two racing writers.
* A lock is a lease of ``lease_seconds``: while held, a heartbeat thread pushes its expiry
  forward every third of the lease. A holder that dies (``kill -9``, a lost machine) stops
  renewing, and the lock is taken over once it has expired, or at once when the holder was a
  process on this host that no longer exists. A run killed mid-batch therefore never blocks
  the next one for longer than a lease.
* What the lock guards is efficiency, not correctness: images and records are written
  atomically under content keys, so two writers of one batch (possible only when a holder
  stalls for longer than its lease, or two waiters take over one stale lock at the same
  moment) write the same bytes twice, nothing worse.

Wall-clock expiry is compared across machines: clocks must agree to well within a lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

from counterfactual_lab.storage.files import filesystem, join, read_bytes
from counterfactual_lab.storage.regular_files import UnreadableFile

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
# A lock record is ~150 bytes; anything larger (or not a regular file) was not written by a holder.
MAX_LOCK_BYTES = 64 * 1024
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_POLL_SECONDS = 0.2
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StoreLockManager:
    """Prefect-compatible lock manager over lock files under ``root_uri`` (local or ``s3://``).

    ``lease_seconds``: how long a lock outlives its last heartbeat (a crashed holder blocks a
    key at most this long). ``poll_seconds``: how often a waiter looks again. Instances pickle
    (for Ray workers) and deep-copy (for ``CachePolicy.configure``) as their configuration:
    the locks a process holds belong to the instance that took them.
    """

    def __init__(
        self,
        root_uri: str,
        storage_options: dict[str, Any] | None = None,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        if not root_uri or not str(root_uri).strip():
            raise ValueError("StoreLockManager needs a root folder for its lock files")
        if not lease_seconds > 0 or not poll_seconds > 0:
            raise ValueError(f"lease_seconds and poll_seconds must be positive, got {lease_seconds}, {poll_seconds}")
        self.root_uri = str(root_uri).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.lease_seconds = float(lease_seconds)
        self.poll_seconds = float(poll_seconds)
        self._setup()

    def _setup(self) -> None:
        self._fs_path: tuple[Any, str] | None = None
        self._held: dict[str, tuple[str, bool]] = {}  # key -> (holder, renewed by the heartbeat)
        self._guard = threading.Lock()
        # Renewing and releasing one key must not interleave: a renewal written after the
        # release removed the file would recreate a lock nobody holds.
        self._renewal = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._host = socket.gethostname()

    # -- pickling and copying: configuration only ------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("root_uri", "storage_options", "lease_seconds", "poll_seconds")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def __deepcopy__(self, memo: dict[int, Any]) -> StoreLockManager:
        return self  # one process, one view of the locks it holds

    def __repr__(self) -> str:
        return f"StoreLockManager({self.root_uri!r}, lease_seconds={self.lease_seconds})"

    # -- the lock-manager protocol ---------------------------------------------------------

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        """Take the lock of ``key`` for ``holder``; wait while another live holder has it.

        ``acquire_timeout``: give up (return False) after this many seconds (0: one try;
        None: wait as long as the other holder keeps renewing). ``hold_timeout``: a fixed
        lease of that many seconds, not renewed (None: renewed until released).
        """
        path = self.lock_path(key)
        deadline = None if acquire_timeout is None else time.monotonic() + max(0.0, acquire_timeout)
        renew = hold_timeout is None
        lease = self.lease_seconds if renew else float(hold_timeout)
        while True:
            if self._create(path, self._record(holder, lease)):
                self._remember(key, holder, renew)
                return True
            current = self._read(path)
            if current is None:
                continue  # released between our try and our look: try again at once
            if current.get("holder") == holder:
                self._remember(key, holder, renew)
                return True
            if self._is_stale(current):
                log.warning("taking over the expired lock %s of %s", path, self._who(current))
                self._remove(path)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_seconds)

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``holder``'s lock of ``key``. A lock that is no longer ``holder``'s (it expired and
        another took it over) is left alone, with a warning: deleting it would free a live writer's key."""
        path = self.lock_path(key)
        with self._renewal:
            with self._guard:
                self._held.pop(key, None)
            current = self._read(path)
            if current is None:
                return
            if current.get("holder") != holder:
                log.warning("lock %s is no longer held by %s (now %s); left in place", path, holder, self._who(current))
                return
            self._remove(path)

    def is_locked(self, key: str) -> bool:
        """True while a live holder (this process or another) has the lock of ``key``."""
        with self._guard:
            if key in self._held:
                return True
        current = self._read(self.lock_path(key))
        return current is not None and not self._is_stale(current)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._guard:
            held = self._held.get(key)
        if held is not None:
            return held[0] == holder
        current = self._read(self.lock_path(key))
        return current is not None and current.get("holder") == holder and not self._is_stale(current)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is free; False if still locked after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_seconds)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)

    # -- files -------------------------------------------------------------------------------

    def lock_path(self, key: str) -> str:
        """The URI of ``key``'s lock file; a key that is not a plain name is refused."""
        if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key:
            raise ValueError(f"lock key {key!r} must be a plain name (letters, digits, '_', '-', '.')")
        return join(self.root_uri, key + LOCK_SUFFIX)

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs_path is None:
            self._fs_path = filesystem(self.root_uri, self.storage_options)
        return self._fs_path

    def _is_local(self) -> bool:
        protocol = self._filesystem()[0].protocol
        return bool({"file", "local"} & set(protocol if isinstance(protocol, tuple | list) else (protocol,)))

    def _fs_path_of(self, uri: str) -> str:
        fs, _ = self._filesystem()
        return fs._strip_protocol(uri)

    def _record(self, holder: str, lease: float) -> bytes:
        now = time.time()
        record = {"holder": holder, "host": self._host, "pid": os.getpid(), "acquired_at": now, "expires_at": now + lease}
        return json.dumps(record).encode()

    def _create(self, uri: str, data: bytes) -> bool:
        """Write ``data`` at ``uri`` only if nothing is there; True if this call created it."""
        fs, _ = self._filesystem()
        path = self._fs_path_of(uri)
        if self._is_local():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temp = f"{path}.{uuid.uuid4().hex}.tmp"
            try:
                with open(temp, "wb") as handle:
                    handle.write(data)
                os.link(temp, path)  # atomic, and fails if the name exists
                return True
            except FileExistsError:
                return False
            finally:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # 412 without a condition name, 409 for a racing conditional write
            text = str(exc)
            if any(marker in text for marker in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")):
                return False
            raise

    def _read(self, uri: str) -> dict[str, Any] | None:
        try:
            data = read_bytes(uri, self.storage_options, max_bytes=MAX_LOCK_BYTES, what="a lock file")
        except FileNotFoundError:
            return None
        except UnreadableFile:  # a FIFO or a huge file where a lock should be: never waited on
            return {"malformed": True}
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return {"malformed": True}
        return record if isinstance(record, dict) else {"malformed": True}

    def _overwrite(self, uri: str, data: bytes) -> None:
        fs, _ = self._filesystem()
        path = self._fs_path_of(uri)
        if self._is_local():
            temp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        else:
            fs.pipe_file(path, data)

    def _remove(self, uri: str) -> None:
        fs, _ = self._filesystem()
        try:
            fs.rm_file(self._fs_path_of(uri))
        except FileNotFoundError:
            pass

    def _is_stale(self, record: dict[str, Any]) -> bool:
        if record.get("malformed"):
            return True  # our writes are atomic: an unreadable lock was not written by a live holder
        expires = record.get("expires_at")
        if not isinstance(expires, int | float) or expires < time.time():
            return True
        pid = record.get("pid")
        return record.get("host") == self._host and isinstance(pid, int) and not _pid_alive(pid)

    @staticmethod
    def _who(record: dict[str, Any]) -> str:
        return f"holder {record.get('holder')} (host {record.get('host')}, pid {record.get('pid')})"

    # -- the heartbeat ---------------------------------------------------------------------

    def _remember(self, key: str, holder: str, renew: bool) -> None:
        with self._guard:
            self._held[key] = (holder, renew)
            if renew and (self._heartbeat is None or not self._heartbeat.is_alive()):
                self._heartbeat = threading.Thread(target=self._renew_loop, name="cflab-lock-heartbeat", daemon=True)
                self._heartbeat.start()

    def _renew_loop(self) -> None:
        while True:
            time.sleep(self.lease_seconds / 3)
            with self._guard:
                renewing = {k: h for k, (h, renew) in self._held.items() if renew}
                if not renewing:
                    self._heartbeat = None
                    return
            for key, holder in renewing.items():
                try:
                    self._renew(key, holder)
                except Exception as exc:  # noqa: BLE001 - a missed renewal only shortens the lease
                    log.warning("could not renew lock %s: %s", self.lock_path(key), exc)

    def _renew(self, key: str, holder: str) -> None:
        path = self.lock_path(key)
        with self._renewal:
            with self._guard:
                if self._held.get(key, (None,))[0] != holder:
                    return  # released meanwhile
            current = self._read(path)
            if current is None or current.get("holder") != holder:
                with self._guard:
                    self._held.pop(key, None)
                log.warning("lock %s was taken over while %s held it", path, holder)
                return
            self._overwrite(path, self._record(holder, self.lease_seconds))
