"""The generation methods: one row of facts per method, and the checks of ``generation.params``.

Everything that needs to know something about a method reads its row in :data:`METHODS`: the
config check (its parameters with defaults and bounds, the side multiple, whether it can make
an image at all), the preflight, the planner (what a reconstruction's editor reads), the
diffusion loader (the pipeline class), the batch runner (whether it reads a source image or a
mask), the run (whether it has weights to hash), the tiny models and the benchmarks. Adding a
method is its editor module plus one row here.

Nothing here imports torch, diffusers or pydantic, so a typo in a config is an error in a
second and a GPU box without pydantic can still read the table.
"""

from __future__ import annotations

import difflib
import math
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from counterfactual_lab.errors import UserError


class GenerationSettings(Protocol):
    """What the checks read of a ``generation:`` section (:class:`~counterfactual_lab.config.audit_config.GenerationSection`)."""

    method: str
    params: dict[str, Any]
    steps: int
    resolution: int | None


@dataclass(frozen=True)
class Param:
    """One ``generation.params`` entry: its default, and the values it may take.

    ``low``/``high`` bound a number (``low_open``/``high_open``: the bound itself is refused);
    ``switch``: true or false only; ``pipeline_argument`` False: the editor reads it itself, so it
    is not checked against the diffusers pipeline's call signature.
    """

    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    switch: bool = False
    pipeline_argument: bool = True

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`UserError` naming ``generation.params.<name>`` when ``value`` is out of bounds."""
        if self.switch and not isinstance(value, bool):
            raise UserError(f"generation.params.{name} must be true or false, got {value!r}")
        if self.low is None or value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"generation.params.{name} must be a number, got {value!r}")
        high = math.inf if self.high is None else self.high
        if (not math.isfinite(value) or value < self.low or value > high
                or (value == self.low and self.low_open) or (value == high and self.high_open)):
            interval = f"{'(' if self.low_open else '['}{self.low:g}, {high:g}{')' if self.high_open else ']'}"
            raise UserError(f"generation.params.{name} must be in {interval}, got {value}")


# What the editor of a reconstruction reads (so the reconstructions of several attributes of
# one row and seed can share an image): the caption, the instruction, or the value's concept
# word; "item": everything the item carries (nothing shared that might differ).
ReconstructionReads = Literal["caption", "instruction", "concept", "item"]


@dataclass(frozen=True)
class Method:
    """The facts of one generation method.

    ``editor``: ``"module:Class"`` of its editor (imported when first used, so torch and
    diffusers stay out of the CLI's start-up); ``pipeline_class``: the diffusers pipeline it
    loads (None: it loads no weights, and ``generation.model`` names nothing to hash);
    ``params``: what it reads from ``generation.params``; ``side_multiple``: the multiple of
    its image sides; ``reads_source``: False for images made from text alone; ``reads_mask``:
    each item carries its source's mask; ``partial_noise``: it noises the source part way
    (``int(steps × strength)`` denoising steps must be at least 1); ``inverts``: LEDITS++ style,
    one inversion per source seeded by ``generation.seed`` (so the seed changes every pixel,
    and ``invert()``'s arguments are parameters too); ``tiny_model``: the folder ``cflab models
    tiny`` builds for it; ``unet_in_channels``: what its checkpoints' UNet takes (4 latents;
    8 with the image's latents; 9 with a mask and the masked image's latents);
    ``check``: the method's own checks of its params (after the table's); ``edit_region``:
    ``"module:function"`` giving, for an image's (width, height), the (H, W) boolean region the
    method edits (the judge reads drift outside it, :mod:`counterfactual_lab.judge.drift`; None: the
    method declares none); ``joint_edits``: its prompt can carry a change of several attributes at once
    (a caption rewritten twice, one instruction, a template's combinations), so an intersection
    (``attributes.intersections``) gets joint edits such as ``White female→Black male``
    (:mod:`counterfactual_lab.config.intersections`); without it an intersection is stratified only.
    """

    name: str
    editor: str
    pipeline_class: str | None
    params: Mapping[str, Param]
    reconstruction_reads: ReconstructionReads = "item"
    side_multiple: int = 8
    reads_source: bool = True
    reads_mask: bool = False
    partial_noise: bool = False
    inverts: bool = False
    tiny_model: str | None = None
    unet_in_channels: int = 4
    check: Callable[[dict[str, Any], GenerationSettings], None] | None = field(default=None, repr=False)
    edit_region: str | None = None
    joint_edits: bool = False

    @property
    def has_weights(self) -> bool:
        return self.pipeline_class is not None

    def require_editor(self, cls: type) -> None:
        """ValueError unless ``cls`` is the editor this row names."""
        module, _, name = self.editor.partition(":")
        if (cls.__module__, cls.__name__) != (module, name):
            raise ValueError(f"{cls.__name__} is not the editor of method {self.name!r} ({name} is)")

    def edit_region_mask(self, width: int, height: int) -> Any:
        """The (H, W) boolean region this method edits in an image of this size, or None (``edit_region``)."""
        if self.edit_region is None:
            return None
        # the function's module is named by the row, not imported by this table
        import importlib

        module, _, name = self.edit_region.partition(":")
        return getattr(importlib.import_module(module), name)(width, height)

    def editor_class(self) -> type:
        """The editor class (imported now: it brings torch and diffusers)."""
        # the editor's module is named by the row, not imported by this table
        import importlib

        module, _, name = self.editor.partition(":")
        return getattr(importlib.import_module(module), name)


# Bounds of the text2image-sets templates and of an inpainting mask's segmentation settings.
MAX_TEMPLATES = 1000
MAX_TEMPLATE_CHARS = 1000
MAX_MASK_DILATION = 256
MASK_SEGMENT_DEFAULTS: dict[str, Any] = {"threshold": 0.4, "dilation": 0}


def _check_ledits(params: dict[str, Any], generation: GenerationSettings) -> None:
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


def _check_sets(params: dict[str, Any], generation: GenerationSettings) -> None:
    if params["templates"] is not None:
        params["templates"] = check_templates(params["templates"])


def _check_inpaint(params: dict[str, Any], generation: GenerationSettings) -> None:
    params["mask"] = check_mask_spec(params["mask"])


_NEGATIVE_PROMPT = Param(None)
_ETA = Param(0.0, low=0.0, high=1.0)

METHODS: dict[str, Method] = {method.name: method for method in (
    Method(
        "instruct-pix2pix", editor="counterfactual_lab.generation.instruct_pix2pix:InstructPix2PixEditor",
        pipeline_class="StableDiffusionInstructPix2PixPipeline",
        params={"image_guidance_scale": Param(1.5, low=0.0, high=100.0), "negative_prompt": _NEGATIVE_PROMPT},
        reconstruction_reads="instruction", tiny_model="instruct-pix2pix", unet_in_channels=8, joint_edits=True,
    ),
    Method(
        "img2img", editor="counterfactual_lab.generation.img2img:Img2ImgEditor",
        pipeline_class="StableDiffusionImg2ImgPipeline",
        params={"strength": Param(0.6, low=0.0, high=1.0, low_open=True), "negative_prompt": _NEGATIVE_PROMPT, "eta": _ETA},
        reconstruction_reads="caption", partial_noise=True, tiny_model="img2img", joint_edits=True,
    ),
    Method(
        "ledits", editor="counterfactual_lab.generation.ledits:LeditsEditor",
        pipeline_class="LEditsPPPipelineStableDiffusion",
        params={
            "edit_guidance_scale": Param(None, low=0.0, high=100.0),  # None: generation.guidance_scale
            "edit_threshold": Param(0.9, low=0.0, high=1.0),
            "edit_warmup_steps": Param(0),
            "skip": Param(0.15, low=0.0, high=1.0, high_open=True),
            "concepts": Param(None, pipeline_argument=False),  # {value: word}, over ledits.CONCEPT_WORDS
        },
        # LEDITS++ needs sides divisible by 32 (its attention masks work at a quarter of the latents).
        reconstruction_reads="concept", side_multiple=32, inverts=True, tiny_model="ledits", check=_check_ledits,
    ),
    Method(
        "text2image-sets", editor="counterfactual_lab.generation.text2image:TextToImageSetsEditor",
        pipeline_class="StableDiffusionPipeline",
        params={
            "templates": Param(None, pipeline_argument=False),  # ["a photo of a {race} {gender} doctor", ...]; None: the captions
            "attention_sharing": Param(0.0, low=0.0, high=1.0, pipeline_argument=False),  # share of steps taking the reference's cross-attention
            "self_attention_sharing": Param(0.0, low=0.0, high=1.0, pipeline_argument=False),  # ... and its self-attention
            "negative_prompt": _NEGATIVE_PROMPT,
            "eta": _ETA,
        },
        reads_source=False, tiny_model="text2image", check=_check_sets, joint_edits=True,
    ),
    Method(
        "inpaint", editor="counterfactual_lab.generation.inpaint:InpaintEditor",
        pipeline_class="StableDiffusionInpaintPipeline",
        params={"mask": Param(None, pipeline_argument=False), "strength": Param(1.0, low=0.0, high=1.0, low_open=True),
                "negative_prompt": _NEGATIVE_PROMPT, "eta": _ETA},
        reconstruction_reads="caption", reads_mask=True, partial_noise=True, tiny_model="inpaint",
        unet_in_channels=9, check=_check_inpaint,
    ),
    # The planted-bias world's editor (counterfactual_lab/validity): an exact edit of the world's
    # feature stripe plus a generator's artifact, in grey levels of an 8-bit channel. It exists to
    # validate the audit and loads no weights.
    Method(
        "planted-world", editor="counterfactual_lab.generation.planted:PlantedWorldEditor", pipeline_class=None,
        params={"blur": Param(True, switch=True), "cast_std": Param(2.0, low=0.0, high=255.0),
                "noise_std": Param(2.0, low=0.0, high=255.0),
                # The bench's arms (bench/validity.py): an artifact drawn per target value, so a
                # reconstruction and its counterfactuals differ beyond the stripe; and a colour
                # shift (grey levels) on every image whose target is male, a generator confound.
                "artifact_per_target": Param(False, switch=True),
                "confound_red": Param(0.0, low=-64.0, high=64.0), "confound_green": Param(0.0, low=-64.0, high=64.0),
                "confound_blue": Param(0.0, low=-64.0, high=64.0)},
        edit_region="counterfactual_lab.generation.planted:edit_region",
    ),
)}

DEFAULT_METHOD = "img2img"

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


def method_facts(name: str) -> Method:
    """The row of ``name``; :class:`UserError` naming the methods there are."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"generation.method {name!r} is not one of {sorted(METHODS)}") from None


def made_from_text(methods: Iterable[str]) -> bool:
    """True when ``methods`` (names from a candidate table) are known and none reads a source
    image: the images were made from text alone (``text2image-sets``)."""
    names = set(methods)
    return bool(names) and all(name in METHODS and not METHODS[name].reads_source for name in names)


def check_method_params(generation: GenerationSettings) -> dict[str, Any]:
    """Check ``generation.params`` (and the sizes that depend on the method); return the params
    with defaults filled.

    Every key must be one the method reads (a typo gets the nearest name; a pipeline argument
    that another config key sets says which), each value within its :class:`Param` bounds, the
    resolution a multiple of the method's side multiple, and the config able to make an image
    at all: a partial-noise method runs ``int(steps × strength)`` denoising steps, and zero
    makes none. Raises :class:`UserError` naming the key.
    """
    method = method_facts(generation.method)
    for name in sorted(set(generation.params) - set(method.params)):
        if name in SET_ELSEWHERE:
            raise UserError(f"generation.params.{name} is not a method parameter: it is set by {SET_ELSEWHERE[name]}")
        near = difflib.get_close_matches(name, list(method.params), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(
            f"generation.params.{name} is not understood by method {method.name!r}{hint}; it accepts {sorted(method.params)}"
        )
    params = {**{name: param.default for name, param in method.params.items()}, **generation.params}
    for name in sorted(generation.params):
        method.params[name].check(name, params[name])
    if generation.resolution is not None and generation.resolution % method.side_multiple:
        raise UserError(
            f"generation.resolution {generation.resolution} must be a multiple of {method.side_multiple} for method {method.name!r}"
        )
    if method.partial_noise:
        strength = float(params["strength"])
        if int(generation.steps * strength) < 1:
            raise UserError(
                f"generation.steps {generation.steps} with params.strength {params['strength']} runs "
                f"int(steps × strength) = 0 denoising steps and makes no image; "
                f"use steps ≥ {math.ceil(1 / strength)} or a larger strength"
            )
    if method.check is not None:
        method.check(params, generation)
    negative = params.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise UserError(f"generation.params.negative_prompt must be a string, got {negative!r}")
    return params


def template_fields(template: str) -> list[str]:
    """The ``{placeholder}`` names of a caption template, in order (each once); ValueError when
    it does not format (an unbalanced brace, a format spec, a positional ``{}``)."""
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
