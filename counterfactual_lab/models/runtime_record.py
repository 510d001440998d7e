"""Which device and dtype each model was actually loaded with, as the loaders report it.

The loaders (:mod:`counterfactual_lab.models.diffusion`, :mod:`counterfactual_lab.models.clip`)
call :func:`record_model_load` once per model they load, with the device they moved it to and
the dtype its parameters have. The manifest's ``runtime`` section reads this record back for the
models of the run (:func:`runtime_section`).

The record lives in the process that loaded the model. With the thread runner that is the
flow's own process; with Ray the models load in worker processes, so the flow's record has no
entry for them and the section falls back to what the device rule (:mod:`counterfactual_lab.models.devices`)
resolves on the flow's machine, saying so with ``observed: false``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any

_loads: dict[tuple[str, str | None, str], str] = {}
_lock = threading.Lock()


def record_model_load(model: str, revision: str | None, device: Any, dtype: Any) -> None:
    """Remember that ``model`` (as the config names it) runs on ``device`` in ``dtype`` in this process."""
    with _lock:
        _loads[(str(model), revision, _device_name(device))] = _dtype_name(dtype)


def observed_load(model: str, revision: str | None, device: Any) -> str | None:
    """The dtype ``model`` was loaded with on ``device`` in this process, or None if it was not."""
    with _lock:
        return _loads.get((str(model), revision, _device_name(device)))


def runtime_section(models: Mapping[str, tuple[str, str | None]], device_preference: str) -> dict[str, Any]:
    """The manifest's ``runtime``: ``device`` and ``dtype`` used, per-role detail, and the accelerator stack.

    ``models`` maps a role to ``(model, revision)`` as the config names them. ``device`` and
    ``dtype`` are single values when every role agrees (the one device rule makes them agree);
    otherwise the distinct values, sorted and joined with ``", "``.
    """
    # here, not at the top: it imports torch
    from counterfactual_lab.models.devices import dtype_for, resolve_device

    device = resolve_device(device_preference)
    roles: dict[str, dict[str, Any]] = {}
    for role, (model, revision) in models.items():
        dtype = observed_load(model, revision, device)
        roles[role] = {
            "device": _device_name(device),
            "dtype": dtype or _dtype_name(dtype_for(device)),
            "observed": dtype is not None,
        }
    section: dict[str, Any] = {
        "device": _one(r["device"] for r in roles.values()) or _device_name(device),
        "dtype": _one(r["dtype"] for r in roles.values()) or _dtype_name(dtype_for(device)),
        "device_preference": device_preference,
        "models": roles,
    }
    section.update(_accelerator_stack(device))
    return section


def _accelerator_stack(device: Any) -> dict[str, Any]:
    """torch's CUDA/cuDNN builds and the GPU's name: kernels, and so the last digits, depend on them."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    stack: dict[str, Any] = {"torch_cuda": torch.version.cuda, "cudnn": None, "gpu": None}
    if torch.backends.cudnn.is_available():
        stack["cudnn"] = torch.backends.cudnn.version()
    if getattr(device, "type", None) == "cuda":
        stack["gpu"] = torch.cuda.get_device_name(device)
    return stack


def _one(values: Any) -> str | None:
    distinct = sorted(set(values))
    return ", ".join(distinct) if distinct else None


def _device_name(device: Any) -> str:
    return str(device)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
