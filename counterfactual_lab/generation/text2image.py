"""The ``text2image-sets`` editor: every member of a counterfactual set from the same noise.

A work item of this method is one member of a set (:mod:`counterfactual_lab.generation.text2image_sets`):
``counterfactual_caption`` is the member's prompt, ``caption`` the set's reference prompt (its
first member's), ``seed`` the set's seed. ``StableDiffusionPipeline`` makes each image from text
alone (no source image is read), with

* **shared initial latents**: the latents of a row are ``randn`` from a CPU generator seeded with
  the item's seed, so every member of a set and seed starts from the same noise, whichever
  batch, call or machine makes it (:func:`initial_latents`); the same per-seed generators drive
  any scheduler noise (``eta`` > 0);
* **optional attention sharing** (``params.attention_sharing``, ``params.self_attention_sharing``):
  prompt-to-prompt injection of the reference member's attention maps
  (:mod:`counterfactual_lab.generation.attention_sharing`). A member whose reference is not in the
  same call (generated alone, or its set partly cached) gets the reference as a hidden extra row,
  so its pixels never depend on its batch.

Images are made at ``generation.resolution`` squared, else at the pipeline's own size (its UNet's
``sample_size`` × the VAE's scale factor: 512 for Stable Diffusion 1.5).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from counterfactual_lab.generation.attention_sharing import (
    AttentionSharing,
    SharedRow,
    token_alignment,
)
from counterfactual_lab.generation.editor import DiffusersEditor
from counterfactual_lab.models.diffusion import pipeline_lock
from counterfactual_lab.plan.work_items import WorkItem


def initial_latents(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The initial noise of every member of a set made with ``seed``: float32, on the CPU, so it
    is the same on every device (moved and cast by the caller)."""
    return torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(seed), dtype=torch.float32)


def is_reference(item: WorkItem) -> bool:
    """True for the set member whose prompt is the set's reference prompt."""
    return item.counterfactual_caption == item.caption


class TextToImageSetsEditor(DiffusersEditor):
    """``edit(items, sources)``: ``sources`` are ignored (None); one image per member item."""


    def batch_group(self, item: WorkItem) -> str:
        """Members of one set are packed into one pipeline call where the batch size allows."""
        return item.set_id

    @property
    def sharing(self) -> tuple[float, float]:
        return float(self.params["attention_sharing"]), float(self.params["self_attention_sharing"])

    def image_size(self, pipeline: Any) -> tuple[int, int]:
        """(width, height): ``generation.resolution`` squared, else the pipeline's default size."""
        if self.generation.resolution is not None:
            return self.generation.resolution, self.generation.resolution
        side = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
        return side, side

    def edit(self, items: list[WorkItem], sources: list[Any]) -> list[Image.Image]:
        if len(items) != len(sources):
            raise ValueError(f"edit() got {len(items)} items but {len(sources)} source entries")
        if not items:
            return []
        rows = self._rows(items)
        pipeline = self.pipeline
        with pipeline_lock(pipeline), torch.inference_mode():
            images = self._run(pipeline, rows)
        return [image for image, (item, hidden) in zip(images, rows) if not hidden]

    def _rows(self, items: list[WorkItem]) -> list[tuple[WorkItem, bool]]:
        """(item, hidden) per pipeline row: the items, plus a hidden reference row for each set
        whose reference member is absent when attention is shared."""
        rows = [(item, False) for item in items]
        if not any(self.sharing):
            return rows
        present = {item.set_id for item in items if is_reference(item)}
        for item in items:
            if item.set_id not in present:
                present.add(item.set_id)
                rows.append((replace(item, counterfactual_caption=item.caption), True))
        return rows

    def _run(self, pipeline: Any, rows: list[tuple[WorkItem, bool]]) -> list[Image.Image]:
        width, height = self.image_size(pipeline)
        scale = int(pipeline.vae_scale_factor)
        shape = (1, int(pipeline.unet.config.in_channels), height // scale, width // scale)
        prompts = [item.counterfactual_caption for item, _ in rows]
        latents = torch.cat([initial_latents(item.seed, shape) for item, _ in rows])
        latents = latents.to(device=pipeline.device, dtype=pipeline.unet.dtype)
        negative = self.params["negative_prompt"]
        call = dict(
            prompt=prompts,
            height=height,
            width=width,
            num_inference_steps=self.generation.steps,
            guidance_scale=self.generation.guidance_scale,
            negative_prompt=None if negative is None else [negative] * len(rows),
            eta=float(self.params["eta"]),
            generator=[torch.Generator(device="cpu").manual_seed(item.seed) for item, _ in rows],
            latents=latents,
            output_type="pil",
        )
        cross, self_share = self.sharing
        if not (cross or self_share):
            return pipeline(**call).images
        sharing = AttentionSharing(self._shared_rows(pipeline, rows), len(rows), self.generation.steps, cross, self_share)
        with sharing.attached(pipeline.unet):
            return pipeline(**call).images

    def _shared_rows(self, pipeline: Any, rows: list[tuple[WorkItem, bool]]) -> list[SharedRow]:
        tokenizer = pipeline.tokenizer
        length = int(tokenizer.model_max_length)
        reference_row: dict[str, int] = {}
        for index, (item, _) in enumerate(rows):
            if is_reference(item):
                reference_row.setdefault(item.set_id, index)
        shared = []
        for index, (item, _) in enumerate(rows):
            reference = reference_row[item.set_id]
            if reference == index:
                continue
            ids = tokenizer([item.caption, item.counterfactual_caption], truncation=True, max_length=length).input_ids
            ref_tokens, member_tokens = token_alignment(ids[0], ids[1], length)
            shared.append(SharedRow(index, reference, torch.tensor(member_tokens), torch.tensor(ref_tokens)))
        return shared
