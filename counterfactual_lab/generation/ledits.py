"""The ``ledits`` editor: ``LEditsPPPipelineStableDiffusion``.

Each source image is inverted once per editor and the inversion is reused for all of its
targets and seeds; the edit then pushes away from the source concept (reversed) and towards
the target concept. LEDITS++ edits are deterministic given the inversion, which is seeded with
``generation.seed`` because it is shared across seeds: candidates that differ only in seed are
identical, so use ``seeds_per_target: 1`` or vary ``params`` instead.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from counterfactual_lab.generation.editor import DiffusersEditor, seeded_generators
from counterfactual_lab.plan.work_items import WorkItem

if TYPE_CHECKING:
    from counterfactual_lab.config.audit_config import GenerationSection

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


def concept_word(attribute: str, value: str, overrides: dict[str, str] | None = None) -> str:
    """The short noun phrase LEDITS++ edits with, e.g. ("gender", "female") -> "woman"."""
    if overrides and value in overrides:
        return overrides[value]
    key = value.strip().lower()
    if key in CONCEPT_WORDS:
        return CONCEPT_WORDS[key]
    return f"{value} person"


@dataclass
class Inversion:
    """One source image's LEDITS++ inversion: what ``invert`` leaves on the pipeline."""

    init_latents: torch.Tensor  # (1, C, h, w)
    zs: torch.Tensor  # (steps, 1, C, h, w)
    inversion_steps: torch.Tensor


class LeditsEditor(DiffusersEditor):
    """LEDITS++: invert each source once, then edit any number of targets from that inversion."""

    def __init__(self, generation: GenerationSection, device: str = "auto", pipeline: Any = None):
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
            return pipeline(editing_prompt=None, generator=seeded_generators([item])[0], output_type="pil").images[0]
        guidance = self.params["edit_guidance_scale"]
        guidance = self.generation.guidance_scale if guidance is None else float(guidance)
        return pipeline(
            editing_prompt=prompts,
            reverse_editing_direction=reverse,
            edit_guidance_scale=[guidance] * len(prompts),
            edit_threshold=[float(self.params["edit_threshold"])] * len(prompts),
            edit_warmup_steps=[int(self.params["edit_warmup_steps"])] * len(prompts),
            generator=seeded_generators([item])[0],
            output_type="pil",
        ).images[0]


