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
}

# LEDITS++ needs sides divisible by 32 (its attention masks work at a quarter of the latents).
SIDE_MULTIPLE = {"instruct-pix2pix": 8, "img2img": 8, "ledits": 32}

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
}

# Ranges of the numeric params; anything outside is refused before a run starts.
PARAM_RANGES: dict[str, tuple[float, float, bool]] = {  # name: (low, high, low is inclusive)
    "strength": (0.0, 1.0, False),
    "image_guidance_scale": (0.0, 100.0, True),
    "eta": (0.0, 1.0, True),
    "edit_guidance_scale": (0.0, 100.0, True),
    "edit_threshold": (0.0, 1.0, True),
    "skip": (0.0, 1.0, True),
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
    if method == "img2img":
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
    negative = params.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise UserError(f"generation.params.negative_prompt must be a string, got {negative!r}")
    return params
