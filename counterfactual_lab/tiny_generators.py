"""Tiny random-weight models for the text-to-image sets and inpainting methods, built offline.

``cflab models tiny DIR`` builds them beside the demo's four (``counterfactual_lab/tiny_models.py``
registers them), saved with ``save_pretrained`` as safetensors, so they load back through the
same ``from_pretrained`` path as real checkpoints:

* ``text2image``: ``StableDiffusionPipeline`` (a 4-channel UNet, DDIM), for ``text2image-sets``;
* ``inpaint``: ``StableDiffusionInpaintPipeline`` with the inpainting UNet's 9 input channels
  (noisy latents 4 + mask 1 + masked-image latents 4), as SD-inpainting checkpoints have;
* ``clipseg``: a ``CLIPSegForImageSegmentation`` with its ``CLIPSegProcessor``, the text-prompted
  segmentation model that makes inpainting masks (``params.mask.segment``).

The diffusion parts have the shapes of :data:`counterfactual_lab.tiny_models.TINY` (three UNet
levels, cross-attention at the lower two), so the attention-sharing processors see real
cross- and self-attention layers. Their images are noise: they test plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from counterfactual_lab.tiny_models import TINY, DiffusionSize, build_diffusion_pipeline, build_tiny_tokenizer

def build_text2image_pipeline(seed: int = 0, size: DiffusionSize = TINY):
    """A random-weight ``StableDiffusionPipeline`` in memory (the tiny img2img pipeline's parts)."""
    from diffusers import StableDiffusionPipeline

    parts = build_diffusion_pipeline("img2img", seed=seed, size=size).components
    return StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_inpaint_pipeline(seed: int = 0, size: DiffusionSize = TINY):
    """A random-weight ``StableDiffusionInpaintPipeline`` in memory, with a 9-channel UNet."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    parts = build_diffusion_pipeline("img2img", seed=seed, size=size).components
    torch.manual_seed(seed + 3)
    unet = UNet2DConditionModel.from_config({**parts["unet"].config, "in_channels": 9})
    return StableDiffusionInpaintPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=unet,
        scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_text2image(directory: str | Path, seed: int = 0, size: DiffusionSize = TINY) -> Path:
    """Build and save (safetensors) the tiny text-to-image pipeline in ``directory``."""
    directory = Path(directory)
    build_text2image_pipeline(seed, size).save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_inpaint(directory: str | Path, seed: int = 0, size: DiffusionSize = TINY) -> Path:
    """Build and save (safetensors) the tiny inpainting pipeline in ``directory``."""
    directory = Path(directory)
    build_inpaint_pipeline(seed, size).save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_clipseg(directory: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random-weight CLIPSeg (model + processor) in ``directory``.

    32×32 inputs in 8-pixel patches, two vision layers whose activations the decoder reads;
    ``CLIPSegForImageSegmentation.from_pretrained`` and ``CLIPSegProcessor.from_pretrained``
    load it back. Logits come out at the processor's 32×32 size.
    """
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPSegTextConfig,
        CLIPSegVisionConfig,
        ViTImageProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(directory)
    text_config = CLIPSegTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPSegVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
    )
    config = CLIPSegConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16,
        extract_layers=[0, 1], reduce_dim=16, decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )
    torch.manual_seed(seed)
    CLIPSegForImageSegmentation(config).save_pretrained(directory, safe_serialization=True)
    image_processor = ViTImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


# name -> builder, for tiny_models.build_tiny_models (its GENERATOR_MODEL_NAMES list these).
BUILDERS = {"text2image": build_tiny_text2image, "inpaint": build_tiny_inpaint, "clipseg": build_tiny_clipseg}
