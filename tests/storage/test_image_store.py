"""The image store at scale: asking whether a few images are stored costs a few lookups, whatever the store holds."""

from __future__ import annotations

import numpy as np
from PIL import Image

from counterfactual_lab.storage.files import LISTING_THRESHOLD, ImageStore


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def _forbid_listing(monkeypatch, filesystem_class) -> None:
    def no_listing(*args, **kwargs):
        raise AssertionError("existing() listed the whole image folder for a few keys")

    monkeypatch.setattr(filesystem_class, "ls", no_listing)


def test_existing_locally_looks_up_each_key_and_never_lists_the_store(tmp_path, monkeypatch):
    """A generation batch asks about its own keys in a store holding every image of every run:
    a listing per batch made generation quadratic in the number of work items."""
    from fsspec.implementations.local import LocalFileSystem

    store = ImageStore(str(tmp_path))
    stored = [f"{i:064x}" for i in range(5)]
    for i, key in enumerate(stored):
        store.put_png(key, _image(i))
    (tmp_path / "images" / f"{'f' * 64}.png").mkdir()  # a folder is not a stored image
    _forbid_listing(monkeypatch, LocalFileSystem)
    asked = [stored[0], stored[3], "0" * 63 + "9", "f" * 64, stored[0]]
    assert store.existing(asked) == {stored[0], stored[3]}
    assert store.existing([]) == set()
    assert ImageStore(str(tmp_path / "nothing-here")).existing(stored) == set()


def test_existing_on_s3_looks_up_a_batch_and_lists_for_many_keys(s3_bucket, monkeypatch):
    import s3fs

    store = ImageStore(f"s3://{s3_bucket}/out")
    stored = [f"{i:064x}" for i in range(3)]
    for i, key in enumerate(stored):
        store.put_png(key, _image(i))
    missing = [f"{i:064x}" for i in range(100, 100 + LISTING_THRESHOLD)]
    # Many keys (the flow's check of every cached key): one listing.
    assert store.existing(stored + missing) == set(stored)
    # A batch's few keys: one lookup each, no listing of a bucket prefix that holds every image.
    with monkeypatch.context() as patch:
        _forbid_listing(patch, s3fs.S3FileSystem)
        assert store.existing([stored[1], missing[0], stored[2]]) == {stored[1], stored[2]}
