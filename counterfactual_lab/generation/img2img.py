"""The ``img2img`` editor: SDEdit with ``StableDiffusionImg2ImgPipeline``, the counterfactual
caption as prompt (a reconstruction gets the unchanged caption) and ``strength`` (params,
default 0.6): the source is noised part way and denoised towards the caption."""

from __future__ import annotations

from counterfactual_lab.generation.editor import DiffusersEditor, partial_noise_call


class Img2ImgEditor(DiffusersEditor):
    def _run(self, pipeline, items, images):
        return pipeline(**partial_noise_call(self, items, images)).images


