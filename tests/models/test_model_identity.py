"""Model identity: sha256 of every model file, cached by stat key; hub ids by their snapshot commit."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import counterfactual_lab.storage.file_hashes as file_hashes
from counterfactual_lab.errors import UserError
from counterfactual_lab.models.identity import model_identity, weights_sha256


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CFLAB_CACHE_DIR", str(tmp_path / "hash-cache"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_hashes(monkeypatch) -> list[str]:
    read: list[str] = []
    original = file_hashes.sha256_file

    def spy(path, *args):
        read.append(str(path))
        return original(path, *args)

    monkeypatch.setattr(file_hashes, "sha256_file", spy)
    return read


def test_a_saved_model_is_every_file_it_holds(tiny_models):
    """The tiny img2img pipeline as save_pretrained wrote it: weights per component, configs beside them."""
    root = Path(tiny_models["img2img"])
    identity = model_identity(str(root))
    weights = sorted(p for p in root.rglob("*.safetensors"))
    assert identity.source == "local" and identity.path == str(root.resolve())
    assert identity.weights_sha256 == {p.relative_to(root).as_posix(): sha256(p) for p in weights}
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors"} <= set(identity.weights_sha256)
    assert identity.files_sha256["unet/config.json"] == sha256(root / "unet" / "config.json")
    assert "model_index.json" in identity.files_sha256
    every_file = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(identity.weights_sha256) | set(identity.files_sha256) == every_file
    entry = identity.manifest_entry()
    assert entry["weights_sha256"] == identity.weights_sha256 and entry["identity"] == identity.key


def test_the_key_is_the_content_wherever_and_however_the_folder_is_named(tmp_path, monkeypatch):
    model = tmp_path / "models" / "clip"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\x01" * 64)
    (model / "config.json").write_text("{}")
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("bookkeeping, not the model")
    copy = shutil.copytree(model, tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    keys = {model_identity(spelling).key for spelling in (str(model), "models/clip", "./models/../models/clip/", str(copy))}
    assert len(keys) == 1 and next(iter(keys)).startswith("sha256:")

    (copy / "config.json").write_text('{"hidden_size": 8}')  # a config change changes outputs too
    assert model_identity(str(copy)).key not in keys
    (copy / "config.json").write_text("{}")
    assert model_identity(str(copy)).key in keys
    (copy / "model.safetensors").write_bytes(b"\x02" * 64)
    assert model_identity(str(copy)).key not in keys


def test_a_rerun_reads_no_weight_file_again(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    for i in range(3):
        (model / f"part-{i}.safetensors").write_bytes(os.urandom(100_000))
    read = count_hashes(monkeypatch)
    first = model_identity(str(model))
    assert len(read) == 3
    read.clear()
    assert model_identity(str(model)) == first and read == []
    assert (Path(os.environ["CFLAB_CACHE_DIR"]) / file_hashes.CACHE_FILE_NAME).is_file()


def test_a_replaced_file_is_hashed_again_even_with_the_same_size_and_mtime(tmp_path, monkeypatch):
    """The stat key holds the inode: a file replaced by another of the same size and mtime
    (a re-download preserving timestamps) is read again."""
    model = tmp_path / "m"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    before = model_identity(str(model))
    stat = weights.stat()
    replacement = tmp_path / "new.safetensors"
    replacement.write_bytes(b"b" * 1000)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, weights)
    read = count_hashes(monkeypatch)
    after = model_identity(str(model))
    assert read == [str(weights)]
    assert after.weights_sha256["model.safetensors"] == hashlib.sha256(b"b" * 1000).hexdigest() != before.weights_sha256["model.safetensors"]


def test_an_unusable_cache_folder_still_gives_the_right_hashes(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CFLAB_CACHE_DIR", str(blocker))
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    identity = model_identity(str(model))
    assert identity.weights_sha256 == {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}
    assert "hashing without it" in caplog.text


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CFLAB_CACHE_DIR", str(tmp_path / "explicit"))
    assert file_hashes.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CFLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert file_hashes.cache_dir() == tmp_path / "xdg" / "counterfactual-lab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert file_hashes.cache_dir() == tmp_path / "home" / ".cache" / "counterfactual-lab"


# ---- hub ids: the local Hugging Face cache's snapshot ----


def fake_hub_cache(cache: Path, repo: str, commit: str, files: Path) -> Path:
    """The layout huggingface_hub writes: blobs, a snapshot of symlinks to them, refs/main."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    for path in files.rglob("*"):
        if path.is_file():
            blob = repo_dir / "blobs" / sha256(path)
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, blob)
            link = snapshot / path.relative_to(files)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_cached_hub_model_is_its_commit_and_its_snapshot_files(tmp_path, hub_cache, tiny_models):
    commit = "0123456789abcdef0123456789abcdef01234567"
    fake_hub_cache(hub_cache, "cflab/tiny-clip", commit, Path(tiny_models["clip"]))
    identity = model_identity("cflab/tiny-clip")
    local = model_identity(str(tiny_models["clip"]))
    assert identity.source == "hub" and identity.commit == commit
    assert identity.key == f"hub:cflab/tiny-clip@{commit}"
    # The snapshot's files (symlinks into blobs) hash like the folder they came from.
    assert identity.weights_sha256 == local.weights_sha256 and identity.files_sha256 == local.files_sha256
    assert model_identity("cflab/tiny-clip", revision="main").key == identity.key
    assert model_identity("cflab/tiny-clip", revision=commit).key == identity.key


def test_an_uncached_hub_model_pinned_to_a_commit_is_that_commit_and_is_hashed_once_downloaded(tmp_path, hub_cache, tiny_models):
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    identity = model_identity("cflab/not-yet", revision=commit)
    assert identity.key == f"hub:cflab/not-yet@{commit}" and identity.weights_sha256 == {}
    assert weights_sha256(identity) == identity  # still not on this machine
    fake_hub_cache(hub_cache, "cflab/not-yet", commit, Path(tiny_models["clip"]))  # the loader downloaded it
    hashed = weights_sha256(identity)
    assert hashed.key == identity.key and hashed.weights_sha256 == model_identity(str(tiny_models["clip"])).weights_sha256


def test_an_unknown_hub_model_offline_is_one_clear_error(hub_cache):
    with pytest.raises(UserError, match=r"'cflab/nowhere' \(revision main\) is not a local folder, not in the local Hugging Face cache"):
        model_identity("cflab/nowhere")


@pytest.mark.parametrize("spelling", ["./no/such/folder", "/no/such/folder", "~/no-such-cflab-model"])
def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_id(spelling):
    with pytest.raises(UserError, match="no such local folder"):
        model_identity(spelling)


def test_a_file_or_an_empty_folder_is_not_a_model(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        model_identity(str(tmp_path / "weights.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        model_identity(str(tmp_path / "empty"))
