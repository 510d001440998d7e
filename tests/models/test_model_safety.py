"""Models that ask to run their own code are refused, and their code never runs.

Each hostile model is a tiny model with one change: its config names a class from a Python file
shipped beside the weights, and that file writes a marker file when imported. Every test asserts
the refusal *and* that the marker does not exist, so a loader passing ``trust_remote_code=True``
fails here (the library would import the file before anything could refuse the model).

Two sources per loader: a local folder, and a hub id served from a Hugging Face cache (no hub is
reachable here; ``HF_HUB_OFFLINE`` is set by ``conftest.py``). Only a local folder can be
inspected before loading, so the hub case shows the library-level guard on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from counterfactual_lab.models.diffusion import clear_pipeline_cache, load_pipeline
from counterfactual_lab.models.clip import ClipEmbedder, clear_caches
from counterfactual_lab.errors import UnsafeModelError
from counterfactual_lab.models.safety import remote_code_refusal, safe_load_kwargs

HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def payload(marker: Path, base_import: str, class_line: str) -> str:
    """A module that leaves ``marker`` behind the moment it is imported."""
    return f"from pathlib import Path\nPath({str(marker)!r}).write_text('custom code ran')\n{base_import}\n{class_line}\n"


def clip_with_auto_map(tiny_models, folder: Path, marker: Path) -> Path:
    """The tiny CLIP, whose config.json maps AutoModel to modeling_evil.EvilModel."""
    shutil.copytree(tiny_models["clip"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(
        payload(
            marker,
            "from transformers import CLIPConfig, CLIPModel",
            "class EvilConfig(CLIPConfig):\n    pass\n\nclass EvilModel(CLIPModel):\n    config_class = EvilConfig",
        )
    )
    return folder


def img2img_with_custom_pipeline(tiny_models, folder: Path, marker: Path) -> Path:
    """The tiny img2img pipeline, whose model_index.json names pipeline_evil.EvilPipeline."""
    shutil.copytree(tiny_models["img2img"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline_evil", "EvilPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "pipeline_evil.py").write_text(
        payload(
            marker,
            "from diffusers import StableDiffusionImg2ImgPipeline",
            "class EvilPipeline(StableDiffusionImg2ImgPipeline):\n    pass",
        )
    )
    return folder


def img2img_with_custom_unet(tiny_models, folder: Path, marker: Path) -> Path:
    """The tiny img2img pipeline, whose UNet component is unet/unet_evil.py's EvilUNet."""
    shutil.copytree(tiny_models["img2img"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["unet_evil", "EvilUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet" / "unet_evil.py").write_text(
        payload(
            marker,
            "from diffusers import UNet2DConditionModel",
            "class EvilUNet(UNet2DConditionModel):\n    pass",
        )
    )
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache that transformers and diffusers read for hub ids."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    # Both libraries look the cache folder up at call time, from this module attribute.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def in_hub_cache(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` at its main revision, laid out as a download leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_REVISION)
    return repo / "snapshots" / HUB_REVISION


@pytest.fixture(autouse=True)
def fresh_model_caches():
    clear_caches()
    clear_pipeline_cache()
    yield
    clear_caches()
    clear_pipeline_cache()


def test_loaders_never_trust_remote_code(tiny_models):
    assert safe_load_kwargs(str(tiny_models["clip"]), None)["trust_remote_code"] is False
    assert safe_load_kwargs("some-org/some-model", "main")["trust_remote_code"] is False


def test_local_clip_with_auto_map_is_refused_without_running_its_code(tiny_models, tmp_path):
    marker = tmp_path / "MARKER"
    folder = clip_with_auto_map(tiny_models, tmp_path / "evil-clip", marker)
    with pytest.raises(UnsafeModelError, match="code.*is never run") as info:
        ClipEmbedder.load(str(folder), device="cpu")
    assert str(folder) in str(info.value)
    assert not marker.exists(), "the model's own code ran"


def test_hub_clip_with_auto_map_is_refused_without_running_its_code(tiny_models, tmp_path, hub_cache):
    marker = tmp_path / "MARKER"
    clip_with_auto_map(tiny_models, in_hub_cache(hub_cache, "evil-org/clip"), marker)
    with pytest.raises(UnsafeModelError, match="code.*is never run"):
        ClipEmbedder.load("evil-org/clip", device="cpu")
    assert not marker.exists(), "the model's own code ran"


def test_the_unchanged_tiny_clip_still_loads_from_a_hub_cache(tiny_models, hub_cache):
    # The hub cache fixture is a real loading path: without auto_map the same copy loads.
    shutil.copytree(tiny_models["clip"], in_hub_cache(hub_cache, "fine-org/clip"))
    assert ClipEmbedder.load("fine-org/clip", device="cpu").model_type == "clip"


@pytest.mark.parametrize("build", [img2img_with_custom_pipeline, img2img_with_custom_unet], ids=["pipeline", "component"])
def test_local_diffusion_model_with_custom_classes_is_refused_without_running_its_code(tiny_models, tmp_path, build):
    marker = tmp_path / "MARKER"
    folder = build(tiny_models, tmp_path / "evil-sd", marker)
    with pytest.raises(UnsafeModelError, match="code.*is never run") as info:
        load_pipeline("img2img", str(folder), None, "cpu")
    assert str(folder) in str(info.value)
    assert not marker.exists(), "the model's own code ran"


def test_hub_diffusion_model_with_custom_pipeline_is_refused_without_running_its_code(tiny_models, tmp_path, hub_cache):
    marker = tmp_path / "MARKER"
    img2img_with_custom_pipeline(tiny_models, in_hub_cache(hub_cache, "evil-org/sd"), marker)
    with pytest.raises(UnsafeModelError, match="code.*is never run"):
        load_pipeline("img2img", "evil-org/sd", None, "cpu")
    assert not marker.exists(), "the model's own code ran"


def test_only_custom_code_errors_become_refusals():
    assert remote_code_refusal("m", ValueError("The repository m contains custom code which must be executed")) is not None
    assert remote_code_refusal("m", ValueError("Pass `trust_remote_code=True` to allow loading remote code modules.")) is not None
    assert remote_code_refusal("m", ValueError("size mismatch for unet.conv_in.weight")) is None
