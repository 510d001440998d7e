"""Tiny random-weight diffusion pipelines, one for each generation method with weights.

The pipeline class and the UNet's input channels come from the method's row in
:data:`counterfactual_lab.config.methods.METHODS`; the UNet has three resolution levels with
cross-attention at the lower two (LEDITS++ builds its edit masks from cross-attention maps at a
quarter of the latent size; with two levels it fails). LEDITS++ gets a
``DPMSolverMultistepScheduler`` (``sde-dpmsolver++``, order 2), one of the two schedulers it
accepts; every other method DDIM. Saved with ``save_pretrained`` (safetensors), they load back
through the same ``from_pretrained`` path as real checkpoints. Their images are noise: they test
plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.demo.tiny_parts import (
    TINY,
    DiffusionSize,
    clip_text_config,
    tokenizer_in_memory,
)
from counterfactual_lab.models.image_processors import prefer_pil_image_processors

# Channels of a UNet that denoises latents alone; an inpainting UNet also reads the mask and the
# masked image's latents (9), an instruct-pix2pix one the source image's latents (8).
LATENT_CHANNELS = 4


def build_diffusion_pipeline(method: str, seed: int = 0, size: DiffusionSize = TINY, tokenizer=None):
    """A random-weight pipeline for ``method``, in memory (seeded: same seed, same weights).

    The UNet, VAE and text encoder are drawn from seeds ``seed``, ``seed + 1`` and ``seed + 2``.
    A UNet with more than 8 input channels (inpainting) is drawn last, from ``seed + 3``, after a
    latents-only UNet, as the first tiny inpainting models were: saved models keep their weights.
    """
    weighted = sorted(name for name, facts in METHODS.items() if facts.has_weights)
    if method not in weighted:
        raise ValueError(f"unknown generation method {method!r}; expected one of {weighted}")
    facts = METHODS[method]
    prefer_pil_image_processors()  # before diffusers and transformers name them: no torchvision warning
    # here, not at the top: it imports diffusers
    import diffusers

    # here, not at the top: it imports diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

    # here, not at the top: it imports transformers
    from transformers import CLIPTextModel

    tokenizer = tokenizer or tokenizer_in_memory()
    torch.manual_seed(seed)
    c1, c2, c3 = size.unet_channels
    drawn_last = facts.unet_in_channels > 8
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=LATENT_CHANNELS if drawn_last else facts.unet_in_channels,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(c1, c2, c3),
        layers_per_block=size.layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=size.text_hidden,
        attention_head_dim=size.attention_head_dim,
        norm_num_groups=size.norm_groups,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(size.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(size.vae_channels),
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=size.norm_groups,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, size))
    if drawn_last:
        torch.manual_seed(seed + 3)
        unet = UNet2DConditionModel.from_config({**unet.config, "in_channels": facts.unet_in_channels})
    cls = getattr(diffusers, facts.pipeline_class)
    sd_schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    if cls is diffusers.LEditsPPPipelineStableDiffusion:
        scheduler = DPMSolverMultistepScheduler(**sd_schedule, algorithm_type="sde-dpmsolver++", solver_order=2)
    else:
        # (EulerAncestral, instruct-pix2pix's original choice, warns under numpy 2 in diffusers 0.42.)
        scheduler = DDIMScheduler(**sd_schedule, clip_sample=False, set_alpha_to_one=False)
    return cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_tiny_diffusion(method: str, directory: str | Path, seed: int = 0, size: DiffusionSize = TINY) -> Path:
    """Build and save (safetensors) a random-weight pipeline for ``method`` in ``directory``."""
    directory = Path(directory)
    build_diffusion_pipeline(method, seed=seed, size=size).save_pretrained(directory, safe_serialization=True)
    return directory
