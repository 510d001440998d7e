"""sha256 of local files, remembered so that a rerun does not read gigabytes again.

Model weights and dataset files are identified by their content (``sha256``), but hashing a
10 GB checkpoint on every ``cflab audit`` would cost minutes. The hash of a file is therefore
cached under its *stat key*

    (real path, size, mtime_ns, inode, ctime_ns)

and read again only when one of the five changes: rewriting a file in place changes its size,
mtime and ctime, replacing it (a new download, ``os.replace``) changes its inode. The ctime is
what no one can set back: ``os.utime`` (``touch -d``) restores an mtime, but every write and
every ``utime`` moves the ctime to now, so an image rewritten in place with the same size,
mtime and inode is still read again. Where a filesystem reports no ctime (``st_ctime_ns`` 0)
the cache is bypassed: the file is hashed every time, never trusted on the other four alone.
A cache hit costs one ``stat`` and one SQLite lookup.

The cache is a SQLite file, ``file-hashes.sqlite``, in the local cache folder:
``$CFLAB_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/counterfactual-lab``, else
``~/.cache/counterfactual-lab``. Deleting it is always safe (the next run hashes again). When it
cannot be opened or written (a read-only home), files are hashed without it: slower, never wrong.

In front of it sits a per-process memo (stat key → sha256): ``cflab audit`` locates its run
twice (the CLI, then the flow it starts), and the second time every file costs a ``stat`` and
a dict lookup, not a SQLite query. The file is asked in batches (:data:`LOOKUP_BATCH` paths
per query), never one query per file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# One exception for "not a regular file", wherever a path is read (a FIFO would block a reader).
from counterfactual_lab.storage.regular_files import (
    NotARegularFile,
    file_kind,
    open_regular_file,
)

CACHE_DIR_ENV = "CFLAB_CACHE_DIR"
CACHE_FILE_NAME = "file-hashes.sqlite"
CHUNK_BYTES = 4 * 1024 * 1024
# Threads that hash files missing from the cache: hashlib releases the GIL on large buffers,
# and disks (or network mounts) serve several readers at once.
HASH_WORKERS = min(4, os.cpu_count() or 1)
# Paths per SQLite lookup (SQLite allows 32 766 bound parameters since 3.32).
LOOKUP_BATCH = 500
# The per-process memo holds at most this many hashes (~200 bytes each); past it, it starts over.
MEMO_ENTRIES = 1_000_000

_memo: dict["StatKey", str] = {}
_memo_lock = threading.Lock()

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The folder of the local cache (see the module docstring)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "counterfactual-lab"


@dataclass(frozen=True)
class StatKey:
    """What says a file is still the one that was hashed."""

    path: str  # real path: symlinks (Hugging Face snapshots) resolved
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int  # 0: the filesystem reports none, and the file is never taken from the cache

    @property
    def cacheable(self) -> bool:
        return self.ctime_ns != 0


def stat_key(path: str | os.PathLike, real: str | None = None) -> StatKey:
    """The stat key of a regular file; raises ``FileNotFoundError`` or :class:`NotARegularFile`.
    ``real``: ``path``'s real path when the caller has resolved it already."""
    real = real if real is not None else os.path.realpath(path)
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise NotARegularFile(str(path), file_kind(info.st_mode))
    return StatKey(real, info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)


