"""Model loading: the right pipeline class, dtype per device, one load per process, no pickles."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from counterfactual_lab.models.diffusion import clear_pipeline_cache, load_pipeline
from counterfactual_lab.models.devices import dtype_for, resolve_device
from counterfactual_lab.errors import UnsafeModelError, UserError


def _to_pickle(folder, component: str | None = None) -> None:
    """Replace safetensors weights with torch pickles (all components, or just one)."""
    for path in folder.rglob("*.safetensors"):
        if component is None or path.parent.name == component:
            torch.save(load_file(path), path.with_suffix(".bin"))
            path.unlink()


def test_devices_and_dtypes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert dtype_for("cpu") == torch.float32
    assert dtype_for("cuda") == torch.float16
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in {"cpu", "mps"}
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize(
    "method, cls",
    [
        ("instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline"),
        ("img2img", "StableDiffusionImg2ImgPipeline"),
        ("ledits", "LEditsPPPipelineStableDiffusion"),
    ],
)
def test_loads_each_method_once_per_process(tiny_models, method, cls):
    clear_pipeline_cache()
    pipeline = load_pipeline(method, str(tiny_models[method]), None, "cpu")
    assert type(pipeline).__name__ == cls
    assert pipeline.unet.dtype == torch.float32
    assert pipeline.device == torch.device("cpu")
    assert getattr(pipeline, "safety_checker", None) is None
    assert pipeline._progress_bar_config.get("disable") is True
    assert load_pipeline(method, str(tiny_models[method]), None, "cpu") is pipeline


def test_pickle_only_folder_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["img2img"], folder)
    _to_pickle(folder)
    with pytest.raises(UnsafeModelError, match="only pickle checkpoints"):
        load_pipeline("img2img", str(folder), None, "cpu")


def test_one_pickled_component_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "half-pickled"
    shutil.copytree(tiny_models["img2img"], folder)
    _to_pickle(folder, component="unet")
    with pytest.raises(UnsafeModelError, match="no safetensors weights"):
        load_pipeline("img2img", str(folder), None, "cpu")


def test_missing_model_and_unknown_method_name_the_problem(tmp_path, tiny_models):
    missing = str(tmp_path / "not-built")
    with pytest.raises(UserError, match="no such local folder") as info:
        load_pipeline("img2img", missing, None, "cpu")
    assert missing in str(info.value)
    with pytest.raises(UserError, match="unknown generation method 'dalle'"):
        load_pipeline("dalle", str(tiny_models["img2img"]), None, "cpu")
