"""Which torch device and dtype a model runs on; one rule for the diffusion pipelines and CLIP."""

from __future__ import annotations

import torch

from counterfactual_lab.errors import UserError


def resolve_device(preference: str = "auto") -> torch.device:
    """The torch device for ``preference`` ("auto", "cpu", "cuda", "cuda:N" or "mps").

    "auto" picks CUDA, then Apple MPS, then CPU. Asking for an accelerator that this machine
    lacks is an error, not a silent fallback.
    """
    preference = (preference or "auto").strip().lower()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise UserError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {preference!r} asked for, but CUDA is not available here; use device: auto or cpu")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise UserError(f"device {preference!r} asked for, but Apple MPS is not available here; use device: auto or cpu")
    return device


def dtype_for(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores), fp32 on CPU and MPS."""
    device = torch.device(device)
    return torch.float16 if device.type == "cuda" else torch.float32
