"""Tiny random-weight CLIP (the judge's and a contrastive model under audit's) and CLIPSeg (the
text-prompted segmentation model that makes inpainting masks), each saved with its processor."""

from __future__ import annotations

from pathlib import Path

import torch

from counterfactual_lab.demo.tiny_parts import (
    TINY,
    build_tiny_tokenizer,
    clip_text_config,
)


def build_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random-weight ``CLIPModel`` with its processor in ``directory``.

    ``AutoModel.from_pretrained(directory)`` and ``AutoProcessor.from_pretrained(directory)``
    load it back.
    """
    # here, not at the top: it imports transformers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(directory)
    text_config = clip_text_config(tokenizer, TINY)
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, num_channels=3,
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(directory, safe_serialization=True)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def build_tiny_clipseg(directory: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random-weight CLIPSeg (model + processor) in ``directory``.

    32×32 inputs in 8-pixel patches, two vision layers whose activations the decoder reads;
    ``CLIPSegForImageSegmentation.from_pretrained`` and ``CLIPSegProcessor.from_pretrained``
    load it back. Logits come out at the processor's 32×32 size.
    """
    # here, not at the top: transformers loads only when this is called
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