def sha256_file(path: str | os.PathLike, inode: int | None = None) -> str:
    """The sha256 (hex) of a regular file's bytes, read in chunks (never whole in memory).

    Opened only as a regular file (:func:`~counterfactual_lab.storage.regular_files.open_regular_file`:
    a FIFO swapped in after the stat raises :class:`NotARegularFile` instead of blocking);
    ``inode``: the one its stat key saw, so a file replaced meanwhile is not hashed under that key.
    """
    digest = hashlib.sha256()
    with open_regular_file(path, inode=inode) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{path as given: sha256}`` for local regular files, through the cache.

    Raises ``FileNotFoundError`` for a missing path and :class:`NotARegularFile` for anything
    that is not a regular file; callers that must survive those (a dataset's image references)
    stat first with :func:`stat_key` and pass the keys to :func:`sha256_of_keys`.
    """
    return sha256_of_keys({str(p): stat_key(p) for p in paths})


def sha256_of_keys(keys: Mapping[str, StatKey]) -> dict[str, str]:
    """``{name: sha256}`` for files already stat'ed (``name`` → its :func:`stat_key`): from the
    per-process memo, then the SQLite cache, else read (and remembered in both)."""
    if not keys:
        return {}
    with _memo_lock:
        known = {key: _memo[key] for key in set(keys.values()) if key in _memo}
    wanted = {key for key in keys.values() if key not in known and key.cacheable}
    if wanted:
        cache = _Cache.open()
        try:
            found = cache.lookup(wanted)
            missing = sorted(wanted - set(found), key=lambda k: k.path)
            if missing:
                with ThreadPoolExecutor(max_workers=min(HASH_WORKERS, len(missing))) as pool:
                    fresh = dict(zip(missing, pool.map(lambda k: sha256_file(k.path, k.inode), missing)))
                # A file that changed while it was read must not be remembered under its old key.
                fresh = {k: h for k, h in fresh.items() if _unchanged(k)}
                cache.store(fresh)
                found.update(fresh)
        finally:
            cache.close()
        _remember(found)
        known.update(found)
    # No ctime: hashed here every time (the last line), never remembered.
    return {
        given: known[key] if key in known else sha256_file(key.path, key.inode)
        for given, key in keys.items()
    }


def _remember(hashes: Mapping[StatKey, str]) -> None:
    with _memo_lock:
        if len(_memo) + len(hashes) > MEMO_ENTRIES:
            _memo.clear()
        _memo.update(hashes)


def forget_memo() -> None:
    """Empty this process's memo (tests; the SQLite cache is untouched)."""
    with _memo_lock:
        _memo.clear()


def _unchanged(key: StatKey) -> bool:
    try:
        return stat_key(key.path) == key
    except OSError:
        return False


class _Cache:
    """The SQLite table ``hashes_v2(path, size, mtime_ns, inode, ctime_ns, sha256)``; a no-op when
    unusable. (The first table, ``hashes``, had no ctime: its rows are never read.)"""

    def __init__(self, connection: sqlite3.Connection | None) -> None:
        self.connection = connection

    @classmethod
    def open(cls) -> "_Cache":
        folder = cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(folder / CACHE_FILE_NAME, timeout=30)
            connection.execute(
                "CREATE TABLE IF NOT EXISTS hashes_v2 (path TEXT NOT NULL, size INTEGER NOT NULL, "
                "mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, "
                "PRIMARY KEY (path, size, mtime_ns, inode, ctime_ns))"
            )
            connection.commit()
        except (OSError, sqlite3.Error) as exc:
            logger.warning("file hash cache in %s is not usable (%s); hashing without it", folder, exc)
            return cls(None)
        return cls(connection)

    def lookup(self, keys: Iterable[StatKey]) -> dict[StatKey, str]:
        """The cached hashes of ``keys``: one query per :data:`LOOKUP_BATCH` paths; a row counts
        only when its size, mtime, inode and ctime are the key's too."""
        if self.connection is None:
            return {}
        by_path: dict[str, list[StatKey]] = {}
        for key in set(keys):
            by_path.setdefault(key.path, []).append(key)
        paths = sorted(by_path)
        found: dict[StatKey, str] = {}
        try:
            for start in range(0, len(paths), LOOKUP_BATCH):
                batch = paths[start : start + LOOKUP_BATCH]
                rows = self.connection.execute(
                    f"SELECT path, size, mtime_ns, inode, ctime_ns, sha256 FROM hashes_v2 "
                    f"WHERE path IN ({','.join('?' * len(batch))})",
                    batch,
                ).fetchall()
                for path, size, mtime_ns, inode, ctime_ns, digest in rows:
                    key = StatKey(path, size, mtime_ns, inode, ctime_ns)
                    if key in by_path.get(path, ()):
                        found[key] = digest
        except sqlite3.Error as exc:
            logger.warning("file hash cache lookup failed (%s); hashing without it", exc)
            return {}
        return found

    def store(self, hashes: dict[StatKey, str]) -> None:
        if self.connection is None or not hashes:
            return
        try:
            with self.connection:
                # One entry per path: older versions of a file are never asked for again.
                self.connection.executemany("DELETE FROM hashes_v2 WHERE path = ?", [(k.path,) for k in hashes])
                self.connection.executemany(
                    "INSERT OR REPLACE INTO hashes_v2 VALUES (?, ?, ?, ?, ?, ?)",
                    [(k.path, k.size, k.mtime_ns, k.inode, k.ctime_ns, h) for k, h in hashes.items()],
                )
        except sqlite3.Error as exc:
            logger.warning("file hash cache not updated (%s); the next run hashes these files again", exc)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
