"""Every model loads once per worker process, the same way: one cache, one lock per load, one
placement on the device with its record for the manifest.

:func:`load_once` keeps what a loader built under the key that identifies it (the kind of
model, the model, its revision, the device); callers asking for the same key at once wait for
one load, and every batch a worker runs afterwards gets the loaded model. :func:`on_device`
moves a network to its device in inference mode and records the device and dtype it runs with
(:mod:`counterfactual_lab.models.runtime_record`). The safety rules every ``from_pretrained``
follows (safetensors only, no remote code) are :mod:`counterfactual_lab.models.safety`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from counterfactual_lab.models.runtime_record import record_model_load

T = TypeVar("T")
LoadKey = tuple[str, str, str | None, str]  # (kind, model, revision, device)

_LOADED: dict[LoadKey, Any] = {}
_LOAD_LOCKS: dict[LoadKey, threading.Lock] = {}
_GUARD = threading.Lock()


def load_once(kind: str, model: str, revision: str | None, device: str, build: Callable[[], T]) -> T:
    """What ``build()`` returns, built once per process for (``kind``, ``model``, ``revision``, ``device``).

    ``kind`` tells loads of one folder apart (a diffusers folder loaded as two pipeline classes).
    A failed build is not cached: the next caller tries again.
    """
    key = (kind, str(model), revision, str(device))
    with _GUARD:
        if key in _LOADED:
            return _LOADED[key]
        lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _GUARD:
            if key in _LOADED:
                return _LOADED[key]
        loaded = build()
        with _GUARD:
            _LOADED[key] = loaded
        return loaded


def forget(kind_prefix: str = "") -> None:
    """Drop the loaded models whose kind starts with ``kind_prefix`` (all by default): the next
    load reads from disk again (tests, benchmarks, freeing memory)."""
    with _GUARD:
        for key in [key for key in _LOADED if key[0].startswith(kind_prefix)]:
            del _LOADED[key]
            _LOAD_LOCKS.pop(key, None)


def on_device(network: Any, model: str, revision: str | None, device: Any) -> Any:
    """``network`` on ``device`` in inference mode, its device and dtype recorded for the manifest."""
    network.to(device).eval()
    record_model_load(model, revision, device, next(network.parameters()).dtype)
    return network
