"""ClipEmbedder on the tiny CLIP (and a tiny SigLIP): loading, caching, agreement with the model's own forward."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactual_lab.models.clip import ClipEmbedder, embedding_cache, image_content_key, is_remote_uri, loader_threads
from counterfactual_lab.errors import UnsafeModelError, UserError


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip(tiny_models) -> ClipEmbedder:
    return ClipEmbedder.load(str(tiny_models["clip"]), device="cpu")


def test_load_is_once_per_process(clip, tiny_models):
    assert ClipEmbedder.load(str(tiny_models["clip"]), device="cpu") is clip
    assert clip.device == "cpu" and clip.model.dtype == torch.float32 and not clip.is_sigmoid


def test_embeddings_are_normalised_and_batch_size_does_not_change_them(clip):
    images = _images(5, seed=1)
    keys = [f"batch-test-{i}" for i in range(5)]
    one = clip.embed_images(images, keys=keys, batch_size=2)
    assert one.shape == (5, clip.dimension)
    assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    embedding_cache().clear()
    again = clip.embed_images(images, keys=keys, batch_size=5)
    np.testing.assert_allclose(one, again, atol=1e-5)


def test_zero_shot_equals_the_model_forward(clip):
    """Our cached-embedding softmax is CLIP's own logits_per_image softmax."""
    images = _images(3, seed=2)
    labels = ["a photo of a doctor", "a photo of a nurse", "a photo of a pilot"]
    probabilities = clip.zero_shot(clip.embed_images(images), clip.embed_texts(labels))
    inputs = clip.processor(text=labels, images=images, return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = clip.model(**inputs).logits_per_image.softmax(dim=-1).numpy()
    np.testing.assert_allclose(probabilities, reference, atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)


def test_image_cache_skips_the_model_and_loader(clip):
    images = _images(4, seed=3)
    first = clip.embed_images(images)  # keyed by pixel hash
    loads = []

    def load(uri):
        loads.append(uri)
        return images[int(uri)]

    keys = [image_content_key(im) for im in images]
    hits_before = embedding_cache().hits
    again = clip.embed_image_uris(["0", "1", "2", "3"], keys, load)
    assert loads == []  # every key was cached: nothing loaded, nothing embedded
    assert embedding_cache().hits - hits_before == 4
    np.testing.assert_array_equal(first, again)


def test_embed_image_uris_loads_each_missing_key_once(clip):
    images = _images(3, seed=4)
    loads = []

    def load(uri):
        loads.append(uri)
        return images[int(uri)]

    out = clip.embed_image_uris(["0", "1", "0", "2"], ["u0", "u1", "u0", "u2"], load, batch_size=2)
    assert sorted(loads) == ["0", "1", "2"]
    np.testing.assert_array_equal(out[0], out[2])


@pytest.mark.parametrize(
    ("uris", "device", "cores", "model_threads", "expected"),
    [
        (["/data/a.png"], "cpu", 2, 2, 0),  # the bench machine: both cores run the model, load in line
        (["file:///data/a.png"], "cpu", 16, 16, 0),  # torch's default: a thread per core
        (["/data/a.png"], "cpu", 16, 8, 4),  # spare cores: up to load_workers loader threads
        (["/data/a.png"], "cuda", 16, 1, 4),  # an accelerator: overlap decoding with the GPU
        (["/data/a.png"], "cuda", 2, 1, 1),
        (["/data/a.png", "s3://bucket/b.png"], "cpu", 2, 2, 4),  # remote: the threads wait on the network
    ],
)
def test_loader_threads_only_use_cores_the_model_leaves_free(uris, device, cores, model_threads, expected):
    assert loader_threads(uris, device, 4, cores=cores, model_threads=model_threads) == expected


def test_images_load_in_the_calling_thread_without_spare_cores_and_on_threads_otherwise(clip, monkeypatch):
    """Same embeddings either way; only where the loads run differs."""
    import counterfactual_lab.models.clip as embeddings

    images = _images(5, seed=6)
    threads: dict[str, set[int]] = {}

    def load(uri):
        threads.setdefault(uri.split("/")[1], set()).add(threading.get_ident())
        return images[int(uri.rsplit("/", 1)[-1])]

    monkeypatch.setattr(embeddings, "usable_cores", lambda: torch.get_num_threads())  # no core to spare
    inline = clip.embed_image_uris([f"/busy/{i}" for i in range(5)], [f"b{i}" for i in range(5)], load, batch_size=2)
    monkeypatch.setattr(embeddings, "usable_cores", lambda: torch.get_num_threads() + 2)
    threaded = clip.embed_image_uris([f"/spare/{i}" for i in range(5)], [f"s{i}" for i in range(5)], load, batch_size=2)
    assert threads["busy"] == {threading.get_ident()}
    assert threads["spare"] and threading.get_ident() not in threads["spare"]
    np.testing.assert_array_equal(inline, threaded)
    assert [is_remote_uri(u) for u in ("s3://b/k", "https://h/x.png", "file:///x.png", "/x.png", "x.png")] == [
        True, True, False, False, False,
    ]


def test_text_cache(clip):
    a = clip.embed_texts(["a photo of a doctor", "a photo of a nurse"])
    b = clip.embed_texts(["a photo of a nurse"])
    np.testing.assert_array_equal(a[1], b[0])


def test_pickle_only_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeModelError, match="pickle"):
        ClipEmbedder.load(str(tmp_path), device="cpu")


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load"):
        ClipEmbedder.load(str(tmp_path / "nowhere"), device="cpu")


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    """A tiny random SigLIP. SigLIP's own tokenizer needs a sentencepiece model (not buildable
    offline here), so the processor pairs SigLIP's image processor with the tiny CLIP tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTextConfig, SiglipVisionConfig

    from counterfactual_lab.demo.tiny_parts import build_tiny_tokenizer

    directory = tmp_path_factory.mktemp("tiny-siglip")
    tokenizer = build_tiny_tokenizer(directory)
    text = SiglipTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())).save_pretrained(directory)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_siglip_uses_its_sigmoid(tiny_siglip):
    siglip = ClipEmbedder.load(str(tiny_siglip), device="cpu")
    assert siglip.is_sigmoid
    images = _images(2, seed=5)
    labels = ["a photo of a doctor", "a photo of a nurse"]
    probabilities = siglip.zero_shot(siglip.embed_images(images), siglip.embed_texts(labels))
    text = siglip.processor.tokenizer(labels, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    pixels = siglip.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        logits = siglip.model(input_ids=text["input_ids"], pixel_values=pixels).logits_per_image
    np.testing.assert_allclose(probabilities, torch.sigmoid(logits).numpy(), atol=1e-4)


def test_the_cache_grows_to_a_run_never_shrinks_and_is_capped():
    from counterfactual_lab.models.clip import (
        MAX_RESERVED_CACHE_ENTRIES,
        embedding_cache,
        reserve_embedding_cache,
        set_embedding_cache_size,
    )

    before = embedding_cache().max_entries
    try:
        set_embedding_cache_size(1000)
        assert reserve_embedding_cache(10) == 1000, "a small run leaves a larger cache as it is"
        assert reserve_embedding_cache(250_000) == 250_000
        assert reserve_embedding_cache(10**9) == MAX_RESERVED_CACHE_ENTRIES
    finally:
        set_embedding_cache_size(before)
