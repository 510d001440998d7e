"""Diffusion editing methods behind one interface: work items + source images in, images out.

(``inpaint`` and ``text2image-sets`` live in ``generation/inpaint.py`` and ``generation/text2image.py``.)

* ``instruct-pix2pix``: ``StableDiffusionInstructPix2PixPipeline`` with the item's instruction
  ("make the man a woman") as prompt and ``image_guidance_scale`` (params, default 1.5).
* ``img2img``: SDEdit with ``StableDiffusionImg2ImgPipeline``, the counterfactual caption as
  prompt and ``strength`` (params, default 0.6).
* ``ledits``: ``LEditsPPPipelineStableDiffusion``. Each source image is inverted once per
  editor and the inversion is reused for all of its targets and seeds; the edit then pushes
  away from the source concept (reversed) and towards the target concept.

Determinism: every item gets its own ``torch.Generator`` seeded with ``item.seed`` (on the
CPU, so the noise does not depend on the device), so an item's image depends only on its
inputs, seed, model and device: bit-identical for the same batch, and across batch
compositions equal up to float rounding (batched kernels sum in another order; at most a
grey level here and there). LEDITS++ edits are
deterministic given the inversion, which is seeded with ``generation.seed`` because it is
shared across seeds: with ``ledits``, candidates that differ only in seed are identical, so
use ``seeds_per_target: 1`` or vary ``params`` instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
import json
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from PIL import Image

from counterfactual_lab.diffusion_loading import load_pipeline, pipeline_lock, resolve_device
from counterfactual_lab.errors import UserError
from counterfactual_lab.method_params import EDITOR_ONLY_PARAMS, METHOD_PARAMS, SIDE_MULTIPLE, check_method_params
from counterfactual_lab.plan import WorkItem

if TYPE_CHECKING:  # only read as attributes, so a GPU box without pydantic can run the benches
    from counterfactual_lab.config import GenerationConfig

# The word LEDITS++ steers towards (or away from) for an attribute value.
CONCEPT_WORDS: dict[str, str] = {
    "female": "woman",
    "male": "man",
    "woman": "woman",
    "man": "man",
    "non-binary": "non-binary person",
    "young": "young person",
    "child": "child",
    "adult": "adult",
    "middle-aged": "middle-aged person",
    "elderly": "elderly person",
    "old": "old person",
}

# Bounded so a long run over many sources does not keep every inversion alive.
MAX_CACHED_INVERSIONS = 256


@runtime_checkable
class ImageEditor(Protocol):
    """Edits a batch: ``edit(items, sources)[i]`` is the counterfactual of ``sources[i]``.

    Optional, read by :func:`counterfactual_lab.generation.batch.generate_batch`: ``reads_masks``
    (``edit(items, sources, masks)``, the inpainting editor), ``batch_group(item)`` (items of one
    group, a text-to-image set, share a call where the batch size allows), and an exception in
    place of an image for an item the editor cannot make (that item alone fails). Methods in
    ``method_params.SOURCELESS_METHODS`` get None for every source.
    """

    method: str

    def edit(self, items: list[WorkItem], sources: list[Image.Image]) -> list[Image.Image]: ...


def concept_word(attribute: str, value: str, overrides: dict[str, str] | None = None) -> str:
    """The short noun phrase LEDITS++ edits with, e.g. ("gender", "female") -> "woman"."""
    if overrides and value in overrides:
        return overrides[value]
    key = value.strip().lower()
    if key in CONCEPT_WORDS:
        return CONCEPT_WORDS[key]
    return f"{value} person"


def output_size(source: Image.Image, resolution: int | None, multiple: int) -> tuple[int, int]:
    """(width, height) to generate at: ``resolution`` squared, else the source size rounded
    down to ``multiple`` (at least ``multiple``)."""
    if resolution is not None:
        return resolution, resolution
    width, height = source.size
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


def pipeline_call_parameters(method: str) -> set[str] | None:
    """The argument names of ``method``'s diffusers pipeline ``__call__`` (the class only: no
    weights are read), or None when they cannot be checked: a method that is not a diffusers
    pipeline, or a call hidden behind a bare ``(*args, **kwargs)`` wrapper."""
    import inspect

    from counterfactual_lab.diffusion_loading import PIPELINE_CLASSES, _pipeline_class

    if method not in PIPELINE_CLASSES:
        return None
    cls = _pipeline_class(method)
    signatures = [inspect.signature(cls.__call__)]
    if method == "ledits":
        # LEDITS++ reads `skip` in invert(), which the editor calls before __call__.
        signatures.append(inspect.signature(cls.invert))
    names: set[str] = set()
    for signature in signatures:
        named = {p.name for p in signature.parameters.values()
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)} - {"self"}
        if not named:
            return None  # a bare (*args, **kwargs) wrapper (a spy, a decorator): nothing to check
        names |= named
    # diffusers' **kwargs only catches deprecated callback arguments: the named ones are the API.
    return names


def validate_generation(generation: GenerationConfig) -> dict[str, Any]:
    """Check ``generation`` for ``generation.method``; return its params with defaults filled.

    :func:`~counterfactual_lab.method_params.check_method_params` (names, ranges, a config
    that can make an image; no torch needed), then every ``params`` key against the installed
    diffusers pipeline's ``__call__`` signature (the class is imported; no weights are read).
    Raises :class:`UserError` naming the key.
    """
    params = check_method_params(generation)
    accepted = pipeline_call_parameters(generation.method)
    if accepted is not None:
        missing = sorted(name for name in generation.params if name not in EDITOR_ONLY_PARAMS and name not in accepted)
        if missing:
            raise UserError(
                f"generation.params.{missing[0]} is not an argument of the installed diffusers pipeline for "
                f"{generation.method!r}; upgrade diffusers or drop the key"
            )
    return params


def _generators(items: list[WorkItem]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(item.seed) for item in items]


def partial_noise_call(editor: "DiffusersEditor", items: list[WorkItem], images: list[Any]) -> dict[str, Any]:
    """The pipeline arguments of a method that noises its source part way (``strength``) and
    denoises it towards the counterfactual caption: img2img, and inpainting inside a mask."""
    negative = editor.params["negative_prompt"]
    return dict(
        prompt=[item.counterfactual_caption for item in items],
        image=images,
        strength=float(editor.params["strength"]),
        num_inference_steps=editor.generation.steps,
        guidance_scale=editor.generation.guidance_scale,
        negative_prompt=None if negative is None else [negative] * len(items),
        eta=float(editor.params["eta"]),
        generator=_generators(items),
        output_type="pil",
    )


class DiffusersEditor:
    """Shared machinery: lazy pipeline loading, per-size sub-batches, the call lock."""

    method = ""

    def __init__(self, generation: GenerationConfig, device: str = "auto", pipeline: Any = None):
        if generation.method != self.method:
            raise ValueError(f"{type(self).__name__} edits with {self.method!r}, not {generation.method!r}")
        self.generation = generation
        self.params = validate_generation(generation)
        self.device = resolve_device(device)
        self._pipeline = pipeline

    @property
    def pipeline(self) -> Any:
        """The pipeline, loaded on first use (a batch served from the cache loads nothing)."""
        if self._pipeline is None:
            self._pipeline = load_pipeline(
                self.method, self.generation.model, self.generation.revision, str(self.device)
            )
        return self._pipeline

    def edit(self, items: list[WorkItem], sources: list[Image.Image]) -> list[Image.Image]:
        if len(items) != len(sources):
            raise ValueError(f"edit() got {len(items)} items but {len(sources)} source images")
        multiple = SIDE_MULTIPLE[self.method]
        groups: dict[Any, list[int]] = {}
        prepared: list[Image.Image] = []
        for index, source in enumerate(sources):
            size = output_size(source, self.generation.resolution, multiple)
            image = source.convert("RGB")
            if image.size != size:
                image = image.resize(size, Image.Resampling.BICUBIC)
            prepared.append(image)
            groups.setdefault(self._group_key(items[index], size), []).append(index)
        results: list[Image.Image | None] = [None] * len(items)
        pipeline = self.pipeline
        with pipeline_lock(pipeline), torch.inference_mode():
            for indices in groups.values():
                images = self._run(pipeline, [items[i] for i in indices], [prepared[i] for i in indices])
                for i, image in zip(indices, images):
                    results[i] = image
        return results  # type: ignore[return-value]

    def _group_key(self, item: WorkItem, size: tuple[int, int]) -> Any:
        # One pipeline call needs one image size.
        return size

    def _run(self, pipeline: Any, items: list[WorkItem], images: list[Image.Image]) -> list[Image.Image]:
        raise NotImplementedError


class InstructPix2PixEditor(DiffusersEditor):
    method = "instruct-pix2pix"

    def _run(self, pipeline, items, images):
        negative = self.params["negative_prompt"]
        return pipeline(
            prompt=[item.instruction for item in items],
            image=images,
            num_inference_steps=self.generation.steps,
            guidance_scale=self.generation.guidance_scale,
            image_guidance_scale=float(self.params["image_guidance_scale"]),
            negative_prompt=None if negative is None else [negative] * len(items),
            generator=_generators(items),
            output_type="pil",
        ).images


class Img2ImgEditor(DiffusersEditor):
    method = "img2img"

    def _run(self, pipeline, items, images):
        return pipeline(**partial_noise_call(self, items, images)).images


@dataclass
class Inversion:
    """One source image's LEDITS++ inversion: what ``invert`` leaves on the pipeline."""

    init_latents: torch.Tensor  # (1, C, h, w)
    zs: torch.Tensor  # (steps, 1, C, h, w)
    inversion_steps: torch.Tensor


