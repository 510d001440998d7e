"""Tiny, seeded, random-weight models built offline, for tests, the demo and benchmarks.

No machine here reaches a model hub, so the project builds its own stand-ins and saves them
with ``save_pretrained`` (safetensors). They load back through exactly the same
``from_pretrained`` code path as real models, so the loading code stays real. ``cflab models
tiny DIR`` builds every one, a folder each:

* one diffusion pipeline per generation method with weights, named by the method's
  ``tiny_model`` (:mod:`counterfactual_lab.demo.tiny_diffusion`);
* ``clip`` (the judge and a contrastive model under audit) and ``clipseg`` (inpainting masks)
  (:mod:`counterfactual_lab.demo.tiny_clip`);
* ``vlm``, ``toxicity``, ``sentiment`` and ``text-embedder``, the generative audit's
  (:mod:`counterfactual_lab.demo.tiny_auditees`).

The demo builds four: the editors of whole images (``instruct-pix2pix``, ``img2img``,
``ledits``) and ``clip``. Every folder holds :data:`~counterfactual_lab.models.identity.TINY_MARKER`,
so runs and reports say their numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.demo.tiny_auditees import (
    AUDITEE_MODEL_NAMES,
    build_tiny_auditee_models,
)
from counterfactual_lab.demo.tiny_clip import build_tiny_clip, build_tiny_clipseg
from counterfactual_lab.demo.tiny_diffusion import build_tiny_diffusion
from counterfactual_lab.models.identity import TINY_MARKER
from counterfactual_lab.models.image_processors import prefer_pil_image_processors

# Folder name -> method, for every method with weights.
DIFFUSION_MODELS = {facts.tiny_model: name for name, facts in METHODS.items() if facts.tiny_model}
# The demo's four: the diffusion models of the methods that edit a whole source image, and CLIP.
TINY_MODEL_NAMES = tuple(
    folder for folder, method in DIFFUSION_MODELS.items() if METHODS[method].reads_source and not METHODS[method].reads_mask
) + ("clip",)
# Built by `cflab models tiny` beyond the demo's four: the other methods' models and CLIPSeg.
GENERATOR_MODEL_NAMES = tuple(folder for folder in DIFFUSION_MODELS if folder not in TINY_MODEL_NAMES) + ("clipseg",)
ALL_TINY_MODEL_NAMES = TINY_MODEL_NAMES + GENERATOR_MODEL_NAMES + AUDITEE_MODEL_NAMES
# Models that are one transformers model (config.json) rather than a diffusers pipeline (model_index.json).
TRANSFORMERS_BUILDERS = {"clip": build_tiny_clip, "clipseg": build_tiny_clipseg}


def _is_built(directory: Path, name: str) -> bool:
    marker = "config.json" if name in TRANSFORMERS_BUILDERS else "model_index.json"
    return (directory / marker).exists() and any(directory.rglob("*.safetensors"))


def build_tiny_models(root: str | Path, seed: int = 0, names: tuple[str, ...] = TINY_MODEL_NAMES) -> dict[str, Path]:
    """Build the tiny models ``names`` under ``root/<name>`` (skipping folders already built).

    Returns ``{name: folder}``; by default the demo's four (:data:`TINY_MODEL_NAMES`),
    :data:`ALL_TINY_MODEL_NAMES` for every one. Idempotent: a second call with the same root
    builds nothing.
    """
    prefer_pil_image_processors()  # no "requires torchvision" warning without torchvision
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(names) - set(ALL_TINY_MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown tiny model(s) {unknown}; expected some of {list(ALL_TINY_MODEL_NAMES)}")
    built: dict[str, Path] = {}
    for name in names:
        if name in AUDITEE_MODEL_NAMES:
            continue
        directory = root / name
        if not _is_built(directory, name):
            if name in TRANSFORMERS_BUILDERS:
                TRANSFORMERS_BUILDERS[name](directory, seed=seed)
            else:
                build_tiny_diffusion(DIFFUSION_MODELS[name], directory, seed=seed)
            (directory / TINY_MARKER).write_text(
                "Random weights built by `cflab models tiny`: outputs and metrics mean nothing.\n"
            )
        built[name] = directory
    auditees = tuple(name for name in names if name in AUDITEE_MODEL_NAMES)
    if auditees:
        built.update(build_tiny_auditee_models(root, seed=seed, names=auditees))
    return {name: built[name] for name in names}
