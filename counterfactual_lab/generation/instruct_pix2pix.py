"""The ``instruct-pix2pix`` editor: ``StableDiffusionInstructPix2PixPipeline`` with the item's
instruction ("make the man a woman"; a reconstruction gets "make the man a man") as prompt and
``image_guidance_scale`` (params, default 1.5)."""

from __future__ import annotations

from counterfactual_lab.generation.editor import DiffusersEditor, seeded_generators


class InstructPix2PixEditor(DiffusersEditor):
    def _run(self, pipeline, items, images):
        negative = self.params["negative_prompt"]
        return pipeline(
            prompt=[item.instruction for item in items],
            image=images,
            num_inference_steps=self.generation.steps,
            guidance_scale=self.generation.guidance_scale,
            image_guidance_scale=float(self.params["image_guidance_scale"]),
            negative_prompt=None if negative is None else [negative] * len(items),
            generator=seeded_generators(items),
            output_type="pil",
        ).images


