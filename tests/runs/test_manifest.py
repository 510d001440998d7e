"""What the manifest records to reproduce a run: runtime, versions, metric parameters; and
how a manifest is turned back into a config and checked against this machine."""

from __future__ import annotations

import copy
import hashlib
from importlib import metadata
from pathlib import Path

import pytest

from counterfactual_lab.runs.location import locate_run

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.errors import UserError
from counterfactual_lab.runs.manifest import library_versions, metric_parameters
from counterfactual_lab.runs.reproduce import config_from_manifest, reproduction_differences
from counterfactual_lab.models.runtime_record import runtime_section
from counterfactual_lab.demo.sample_dataset import write_sample_dataset


def test_runtime_reports_the_device_and_dtype_the_loaders_used(tiny_models):
    """Both loaders report what they resolved; a model no loader touched in this process is
    reported from the device rule and says it was not observed."""
    from counterfactual_lab.models.diffusion import load_pipeline
    from counterfactual_lab.models.clip import ClipEmbedder

    clip, img2img = (str(tiny_models[k]) for k in ("clip", "img2img"))
    never_loaded = str(Path(tiny_models["clip"]).parent / "never-loaded-in-this-process")
    embedder = ClipEmbedder.load(clip, device="cpu")
    pipeline = load_pipeline("img2img", img2img, device="cpu")
    section = runtime_section({"judge": (clip, None), "generator": (img2img, None), "other": (never_loaded, None)}, "cpu")
    assert (section["device"], section["dtype"]) == ("cpu", "float32")
    assert section["models"]["judge"] == {"device": "cpu", "dtype": str(embedder._dtype).removeprefix("torch."), "observed": True}
    assert section["models"]["generator"] == {"device": "cpu", "dtype": str(pipeline.dtype).removeprefix("torch."), "observed": True}
    assert section["models"]["other"] == {"device": "cpu", "dtype": "float32", "observed": False}
    assert section["device_preference"] == "cpu" and "torch_cuda" in section


def test_a_model_recorded_in_another_dtype_is_reported_as_loaded():
    """The section reports the loader's record, not the rule: a model held in bfloat16 says so."""
    from counterfactual_lab.models.runtime_record import record_model_load

    record_model_load("/models/held-in-bf16", None, "cpu", "torch.bfloat16")
    section = runtime_section({"audit": ("/models/held-in-bf16", None), "judge": ("/models/not-loaded", None)}, "cpu")
    assert section["models"]["audit"] == {"device": "cpu", "dtype": "bfloat16", "observed": True}
    assert section["dtype"] == "bfloat16, float32"  # roles disagree: both are named


def test_versions_name_every_package_that_changes_numbers():
    versions = library_versions()
    for dist in ("scipy", "pandas", "numpy", "torch", "transformers", "diffusers", "tokenizers", "huggingface-hub",
                 "polars", "pillow", "great-expectations"):
        assert versions[dist] == metadata.version(dist), dist
    # Installed here (the test extra) but imported only by tests: a run's numbers do not depend on them.
    assert "fairlearn" not in versions and "scikit-learn" not in versions


def test_metric_parameters_follow_the_config():
    audit = AuditConfig.parse_config({
        "dataset": {"uri": "/d"},
        "audit": {"bootstrap_samples": 321, "confidence": 0.8, "top_k": 7, "labels": ["a", "b"], "queries": ["q"]},
    }).audit
    parameters = metric_parameters(audit)
    assert parameters["bootstrap_seed"] == 0  # audit.bootstrap_seed, default 0
    assert (parameters["bootstrap_samples"], parameters["confidence"], parameters["top_k"]) == (321, 0.8, 7)
    assert parameters["labels"] == ["a", "b"] and parameters["queries"] == ["q"]


# ---- from a manifest back to a run ----


def _fake_model(folder: Path, weights: bytes) -> str:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return str(folder)


