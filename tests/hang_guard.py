"""Run a call that must not hang, and fail the test (instead of hanging the suite) if it does.

A reader blocked opening a FIFO blocks forever, and a thread pool's worker stuck there would
also keep pytest from exiting. :func:`call_within` runs the call in a daemon thread; on timeout
it opens each named FIFO for writing once, which releases any reader blocked on it, then fails.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def call_within(seconds: float, fn: Callable[[], T], fifos: Iterable[Path] = (), what: str = "the call") -> T:
    """``fn()``'s result or exception, failing the test if it takes longer than ``seconds``."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="hang-guard")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waiting on this one
        worker.join(10)
        pytest.fail(f"{what} still running after {seconds:.0f} s: something blocked (a FIFO or device opened?)")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
