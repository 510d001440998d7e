"""What kind of model is under audit, from ``audit.kind`` or, when absent, from the model's config.

Reading ``config.json`` loads no weights and runs no code (``trust_remote_code=False``):

* a model whose architecture is not a generative one and whose type is in transformers' zero-shot
  image classification mapping (CLIP, SigLIP, SigLIP 2, ALIGN, BLIP's ``BlipModel``, …): ``contrastive``;
* a captioning model type (:data:`CAPTIONER_TYPES`: BLIP, GIT, Pix2Struct, Kosmos-2, and any
  ``vision-encoder-decoder``): ``captioner``;
* any other model type ``AutoModelForImageTextToText`` loads (LLaVA, LLaVA-NeXT, Qwen-VL,
  SmolVLM/Idefics3, PaliGemma, InstructBLIP, Gemma 3, …): ``vlm``.

Anything else is an error that names the model type and asks for ``audit.kind``.
"""

from __future__ import annotations

from counterfactual_lab.errors import ConfigError
from counterfactual_lab.models.safety import safe_load_kwargs

CONTRASTIVE = "contrastive"
VLM = "vlm"
CAPTIONER = "captioner"
KINDS = (CONTRASTIVE, VLM, CAPTIONER)
GENERATIVE_KINDS = (VLM, CAPTIONER)

# Negative-control outcomes (audit.negative_controls) when the config lists none: properties of the
# scene and the photo that must not depend on a protected attribute. Darkness is worded as scene
# lighting on purpose: "a dark photo" would move with a skin-tone edit itself.
DEFAULT_NEGATIVE_CONTROLS = {
    "contrastive": ("an outdoor photo | an indoor photo", "a photo taken at night | a photo taken during the day",
                    "a blurry photo | a sharp photo"),
    "vlm": ("Is this photo taken outdoors?", "Was this photo taken at night?", "Is this photo blurry?"),
    "captioner": (),  # it answers no questions
}

# Image-to-text models that continue a caption rather than answer a conversation.
CAPTIONER_TYPES = frozenset({"blip", "git", "pix2struct", "kosmos-2", "vision-encoder-decoder"})


def resolve_kind(audit) -> str:
    """``audit.kind``, or the kind of ``audit.model`` read from its config (module doc).

    A config that lists no generative probe and names a model whose config cannot be read here (a
    hub id not in the local cache, offline) is the contrastive audit it always was; one that lists
    generative probes needs its model's kind, and gets the error saying to set ``audit.kind``.
    """
    if audit.kind is not None:
        return audit.kind
    try:
        return infer_kind(audit.model, audit.revision)
    except ConfigError:
        if audit.generative_keys_set():
            raise
        return CONTRASTIVE


def resolved_negative_controls(audit, kind: str) -> list[str]:
    """The negative controls a run of ``kind`` measures: ``audit.negative_controls`` as written, or
    the kind's defaults when it is None (``[]`` turns them off). A vlm's questions that are already
    among ``audit.yes_no`` are left out (they are probes of the bias, asked once)."""
    given = getattr(audit, "negative_controls", None)
    entries = list(DEFAULT_NEGATIVE_CONTROLS[kind] if given is None else given)
    if kind == VLM:
        entries = [entry for entry in entries if entry not in set(getattr(audit, "yes_no", []))]
    return entries


def infer_kind(model: str, revision: str | None = None) -> str:
    """The kind of ``model`` (hub id or local folder) from its ``config.json``; ConfigError when unknown."""
    model_type, architectures = _model_type(model, revision)
    # here, not at the top: transformers loads only when this is called
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    generative_classes = {
        name for value in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()
        for name in (value if isinstance(value, list | tuple) else [value])
    }
    # The architecture first: BLIP's model type names both a contrastive model (BlipModel) and a
    # captioner (BlipForConditionalGeneration).
    generative = any(a in generative_classes for a in architectures)
    if not generative and model_type in MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return CONTRASTIVE
    if generative or model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or model_type in CAPTIONER_TYPES:
        return CAPTIONER if model_type in CAPTIONER_TYPES else VLM
    raise ConfigError(
        f"audit.model {model} is a {model_type!r} model, which is neither a contrastive image-text model "
        "(CLIP, SigLIP) nor one AutoModelForImageTextToText loads; set audit.kind if it is one of "
        f"{', '.join(KINDS)}"
    )


def _model_type(model: str, revision: str | None) -> tuple[str, list[str]]:
    # here, not at the top: it imports transformers
    from transformers import AutoConfig


    kwargs = {k: v for k, v in safe_load_kwargs(model, revision).items() if k in ("revision", "trust_remote_code")}
    try:
        config = AutoConfig.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"audit.model {model}: cannot read its config to tell what kind of model it is ({str(exc).splitlines()[0]}); "
            "set audit.kind (contrastive, vlm or captioner) or give a local folder written by save_pretrained"
        ) from None
    return str(getattr(config, "model_type", "") or ""), list(getattr(config, "architectures", None) or [])
