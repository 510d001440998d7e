"""Planting what a hostile writer of a shared folder could put where a file should be: a FIFO, a
symlink to ``/dev/zero`` or an oversized (sparse) regular file (issue 17)."""

from __future__ import annotations

import os
from pathlib import Path

HOSTILE = ["fifo", "dev-zero", "oversized"]


def plant(path: Path, kind: str, limit: int) -> Path:
    """Replace ``path`` with a FIFO, a symlink to /dev/zero, or a sparse regular file of ``limit + 1`` bytes."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as handle:
            handle.truncate(limit + 1)  # sparse: costs no disk; reading it would cost the limit
    return path


def expected_words(kind: str) -> tuple[str, ...]:
    """What the one-line refusal of each kind says."""
    return {"fifo": ("FIFO", "not a regular file"), "dev-zero": ("character device", "not a regular file"),
            "oversized": ("bytes or more, over the",)}[kind]
