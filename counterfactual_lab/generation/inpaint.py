"""The ``inpaint`` editor: change only the masked region; every other pixel is the source's.

``StableDiffusionInpaintPipeline`` (an inpainting checkpoint: a UNet with 9 input channels, noisy
latents + mask + masked-image latents) repaints the region of the item's mask
(:mod:`counterfactual_lab.plan.masks`: white = edit) with the item's prompt, the counterfactual
caption (a reconstruction gets the unchanged caption, as with ``img2img``). The pipeline works at
``generation.resolution`` squared, else at the source's size rounded down to a multiple of 8; its
output is resized back to the source's own size and composited over the source through the
binary mask, so a pixel outside the mask equals the source's exactly (maximum difference 0),
whatever the VAE or the resizing did to it.

``generation.params``: ``mask`` (required, see :mod:`counterfactual_lab.plan.masks`), ``strength``
(1.0, in (0, 1]: how far the masked region is noised; 1.0 ignores what was there),
``negative_prompt`` (none), ``eta`` (0.0). An item whose mask has no pixel set is returned as a
:class:`~counterfactual_lab.plan.masks.MaskError` in place of its image: it fails alone.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from counterfactual_lab.generation.editor import (
    DiffusersEditor,
    output_size,
    partial_noise_call,
)
from counterfactual_lab.models.diffusion import pipeline_lock
from counterfactual_lab.plan.masks import MaskError, binary_mask, require_pixels
from counterfactual_lab.plan.work_items import WorkItem


def composite(generated: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` (resized to the source's size) inside ``mask`` (0/255, source-sized), ``source`` outside."""
    if generated.size != source.size:
        generated = generated.resize(source.size, Image.Resampling.BICUBIC)
    return Image.composite(generated.convert("RGB"), source.convert("RGB"), mask)


class InpaintEditor(DiffusersEditor):
    """``edit(items, sources, masks)``: one image per item, at its source's size."""


    def edit(self, items: list[WorkItem], sources: list[Image.Image], masks: list[Image.Image | None] | None = None
             ) -> list[Image.Image | MaskError]:
        if len(items) != len(sources) or masks is None or len(masks) != len(items):
            raise ValueError(f"edit() needs one source and one mask per item; got {len(items)} items, "
                             f"{len(sources)} sources, {0 if masks is None else len(masks)} masks")
        results: list[Image.Image | MaskError | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        prepared: dict[int, tuple[Image.Image, Image.Image, Image.Image, Image.Image]] = {}
        for index, (item, source, mask) in enumerate(zip(items, sources, masks)):
            source = source.convert("RGB")
            try:
                if mask is None:
                    raise MaskError(f"work item {item.content_key} has no mask")
                full = require_pixels(binary_mask(mask, source.size), f"the mask of source {item.source_id!r}")
            except MaskError as exc:
                results[index] = exc
                continue
            size = output_size(source, self.generation.resolution, self.facts.side_multiple)
            working_image = source if source.size == size else source.resize(size, Image.Resampling.BICUBIC)
            working_mask = full if full.size == size else full.resize(size, Image.Resampling.NEAREST)
            prepared[index] = (source, full, working_image, working_mask)
            groups.setdefault(size, []).append(index)
        if groups:
            pipeline = self.pipeline
            with pipeline_lock(pipeline), torch.inference_mode():
                for size, indices in groups.items():
                    outputs = self._call(pipeline, [items[i] for i in indices], [prepared[i][2] for i in indices],
                                         [prepared[i][3] for i in indices], size)
                    for i, output in zip(indices, outputs):
                        source, full, _, _ = prepared[i]
                        results[i] = composite(output, source, full)
        return results  # type: ignore[return-value]

    def _call(self, pipeline: Any, items: list[WorkItem], images: list[Image.Image], masks: list[Image.Image],
              size: tuple[int, int]) -> list[Image.Image]:
        width, height = size
        return pipeline(mask_image=masks, height=height, width=width, **partial_noise_call(self, items, images)).images
