"""Load diffusion pipelines the way a security reviewer accepts, once per worker process.

* ``from_pretrained(hub id or local dir, revision=...)``, through
  :func:`counterfactual_lab.model_safety.safe_load_kwargs`: safetensors only (a folder with
  only pickle checkpoints is refused with :class:`UnsafeModelError`), no remote code.
* fp16 on CUDA, fp32 elsewhere (fp16 kernels on CPU are slow or missing).
* A per-process cache keyed by ``(method, model, revision, dtype, device)``: every batch a
  worker runs reuses the pipeline it loaded first.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from counterfactual_lab.devices import dtype_for, resolve_device
from counterfactual_lab.errors import UnsafeModelError, UserError
from counterfactual_lab.model_safety import is_local_model, safe_load_kwargs
from counterfactual_lab.runtime_record import record_model_load

# Which diffusers pipeline class each generation method uses.
PIPELINE_CLASSES = {
    "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "ledits": "LEditsPPPipelineStableDiffusion",
    "text2image-sets": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}

_cache: dict[tuple[str, str, str | None, str, str], Any] = {}
_cache_lock = threading.Lock()
_load_locks: dict[tuple[str, str, str | None, str, str], threading.Lock] = {}
_call_locks: dict[int, threading.Lock] = {}
# The first `import diffusers` replaces the module in sys.modules with a lazy one; a second
# thread importing it meanwhile gets the replaced, empty module object (AttributeError for every
# pipeline class). One thread at a time imports it and resolves the class.
_class_lock = threading.Lock()


def _pipeline_class(method: str):
    if method not in PIPELINE_CLASSES:
        raise UserError(f"unknown generation method {method!r}; expected one of {sorted(PIPELINE_CLASSES)}")
    with _class_lock:
        from counterfactual_lab.image_processors import prefer_pil_image_processors

        prefer_pil_image_processors()  # before diffusers imports them: no torchvision warning
        import diffusers

        return getattr(diffusers, PIPELINE_CLASSES[method])


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    # diffusers renamed torch_dtype to dtype (0.36+); pass whichever this version expects.
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _load(method: str, model: str, revision: str | None, device: torch.device, dtype: torch.dtype):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # The pipeline shows one progress bar of its own (per batch); per-component loading bars
    # from each worker would bury it.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    cls = _pipeline_class(method)
    kwargs = safe_load_kwargs(model, revision)
    kwargs.update(_dtype_kwarg(dtype))
    # The audit never generates unsafe prompts of its own and the checker would blank
    # images at random on tiny models; the judge decides what is kept.
    kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipeline = cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        from counterfactual_lab.model_safety import remote_code_refusal

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

    Loaded once per process for each ``(method, model, revision, dtype, device)`` and shared
    afterwards; concurrent callers asking for the same key wait for one load.
    """
    torch_device = resolve_device(device)
    dtype = dtype_for(torch_device)
    _pipeline_class(method)  # fail on an unknown method before touching any file
    key = (method, str(model), revision, str(dtype), str(torch_device))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        lock = _load_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        pipeline = _load(method, str(model), revision, torch_device, dtype)
        with _cache_lock:
            _cache[key] = pipeline
        return pipeline


def pipeline_lock(pipeline: Any) -> threading.Lock:
    """The lock to hold while calling ``pipeline``.

    Pipelines keep per-call state (scheduler timesteps, LEDITS++ inversions), so two threads
    of one worker must not run the same pipeline object at once.
    """
    with _cache_lock:
        return _call_locks.setdefault(id(pipeline), threading.Lock())


def cached_pipelines() -> list[tuple[str, str, str | None, str, str]]:
    """The keys of the pipelines this process holds (for logs and tests)."""
    with _cache_lock:
        return list(_cache)


def clear_pipeline_cache() -> None:
    """Drop every cached pipeline (frees memory; the next load reads from disk again)."""
    with _cache_lock:
        _cache.clear()
        _load_locks.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