class LeditsEditor(DiffusersEditor):
    """LEDITS++: invert each source once, then edit any number of targets from that inversion."""

    method = "ledits"

    def __init__(self, generation: GenerationConfig, device: str = "auto", pipeline: Any = None):
        super().__init__(generation, device, pipeline)
        self._inversions: OrderedDict[tuple[str, tuple[int, int]], Inversion] = OrderedDict()
        self.inversions_computed = 0  # how many times invert() ran (the cache's misses)

    def concepts(self, item: WorkItem) -> tuple[list[str], list[bool]]:
        """(editing prompts, reverse flags): away from the source concept, towards the target.

        A reconstruction's target is its source, so it goes away from and back towards the
        same concept; one of an unknown source value has no concept: ([], []), a plain
        reconstruction from the inversion.
        """
        overrides = self.params["concepts"]
        if item.target_value is None:
            return [], []
        target = concept_word(item.attribute, item.target_value, overrides)
        if item.source_value is None:
            return [target], [False]
        return [concept_word(item.attribute, item.source_value, overrides), target], [True, False]

    def _timestep_count(self) -> int:
        return int(self.generation.steps * (1 + float(self.params["skip"])))

    def _inversion(self, pipeline, item: WorkItem, image: Image.Image) -> Inversion:
        key = (item.source_key, image.size)
        cached = self._inversions.get(key)
        if cached is not None:
            self._inversions.move_to_end(key)
            return cached
        width, height = image.size
        pipeline.invert(
            image=image,
            source_prompt="",
            num_inversion_steps=self.generation.steps,
            skip=float(self.params["skip"]),
            # Shared by every seed of this source, so seeded by the config, not the item.
            generator=torch.Generator(device="cpu").manual_seed(self.generation.seed),
            height=height,
            width=width,
        )
        self.inversions_computed += 1
        inversion = Inversion(
            init_latents=pipeline.init_latents[:1].clone(),
            zs=pipeline.zs.clone(),
            inversion_steps=pipeline.inversion_steps.clone(),
        )
        self._inversions[key] = inversion
        while len(self._inversions) > MAX_CACHED_INVERSIONS:
            self._inversions.popitem(last=False)
        return inversion

    def _run(self, pipeline, items, images):
        # One image per call: with its default intersect masks, LEDITS++ (diffusers 0.42) lets
        # the images of one call change each other's masks, which would make an item's pixels
        # depend on its batch. The costly shared part, the inversion, is still done once.
        return [self._edit_one(pipeline, item, image) for item, image in zip(items, images)]

    def _edit_one(self, pipeline, item: WorkItem, image: Image.Image) -> Image.Image:
        inversion = self._inversion(pipeline, item, image)
        # Put the inversion back on the pipeline as if invert() had just run on this image.
        pipeline.init_latents = inversion.init_latents
        pipeline.zs = inversion.zs
        pipeline.inversion_steps = inversion.inversion_steps
        pipeline.batch_size = 1
        pipeline.eta = 1.0
        pipeline.scheduler.config.timestep_spacing = "leading"
        pipeline.scheduler.set_timesteps(self._timestep_count())
        prompts, reverse = self.concepts(item)
        if not prompts:  # nothing to steer by: LEDITS++ reconstructs the inverted image
            return pipeline(editing_prompt=None, generator=_generators([item])[0], output_type="pil").images[0]
        guidance = self.params["edit_guidance_scale"]
        guidance = self.generation.guidance_scale if guidance is None else float(guidance)
        return pipeline(
            editing_prompt=prompts,
            reverse_editing_direction=reverse,
            edit_guidance_scale=[guidance] * len(prompts),
            edit_threshold=[float(self.params["edit_threshold"])] * len(prompts),
            edit_warmup_steps=[int(self.params["edit_warmup_steps"])] * len(prompts),
            generator=_generators([item])[0],
            output_type="pil",
        ).images[0]


