"""Read a local file only when it is a regular file, with a byte limit, and never block on it.

A dataset row may name any path inside the dataset root, and a root on shared storage may hold
anything: a FIFO (``open`` blocks until a writer appears, so one row would hang the run
forever), a character device (``/dev/zero`` never ends and reports size 0; ``/dev/tty`` would
make the run the terminal's), a block device, a socket or a directory. :func:`read_regular_file`
decides from ``os.stat`` before anything is opened, so such a path is never opened at all.

A path swapped between that ``stat`` and the ``open`` (a regular file replaced by a FIFO)
cannot hang the run either: the file is opened with ``O_NONBLOCK`` (an open of a FIFO without
a writer returns at once) and ``O_NOCTTY``, and the open descriptor must be the same regular
file (same device and inode) that ``stat`` saw, or nothing is read.

Every local read of a path that data or a model folder names goes through here: ingest's image
reads (:func:`read_regular_file`), the content hashes of dataset files, referenced images and
model files (:func:`open_regular_file`, in :mod:`counterfactual_lab.storage.file_hashes`), a generation
source read from a local path, and the JSON configs of a model folder checked for custom code.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from counterfactual_lab.errors import UserError

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISLNK, "symbolic link"),
)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class UnreadableFile(UserError, OSError):
    """A file refused before it was read (or before it was read past its limit): not a regular
    file, or larger than what may be read from it. An ``OSError`` (callers that quarantine or
    fail one item on any I/O error do so) and a ``UserError`` (cflab prints its one line, exit 2)."""

    def __str__(self) -> str:  # the message names the path; an OSError's would turn into "[Errno None] ..."
        return str(self.args[0]) if self.args else type(self).__name__


class NotARegularFile(UnreadableFile):
    """The path exists but is not a regular file (``kind`` says what it is); it was not read."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path} is a {kind}, not a regular file")
        self.path = path
        self.kind = kind


class FileTooLarge(UnreadableFile):
    """The file holds more than ``limit`` bytes (``size``: at least this many); it was not read whole."""

    def __init__(self, path: str, size: int, limit: int, what: str = "a file") -> None:
        super().__init__(f"{path} has {size:,} bytes or more, over the {limit:,}-byte limit for {what}")
        self.path, self.size, self.limit = path, size, limit


def file_kind(mode: int) -> str:
    """What an ``st_mode`` describes, in words: "regular file", "FIFO (named pipe)", ..."""
    if stat.S_ISREG(mode):
        return "regular file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "special file"


@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike, inode: int | None = None) -> Iterator[BinaryIO]:
    """An unbuffered binary handle on the regular file at ``path`` (symlinks followed).

    Raises :class:`NotARegularFile` for anything else, checked before opening (nothing that is
    not a regular file is ever opened) and again on the open descriptor (a path swapped between
    the check and the open is refused, never waited on). ``inode``: the inode an earlier ``stat``
    saw (e.g. a hash cache's key); a different file at the path now is refused the same way.
    ``FileNotFoundError`` and other ``OSError`` as ``os.stat``/``os.open`` raise them.
    """
    path = os.fspath(path)
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotARegularFile(path, file_kind(before.st_mode))
    if inode is not None and before.st_ino != inode:
        raise NotARegularFile(path, "different file (replaced since it was listed)")
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise NotARegularFile(path, f"{file_kind(opened.st_mode)} swapped in while it was being opened")
        yield handle


def read_regular_file(path: str, max_bytes: int) -> tuple[bytes | None, int]:
    """``(content, size)`` of the regular file at ``path`` (symlinks followed).

    ``content`` is None when the file is larger than ``max_bytes``: it is then not read at
    all, and ``size`` says how large it is. Raises :class:`NotARegularFile` for anything that
    is not a regular file (without opening it), ``FileNotFoundError`` and other ``OSError``
    as ``os.stat``/``os.open`` raise them.
    """
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotARegularFile(path, file_kind(before.st_mode))
    if before.st_size > max_bytes:
        return None, before.st_size
    with open_regular_file(path, inode=before.st_ino) as handle:
        data = _read_at_most(handle, max_bytes + 1)  # one byte more tells "grew past the limit"
        if len(data) > max_bytes:
            return None, max(len(data), os.fstat(handle.fileno()).st_size)
    return data, len(data)


def _read_at_most(handle, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = handle.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
