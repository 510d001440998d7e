"""The editors' interface, the machinery every diffusers editor shares, and one editor per process.

Each generation method has its own editor module (``img2img.py``, ``instruct_pix2pix.py``,
``ledits.py``, ``inpaint.py``, ``text2image.py``, ``planted.py``), named by its row in
:data:`counterfactual_lab.config.methods.METHODS`; :func:`make_editor` reads the row.

Determinism: every item gets its own ``torch.Generator`` seeded with ``item.seed`` (on the
CPU, so the noise does not depend on the device), so an item's image depends only on its
inputs, seed, model and device: bit-identical for the same batch, and across batch
compositions equal up to float rounding (batched kernels sum in another order; at most a
grey level here and there).
"""

from __future__ import annotations

import inspect
import json
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from PIL import Image

from counterfactual_lab.config.methods import check_method_params, method_facts
from counterfactual_lab.errors import UserError
from counterfactual_lab.models.devices import resolve_device
from counterfactual_lab.models.diffusion import (
    load_pipeline,
    pipeline_class,
    pipeline_lock,
)
from counterfactual_lab.plan.work_items import WorkItem

if TYPE_CHECKING:  # only read as attributes, so a GPU box without pydantic can run the benches
    from counterfactual_lab.config.audit_config import GenerationSection


@runtime_checkable
class ImageEditor(Protocol):
    """Edits a batch: ``edit(items, sources)[i]`` is the counterfactual of ``sources[i]``.

    Optional, read by :func:`counterfactual_lab.generation.batch.generate_batch`: ``reads_masks``
    (``edit(items, sources, masks)``, the inpainting editor), ``batch_group(item)`` (items of one
    group, a text-to-image set, share a call where the batch size allows), and an exception in
    place of an image for an item the editor cannot make (that item alone fails). Methods in
    whose row says ``reads_source=False`` get None for every source.
    """

    method: str

    def edit(self, items: list[WorkItem], sources: list[Image.Image]) -> list[Image.Image]: ...


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


    facts = method_facts(method)
    if not facts.has_weights:
        return None
    cls = pipeline_class(method)
    signatures = [inspect.signature(cls.__call__)]
    if facts.inverts:
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


def validate_generation(generation: GenerationSection) -> dict[str, Any]:
    """Check ``generation`` for ``generation.method``; return its params with defaults filled.

    :func:`~counterfactual_lab.config.methods.check_method_params` (names, ranges, a config
    that can make an image; no torch needed), then every ``params`` key against the installed
    diffusers pipeline's ``__call__`` signature (the class is imported; no weights are read).
    Raises :class:`UserError` naming the key.
    """
    params = check_method_params(generation)
    accepted = pipeline_call_parameters(generation.method)
    if accepted is not None:
        read_by_editor = {name for name, param in method_facts(generation.method).params.items() if not param.pipeline_argument}
        missing = sorted(name for name in generation.params if name not in read_by_editor and name not in accepted)
        if missing:
            raise UserError(
                f"generation.params.{missing[0]} is not an argument of the installed diffusers pipeline for "
                f"{generation.method!r}; upgrade diffusers or drop the key"
            )
    return params


def seeded_generators(items: list[WorkItem]) -> list[torch.Generator]:
    """One CPU generator per item, seeded with the item's seed: its noise is the same on every device."""
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
        generator=seeded_generators(items),
        output_type="pil",
    )


class DiffusersEditor:
    """Shared machinery: lazy pipeline loading, per-size sub-batches, the call lock.

    A subclass is the editor of the methods whose row in :data:`~counterfactual_lab.config.methods.METHODS`
    names it; it reads the method's facts (pipeline class, side multiple) from that row.
    """

    def __init__(self, generation: GenerationSection, device: str = "auto", pipeline: Any = None):
        self.facts = method_facts(generation.method)
        self.facts.require_editor(type(self))
        self.method = generation.method
        self.generation = generation
        self.params = validate_generation(generation)
        self.device = resolve_device(device)
        self._pipeline = pipeline

    @property
    def reads_masks(self) -> bool:
        """True when the method edits inside masks: ``edit(items, sources, masks)``."""
        return self.facts.reads_mask

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
        multiple = self.facts.side_multiple
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


_editors: dict[tuple[str, str], DiffusersEditor] = {}
GENERATION_FIELDS = ("method", "model", "revision", "steps", "guidance_scale", "seed", "resolution", "params")


def _generation_key(generation: GenerationSection) -> str:
    return json.dumps({name: getattr(generation, name) for name in GENERATION_FIELDS}, sort_keys=True, default=str)

_editors_lock = threading.Lock()


def make_editor(generation: GenerationSection, device: str = "auto") -> ImageEditor:
    """The editor for ``generation.method``; its pipeline loads on the first batch it edits.

    One editor per process for each (generation config, device), so every batch a worker runs
    shares the loaded pipeline and the LEDITS++ inversions already computed.
    """
    cls = method_facts(generation.method).editor_class()
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