EDITORS: dict[str, type[DiffusersEditor]] = {
    editor.method: editor for editor in (InstructPix2PixEditor, Img2ImgEditor, LeditsEditor)
}

# The planted-bias world's editor (no weights; exists to validate the audit, see
# counterfactual_lab/validity). Imported here, after the names above, to register it.
from counterfactual_lab.validity import editor as _validation  # noqa: E402

EDITORS[_validation.METHOD] = _validation.ValidationEditor  # type: ignore[assignment]


_editors: dict[tuple[str, str], DiffusersEditor] = {}
GENERATION_FIELDS = ("method", "model", "revision", "steps", "guidance_scale", "seed", "resolution", "params")


def _generation_key(generation: GenerationConfig) -> str:
    return json.dumps({name: getattr(generation, name) for name in GENERATION_FIELDS}, sort_keys=True, default=str)

_editors_lock = threading.Lock()


def make_editor(generation: GenerationConfig, device: str = "auto") -> ImageEditor:
    """The editor for ``generation.method``; its pipeline loads on the first batch it edits.

    One editor per process for each (generation config, device), so every batch a worker runs
    shares the loaded pipeline and the LEDITS++ inversions already computed.
    """
    try:
        cls = EDITORS[generation.method]
    except KeyError:
        raise UserError(f"generation.method {generation.method!r} is not one of {sorted(EDITORS)}") from None
    key = (_generation_key(generation), str(resolve_device(device)))
    with _editors_lock:
        editor = _editors.get(key)
        if editor is None:
            editor = _editors[key] = cls(generation, device=device)
        return editor


def clear_editor_cache() -> None:
    """Forget the shared editors (and their LEDITS++ inversions)."""
    with _editors_lock:
        _editors.clear()
