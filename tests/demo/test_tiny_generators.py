"""The tiny text2image, inpaint and clipseg models: what `cflab models tiny` adds, and that they load."""

from __future__ import annotations

import json

import numpy as np

from counterfactual_lab.flows.cli import main
from counterfactual_lab.demo.tiny_models import ALL_TINY_MODEL_NAMES
from counterfactual_lab.models.identity import TINY_MARKER


def test_cflab_models_tiny_adds_text2image_inpaint_and_clipseg(tiny_models, generator_models, capsys):
    root = generator_models["text2image"].parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert main(["models", "tiny", str(root)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == list(ALL_TINY_MODEL_NAMES)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # every folder was already built
    assert {name: root / name for name in ("text2image", "inpaint", "clipseg")} == generator_models


def test_the_folders_hold_the_pipelines_and_safetensors_only(generator_models):
    classes = {"text2image": "StableDiffusionPipeline", "inpaint": "StableDiffusionInpaintPipeline"}
    for name, cls in classes.items():
        assert json.loads((generator_models[name] / "model_index.json").read_text())["_class_name"] == cls
    unet = json.loads((generator_models["inpaint"] / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 9  # latents + mask + masked-image latents
    assert json.loads((generator_models["clipseg"] / "config.json").read_text())["model_type"] == "clipseg"
    for folder in generator_models.values():
        suffixes = {p.suffix for p in folder.rglob("*") if p.is_file()}
        assert ".safetensors" in suffixes and not suffixes & {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
        assert (folder / TINY_MARKER).exists()


def test_clipseg_loads_through_the_safe_loader_and_segments(generator_models):
    from PIL import Image

    from counterfactual_lab.plan.masks import load_segmenter, segment

    network, processor = load_segmenter(str(generator_models["clipseg"]), device="cpu")
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (17, 23), "blue")]
    masks = segment(images, "person", network, processor, threshold=0.5, dilation=0)
    assert [m.size for m in masks] == [(40, 30), (17, 23)] and {m.mode for m in masks} == {"L"}
    assert all(set(np.unique(np.asarray(m))) <= {0, 255} for m in masks)
