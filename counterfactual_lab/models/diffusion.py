"""Load diffusion pipelines the way a security reviewer accepts, once per worker process.

* ``from_pretrained(hub id or local dir, revision=...)``, through
  :func:`counterfactual_lab.models.safety.safe_load_kwargs`: safetensors only (a folder with
  only pickle checkpoints is refused with :class:`UnsafeModelError`), no remote code.
* fp16 on CUDA, fp32 elsewhere (fp16 kernels on CPU are slow or missing).
* Once per process for each ``(method, model, revision, device)`` (:mod:`counterfactual_lab.models.load_once`):
  every batch a worker runs reuses the pipeline it loaded first.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.errors import UnsafeModelError, UserError
from counterfactual_lab.models.devices import dtype_for, resolve_device
from counterfactual_lab.models.image_processors import prefer_pil_image_processors
from counterfactual_lab.models.load_once import forget, load_once
from counterfactual_lab.models.runtime_record import record_model_load
from counterfactual_lab.models.safety import (
    is_local_model,
    remote_code_refusal,
    safe_load_kwargs,
)

PIPELINE_KIND = "diffusers-pipeline:"  # load_once's kind: one per method (its pipeline class)
_call_locks: dict[int, threading.Lock] = {}
_call_locks_guard = threading.Lock()
# The first `import diffusers` replaces the module in sys.modules with a lazy one; a second
# thread importing it meanwhile gets the replaced, empty module object (AttributeError for every
# pipeline class). One thread at a time imports it and resolves the class.
_class_lock = threading.Lock()


def pipeline_class(method: str):
    """The diffusers pipeline class ``method``'s row names (imported now; no weights are read)."""
    weighted = sorted(name for name, facts in METHODS.items() if facts.has_weights)
    if method not in weighted:
        raise UserError(f"unknown generation method {method!r}; expected one of {weighted}")
    facts = METHODS[method]
    with _class_lock:

        prefer_pil_image_processors()  # before diffusers imports them: no torchvision warning
        # under the lock: a first import of diffusers replaces its module object
        import diffusers

        return getattr(diffusers, facts.pipeline_class)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    # diffusers renamed torch_dtype to dtype (0.36+); pass whichever this version expects.
    try:
        # a probe: diffusers 0.36+ has it, and reads dtype= instead of torch_dtype=
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _load(method: str, model: str, revision: str | None, device: torch.device, dtype: torch.dtype):
    # here, not at the top: it imports diffusers
    from diffusers.utils import logging as diffusers_logging

    # here, not at the top: it imports transformers
    from transformers.utils import logging as transformers_logging

    # The pipeline shows one progress bar of its own (per batch); per-component loading bars
    # from each worker would bury it.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    cls = pipeline_class(method)
    kwargs = safe_load_kwargs(model, revision)
    kwargs.update(_dtype_kwarg(dtype))
    # The audit never generates unsafe prompts of its own and the checker would blank
    # images at random on tiny models; the judge decides what is kept.
    kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipeline = cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        refusal = remote_code_refusal(model, exc)  # a custom pipeline or component class: never imported
        if refusal is not None:
            raise refusal from None
        text = str(exc)
        if "safetensors" in text.lower():
            raise UnsafeModelError(
                f"model {model!r} has no safetensors weights for some component ({text.splitlines()[0]}); "
                "convert its pickle checkpoints to safetensors"
            ) from exc
        if is_local_model(model):
            where = "local folder"
        elif model.startswith((".", "/", "~")):
            where = "no such local folder"
        else:
            where = "hub id: not in the local cache and the hub is unreachable, or no such repo"
        raise UserError(
            f"cannot load {method} model {model!r} ({where}, revision {revision or 'default'}): {text.splitlines()[0] if text else type(exc).__name__}"
        ) from exc
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    record_model_load(model, revision, device, pipeline.dtype)  # the manifest's runtime.device/dtype
    return pipeline


def load_pipeline(method: str, model: str, revision: str | None = None, device: str = "auto"):
    """The diffusers pipeline for ``method`` from ``model`` (hub id or local folder).

    Loaded once per process for each ``(method, model, revision, device)`` (the device decides the
    dtype) and shared afterwards; concurrent callers asking for the same key wait for one load.
    """
    torch_device = resolve_device(device)
    dtype = dtype_for(torch_device)
    pipeline_class(method)  # fail on an unknown method before touching any file
    return load_once(f"{PIPELINE_KIND}{method}", str(model), revision, str(torch_device),
                     lambda: _load(method, str(model), revision, torch_device, dtype))


def pipeline_lock(pipeline: Any) -> threading.Lock:
    """The lock to hold while calling ``pipeline``.

    Pipelines keep per-call state (scheduler timesteps, LEDITS++ inversions), so two threads
    of one worker must not run the same pipeline object at once.
    """
    with _call_locks_guard:
        return _call_locks.setdefault(id(pipeline), threading.Lock())


def clear_pipeline_cache() -> None:
    """Drop every cached pipeline (frees memory; the next load reads from disk again)."""
    forget(PIPELINE_KIND)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
