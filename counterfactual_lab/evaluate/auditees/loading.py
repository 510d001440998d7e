"""Load a generative model under audit once per worker process: weights, processor, device, dtype.

``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` from a hub
id or a local folder, with the revision pinned, safetensors only and no remote code
(:mod:`counterfactual_lab.models.safety`: a pickle-only folder, Python files or an ``auto_map``
are refused before anything is read). On CUDA the weights load in bfloat16 where the card
supports it (a language model's activations overflow float16 more often than a CLIP's), else
float16; on CPU and MPS in float32. A loaded model is kept per (model, revision, device) for the
life of the process (:mod:`counterfactual_lab.models.load_once`), so every batch a worker runs reuses it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from counterfactual_lab.errors import UserError
from counterfactual_lab.models.devices import resolve_device
from counterfactual_lab.models.image_processors import prefer_pil_image_processors
from counterfactual_lab.models.load_once import forget, load_once, on_device
from counterfactual_lab.models.safety import check_no_custom_code, safe_load_kwargs

GENERATIVE_KIND = "generative-auditee"  # load_once's kind


@dataclass(frozen=True)
class LoadedModel:
    """A loaded generative model, its processor and where it runs."""

    model: Any
    processor: Any
    name: str
    revision: str | None
    device: str
    dtype: torch.dtype
    # One caller at a time: batches of one worker share the model, and a fast tokenizer whose
    # padding is set per call fails ("Already borrowed") when two threads call it at once.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


def generative_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on a CUDA card that supports it, float16 on older cards, float32 elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_generative(model: str, revision: str | None = None, device: str = "auto") -> LoadedModel:
    """The model and processor of ``model``, loaded once per (model, revision, device) per process."""

    resolved = str(resolve_device(device))
    return load_once(GENERATIVE_KIND, model, revision, resolved, lambda: _from_pretrained(model, revision, resolved))


def clear_loaded_models() -> None:
    """Forget every generative model loaded in this process (tests, benchmarks)."""
    forget(GENERATIVE_KIND)


def _from_pretrained(model: str, revision: str | None, device: str) -> LoadedModel:
    # here, not at the top: it imports transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # here, not at the top: it imports transformers
    from transformers.utils import logging as transformers_logging


    prefer_pil_image_processors()
    transformers_logging.disable_progress_bar()
    check_no_custom_code(model)
    kwargs = safe_load_kwargs(model, revision)  # refuses a pickle-only folder
    dtype = generative_dtype(device)
    try:
        network = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, **kwargs)
        processor = AutoProcessor.from_pretrained(
            model, **{k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the generative model under audit {model!r} (revision {revision!r}) with "
            f"AutoModelForImageTextToText: {str(exc).splitlines()[0]}. Give a local folder written by "
            "save_pretrained or a hub id reachable from here"
        ) from None
    on_device(network, model, revision, device)
    return LoadedModel(network, processor, model, revision, device, next(network.parameters()).dtype)