@pytest.fixture
def manifest(tmp_path, monkeypatch) -> dict:
    """A manifest as publish_run builds it, for a config with relative paths run from ``tmp_path``."""
    from counterfactual_lab.report.publish import manifest_models
    from counterfactual_lab.runs.manifest import config_block

    monkeypatch.setenv("CFLAB_CACHE_DIR", str(tmp_path / "cache"))
    write_sample_dataset(tmp_path / "data", rows=4)
    _fake_model(tmp_path / "models" / "gen", b"gen")
    _fake_model(tmp_path / "models" / "clip", b"clip")
    monkeypatch.chdir(tmp_path)
    config = AuditConfig.parse_config({
        "dataset": {"name": "sample", "uri": "data", "limits": {"max_pixels": 5000}},
        "generation": {"model": "models/gen", "steps": 3},
        "judge": {"model": "models/clip"}, "audit": {"model": "./models/clip", "bootstrap_samples": 77},
        "output": {"uri": "out"}, "runtime": {"device": "cpu"},
    })
    location = locate_run(config)
    return {
        "run_id": location.run_id,
        "config": config_block(config),
        "dataset": {"name": location.spec.name, "uri": str(tmp_path / "data"), "fingerprint": location.dataset_fingerprint},
        "models": manifest_models(config, location),
        "runtime": {"device": "cpu", "dtype": "float32"},
        "run_identity": location.identity,
        "versions": library_versions(),
    }


def test_the_config_rebuilt_from_a_manifest_is_the_same_run(manifest, tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # the rebuilt config must not depend on the directory it is run from
    config = config_from_manifest(manifest, output_uri=str(tmp_path / "rerun"))
    assert config.generation.model == str(tmp_path / "models" / "gen")
    assert (config.generation.steps, config.audit.bootstrap_samples, config.runtime.device) == (3, 77, "cpu")
    assert config.output.uri == str(tmp_path / "rerun")
    assert config.dataset_spec().limits.max_pixels == 5000
    assert locate_run(config).run_id == manifest["run_id"]
    assert reproduction_differences(manifest, model_roots=[tmp_path / "models"]) == []


def test_differences_name_the_model_file_the_package_and_the_data_that_changed(manifest, tmp_path):
    (tmp_path / "models" / "clip" / "model.safetensors").write_bytes(b"retrained")
    changed = copy.deepcopy(manifest)
    changed["versions"]["scipy"] = "0.0.1"
    (tmp_path / "data" / "part-00000.parquet").write_bytes(
        (write_sample_dataset(tmp_path / "other", rows=4, seed=5) / "part-00000.parquet").read_bytes()
    )
    problems = reproduction_differences(changed, model_roots=[tmp_path / "models"])
    assert f"models.audit: model.safetensors has other bytes ({tmp_path / 'models' / 'clip'})" in problems
    assert f"models.judge: model.safetensors has other bytes ({tmp_path / 'models' / 'clip'})" in problems
    assert f"versions.scipy: the run used 0.0.1, here {metadata.version('scipy')}" in problems
    assert f"dataset.fingerprint: {tmp_path / 'data'} has other content than the run audited" in problems
    assert len(problems) == 4


def test_a_manifest_without_the_reproduction_sections_is_refused(manifest, tmp_path):
    old = {k: v for k, v in manifest.items() if k != "run_identity"}
    with pytest.raises(UserError, match="no 'run_identity' section"):
        config_from_manifest(old, output_uri=str(tmp_path / "x"))


def test_the_recorded_hashes_are_the_files_sha256(manifest, tmp_path):
    weights = manifest["models"]["generator"]["weights_sha256"]
    assert weights == {"model.safetensors": hashlib.sha256(b"gen").hexdigest()}
    assert manifest["models"]["generator"]["method"] == "img2img"


def test_reproduce_hashes_no_folder_outside_the_model_roots_nor_one_over_the_size_limit(manifest, tmp_path, monkeypatch):
    """Issue 17: a manifest naming /usr as a model folder made reproduce hash all of it (36 s)."""
    import time

    import counterfactual_lab.runs.reproduce as reproduce

    hashed = []
    original = reproduce.model_identity
    monkeypatch.setattr(reproduce, "model_identity", lambda where, *a, **k: hashed.append(where) or original(where, *a, **k))
    hostile = copy.deepcopy(manifest)
    hostile["models"]["generator"] = {**hostile["models"]["generator"], "source": "local", "path": "/usr", "model": "/usr"}
    started = time.monotonic()
    problems = reproduction_differences(hostile, model_roots=[tmp_path / "models"])
    assert time.monotonic() - started < 5
    assert [p for p in problems if p.startswith("models.generator: /usr is not under the model roots")]
    assert "/usr" not in hashed
    hashed.clear()
    monkeypatch.setenv("CFLAB_MODEL_ROOTS", str(tmp_path / "models"))  # the default roots read it
    problems = reproduction_differences(manifest, max_model_bytes=4)  # each fake model holds 5 or 6 bytes
    assert all("holds more than 4 bytes; not hashed" in p for p in problems if p.startswith("models."))
    assert len([p for p in problems if p.startswith("models.")]) == len(manifest["models"])
    assert hashed == []  # nothing was hashed
