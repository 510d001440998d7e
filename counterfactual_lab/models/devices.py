"""Which torch device and dtype a model runs on; one rule for the diffusion pipelines and CLIP."""

from __future__ import annotations

from importlib import metadata

import torch

from counterfactual_lab.config.methods import method_facts
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


# Distributions whose versions change a diffusion editor's pixels: the kernels (torch), the
# pipelines and schedulers (diffusers), the text encoders (transformers).
PIXEL_DISTRIBUTIONS = ("torch", "diffusers", "transformers")


def generation_precision(method: str, device_preference: str = "auto") -> dict[str, object]:
    """What besides the config changes a generation method's pixels on this machine: the device
    type and dtype the loaders will use (fp16 on CUDA, fp32 elsewhere: :func:`dtype_for`) and the
    versions of :data:`PIXEL_DISTRIBUTIONS`. Empty for a method that loads no weights (the
    planted-bias world's editor computes in numpy, the same everywhere).

    Part of the generator fingerprint in every content key (``plan.plan_work_items``), so images
    made in fp16 on a GPU are not reused by a CPU run in fp32, or after an upgrade of diffusers.
    """

    if not method_facts(method).has_weights:
        return {}
    device = resolve_device(device_preference)
    versions = {}
    for dist in PIXEL_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"device": device.type, "dtype": str(dtype_for(device)).removeprefix("torch."), "versions": versions}
