"""What each generation method reads from ``generation.params``, and the checks a config passes
before any run starts: no torch, no diffusers, no weights, so a typo is an error in a second.

:func:`check_method_params` is the torch-free half of
:func:`counterfactual_lab.generation.editors.validate_generation` (which adds the check against
the installed diffusers pipeline's ``__call__`` signature).
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

from counterfactual_lab.errors import UserError

if TYPE_CHECKING:
    from counterfactual_lab.config import GenerationConfig

# Parameters each method reads from ``generation.params``, with their defaults.
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "instruct-pix2pix": {"image_guidance_scale": 1.5, "negative_prompt": None},
    "img2img": {"strength": 0.6, "negative_prompt": None, "eta": 0.0},
    "ledits": {
        "edit_guidance_scale": None,  # None: generation.guidance_scale
        "edit_threshold": 0.9,
        "edit_warmup_steps": 0,
        "skip": 0.15,
        "concepts": None,  # {value: word}, overrides CONCEPT_WORDS
    },
    # Text-to-image counterfactual sets (counterfactual_lab/text2image_sets.py).
    "text2image-sets": {
        "templates": None,  # ["a photo of a {race} {gender} doctor", ...]; None: the dataset's captions
        "attention_sharing": 0.0,  # fraction of steps members take the reference's cross-attention maps
        "self_attention_sharing": 0.0,  # fraction of steps they take its self-attention maps
        "negative_prompt": None,
        "eta": 0.0,
    },
    # Mask-guided inpainting (counterfactual_lab/generation/inpaint.py, counterfactual_lab/masks.py).
    "inpaint": {"mask": None, "strength": 1.0, "negative_prompt": None, "eta": 0.0},
}

# LEDITS++ needs sides divisible by 32 (its attention masks work at a quarter of the latents).
SIDE_MULTIPLE = {"instruct-pix2pix": 8, "img2img": 8, "ledits": 32, "text2image-sets": 8, "inpaint": 8}

# Methods that make images from text alone: generation reads no source image.
SOURCELESS_METHODS = frozenset({"text2image-sets"})
# Methods that edit inside a mask: each work item carries the URI of its source's mask.
MASKED_METHODS = frozenset({"inpaint"})
# Params the editors read themselves; they are no argument of the diffusers pipeline call.
EDITOR_ONLY_PARAMS = frozenset({"concepts", "templates", "attention_sharing", "self_attention_sharing", "mask"})

# Bounds of the text2image-sets templates and of an inpainting mask's segmentation settings.
MAX_TEMPLATES = 1000
MAX_TEMPLATE_CHARS = 1000
MAX_MASK_DILATION = 256
MASK_SEGMENT_DEFAULTS: dict[str, Any] = {"threshold": 0.4, "dilation": 0}

# The planted-bias world's editor (counterfactual_lab/validity): it exists to validate the
# audit and loads no weights, so its `generation.model` names nothing to load or hash.
from counterfactual_lab.validity import editor as _validation  # noqa: E402  (numpy and PIL only)

METHOD_PARAMS[_validation.METHOD] = dict(_validation.PARAMS)
SIDE_MULTIPLE[_validation.METHOD] = _validation.SIDE_MULTIPLE
METHODS_WITHOUT_WEIGHTS = frozenset({_validation.METHOD})

# Pipeline ``__call__`` arguments the editors set from other config keys (or per item): a
# ``generation.params`` entry may not set them, and the error says where they come from.
SET_ELSEWHERE: dict[str, str] = {
    "num_inference_steps": "generation.steps",
    "num_inversion_steps": "generation.steps",
    "guidance_scale": "generation.guidance_scale",
    "height": "generation.resolution",
    "width": "generation.resolution",
    "generator": "generation.seed",
    "latents": "generation.seed",
    "prompt": "the work item (its counterfactual caption or instruction)",
    "editing_prompt": "the attribute values (params.concepts)",
    "image": "the source image",
    "output_type": "the editor (PIL images)",
    "num_images_per_prompt": "generation.seeds_per_target",
    "mask_image": "generation.params.mask",
    "masked_image_latents": "generation.params.mask",
}

# Ranges of the numeric params; anything outside is refused before a run starts.
PARAM_RANGES: dict[str, tuple[float, float, bool]] = {  # name: (low, high, low is inclusive)
    "strength": (0.0, 1.0, False),
    "image_guidance_scale": (0.0, 100.0, True),
    "eta": (0.0, 1.0, True),
    "edit_guidance_scale": (0.0, 100.0, True),
    "edit_threshold": (0.0, 1.0, True),
    "skip": (0.0, 1.0, True),
    "attention_sharing": (0.0, 1.0, True),
    "self_attention_sharing": (0.0, 1.0, True),
    # The validation editor's artifact, in grey levels of an 8-bit channel.
    "cast_std": (0.0, 255.0, True),
    "noise_std": (0.0, 255.0, True),
}

# Params that are switches: true or false, nothing else.
BOOLEAN_PARAMS = frozenset({"blur"})


def check_method_params(generation: GenerationConfig) -> dict[str, Any]:
    """Check ``generation.params`` (and the sizes that depend on the method); return the params
    with defaults filled.

    Every key must be one the method reads (a typo gets the nearest name; a pipeline argument
    that another config key sets says which), numeric values lie in :data:`PARAM_RANGES`, the
    resolution is a multiple of the method's side multiple, and the config can make an image
    at all: img2img runs ``int(steps × strength)`` denoising steps, and zero makes none.
    Raises :class:`UserError` naming the key.
    """
    method = generation.method
    if method not in METHOD_PARAMS:
        raise UserError(f"generation.method {method!r} is not one of {sorted(METHOD_PARAMS)}")
    allowed = METHOD_PARAMS[method]
    for name in sorted(set(generation.params) - set(allowed)):
        if name in SET_ELSEWHERE:
            raise UserError(f"generation.params.{name} is not a method parameter: it is set by {SET_ELSEWHERE[name]}")
        near = difflib.get_close_matches(name, list(allowed), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(
            f"generation.params.{name} is not understood by method {method!r}{hint}; it accepts {sorted(allowed)}"
        )
    params = {**allowed, **generation.params}
    for name in sorted(BOOLEAN_PARAMS & set(generation.params)):
        if not isinstance(params[name], bool):
            raise UserError(f"generation.params.{name} must be true or false, got {params[name]!r}")
    for name, (low, high, low_inclusive) in PARAM_RANGES.items():
        if name not in generation.params or params[name] is None:
            continue
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"generation.params.{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value > high or value < low or (value == low and not low_inclusive):
            interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
            raise UserError(f"generation.params.{name} must be in {interval}, got {value}")
    multiple = SIDE_MULTIPLE.get(method, 8)
    if generation.resolution is not None and generation.resolution % multiple:
        raise UserError(
            f"generation.resolution {generation.resolution} must be a multiple of {multiple} for method {method!r}"
        )
    if method in ("img2img", "inpaint"):
        strength = float(params["strength"])
        if int(generation.steps * strength) < 1:
            raise UserError(
                f"generation.steps {generation.steps} with params.strength {params['strength']} runs "
                f"int(steps × strength) = 0 denoising steps and makes no image; "
                f"use steps ≥ {math.ceil(1 / strength)} or a larger strength"
            )
    if method == "ledits":
        if not 0 <= float(params["skip"]) < 1:
            raise UserError(f"generation.params.skip must be in [0, 1), got {params['skip']}")
        concepts = params["concepts"]
        if concepts is not None and not (
            isinstance(concepts, dict) and all(isinstance(v, str) and v.strip() for v in concepts.values())
        ):
            raise UserError("generation.params.concepts must map attribute values to words, e.g. {female: woman}")
        warmup = params["edit_warmup_steps"]
        if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < generation.steps:
            raise UserError(
                f"generation.params.edit_warmup_steps must be a whole number in [0, steps={generation.steps}), got {warmup!r}"
            )
    if method == "text2image-sets" and params["templates"] is not None:
        params["templates"] = check_templates(params["templates"])
    if method == "inpaint":
        params["mask"] = check_mask_spec(params["mask"])
    negative = params.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise UserError(f"generation.params.negative_prompt must be a string, got {negative!r}")
    return params


def template_fields(template: str) -> list[str]:
    """The ``{placeholder}`` names of a caption template, in order (each once); ValueError when
    it does not format (an unbalanced brace, a format spec, a positional ``{}``)."""
    import string

    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                             "must be a plain attribute name such as {gender}")
        if name not in names:
            names.append(name)
    return names


def check_templates(templates: Any) -> list[str]:
    """``params.templates`` of ``text2image-sets``: 1 to :data:`MAX_TEMPLATES` distinct strings, each
    with at least one ``{attribute}`` placeholder. Whether the attributes are configured is
    checked against the config (``text2image_sets.check_text2image``)."""
    if not isinstance(templates, list) or not templates:
        raise UserError("generation.params.templates must be a non-empty list of caption templates, "
                        'e.g. ["a photo of a {race} {gender} doctor"]')
    if len(templates) > MAX_TEMPLATES:
        raise UserError(f"generation.params.templates has {len(templates)} templates, more than {MAX_TEMPLATES}")
    seen: set[str] = set()
    for index, template in enumerate(templates):
        where = f"generation.params.templates[{index}]"
        if not isinstance(template, str) or not template.strip():
            raise UserError(f"{where} must be a non-blank string, got {template!r}")
        if len(template) > MAX_TEMPLATE_CHARS:
            raise UserError(f"{where} is longer than {MAX_TEMPLATE_CHARS} characters")
        try:
            fields = template_fields(template)
        except ValueError as exc:
            raise UserError(f"{where} {template!r}: {exc}") from None
        if not fields:
            raise UserError(f"{where} {template!r} has no {{attribute}} placeholder, so its set would have one member")
        if template in seen:
            raise UserError(f"{where} {template!r} is listed twice")
        seen.add(template)
    return list(templates)


def check_mask_spec(mask: Any) -> dict[str, Any]:
    """``params.mask`` of ``inpaint``, with defaults filled: ``{column: NAME}`` (a dataset column of
    mask images or polygons) or ``{segment: PROMPT, model: DIR, threshold: 0.4, dilation: 0}``
    (CLIPSeg). Raises :class:`UserError` naming the key."""
    example = 'give {column: NAME} (a mask column of the dataset) or {segment: "person", model: DIR} (CLIPSeg)'
    if mask is None:
        raise UserError(f"generation.params.mask is required for method 'inpaint': {example}")
    if not isinstance(mask, dict):
        raise UserError(f"generation.params.mask must be a mapping: {example}; got {mask!r}")
    if ("column" in mask) == ("segment" in mask):
        raise UserError(f"generation.params.mask needs exactly one of 'column' and 'segment': {example}")
    if "column" in mask:
        unknown = sorted(set(mask) - {"column"})
        if unknown:
            raise UserError(f"generation.params.mask.{unknown[0]} is not read with a mask column (only 'column')")
        column = mask["column"]
        if not isinstance(column, str) or not column.strip():
            raise UserError(f"generation.params.mask.column must name a dataset column, got {column!r}")
        return {"column": column}
    allowed = {"segment", "model", "threshold", "dilation"}
    unknown = sorted(set(mask) - allowed)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"generation.params.mask.{unknown[0]} is not understood{hint}; it accepts {sorted(allowed)}")
    spec = {**MASK_SEGMENT_DEFAULTS, **mask}
    segment = spec["segment"]
    if not isinstance(segment, str) or not segment.strip() or len(segment) > MAX_TEMPLATE_CHARS:
        raise UserError(f"generation.params.mask.segment must be a text prompt such as \"person\" or \"face\", got {segment!r}")
    model = spec.get("model")
    if not isinstance(model, str) or not model.strip():
        raise UserError("generation.params.mask.model must name the CLIPSeg model (a local folder or hub id), "
                        "e.g. ./.cflab/models/clipseg")
    threshold = spec["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        raise UserError(f"generation.params.mask.threshold must be a probability in [0, 1), got {threshold!r}")
    dilation = spec["dilation"]
    if isinstance(dilation, bool) or not isinstance(dilation, int) or not 0 <= dilation <= MAX_MASK_DILATION:
        raise UserError(f"generation.params.mask.dilation must be whole pixels in [0, {MAX_MASK_DILATION}], got {dilation!r}")
    return {"segment": segment, "model": model, "threshold": float(threshold), "dilation": dilation}
