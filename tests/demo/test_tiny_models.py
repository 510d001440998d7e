"""The tiny offline models: what each folder holds, and that they load like real models."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from counterfactual_lab.demo.tiny_diffusion import build_tiny_diffusion
from counterfactual_lab.demo.tiny_models import build_tiny_models
from counterfactual_lab.demo.tiny_parts import build_tiny_tokenizer


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_builds_the_eight_models_once(tiny_models):
    assert set(tiny_models) == {"instruct-pix2pix", "img2img", "ledits", "clip", "vlm", "toxicity", "sentiment", "text-embedder"}
    files = {name: sorted(p for p in folder.rglob("*") if p.is_file()) for name, folder in tiny_models.items()}
    before = {p: p.stat().st_mtime_ns for paths in files.values() for p in paths}

    again = build_tiny_models(next(iter(tiny_models.values())).parent, names=tuple(tiny_models))

    assert again == tiny_models
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_weights_are_safetensors_only(tiny_models):
    for folder in tiny_models.values():
        suffixes = {p.suffix for p in folder.rglob("*") if p.is_file()}
        assert ".safetensors" in suffixes
        assert not suffixes & {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def test_diffusion_folders_match_their_pipelines(tiny_models):
    classes = {
        "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "ledits": "LEditsPPPipelineStableDiffusion",
    }
    for name, cls in classes.items():
        index = json.loads((tiny_models[name] / "model_index.json").read_text())
        assert index["_class_name"] == cls
        unet = json.loads((tiny_models[name] / "unet" / "config.json").read_text())
        # LEDITS++ reads cross-attention at a quarter of the latent size: three levels, attention at the third.
        assert len(unet["block_out_channels"]) == 3
        assert unet["down_block_types"][2] == "CrossAttnDownBlock2D"
        assert unet["in_channels"] == (8 if name == "instruct-pix2pix" else 4)
    scheduler = json.loads((tiny_models["ledits"] / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler"
    assert scheduler["algorithm_type"] == "sde-dpmsolver++"


def test_same_seed_same_weights(tiny_models, tmp_path):
    rebuilt = build_tiny_diffusion("img2img", tmp_path / "img2img", seed=0)
    other = build_tiny_diffusion("img2img", tmp_path / "other-seed", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert _sha(rebuilt / weights) == _sha(tiny_models["img2img"] / weights)
    assert _sha(other / weights) != _sha(tiny_models["img2img"] / weights)


def test_tokenizer_is_offline_clip_format(tmp_path):
    from transformers import CLIPTokenizer

    build_tiny_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert tokenizer.model_max_length == 77
    ids = tokenizer("A photo of a Woman, smiling!", padding="max_length").input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.replace(" ", "") == "aphotoofawoman,smiling!"


def test_clip_loads_through_auto_classes(tiny_models):
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(tiny_models["clip"], use_safetensors=True)
    processor = AutoProcessor.from_pretrained(tiny_models["clip"])
    inputs = processor(
        text=["a photo of a man", "a photo of a woman"],
        images=[Image.new("RGB", (48, 40), "red")],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        output = model(**inputs)
    assert output.logits_per_image.shape == (1, 2)
    assert output.image_embeds.shape == (1, model.config.projection_dim)


def test_unknown_method_is_refused(tmp_path):
    """Every method with weights has a tiny pipeline (its row names the class); others are refused."""
    with pytest.raises(ValueError, match="unknown generation method 'dalle'"):
        build_tiny_diffusion("dalle", tmp_path)
    with pytest.raises(ValueError, match="unknown generation method 'planted-world'"):
        build_tiny_diffusion("planted-world", tmp_path)  # no weights
