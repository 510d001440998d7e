"""The drift reader's decoded images: a bounded cache, so a 10^5-item run does not hold every
image's pixels (7.9 GB at 10^5 work items before), and the same pixels whether cached or read again."""

from __future__ import annotations

import numpy as np
from PIL import Image

from counterfactual_lab.judge.drift import _Images


def test_the_drift_reader_keeps_at_most_its_capacity_of_images_and_reads_an_evicted_one_again():
    loads: list[str] = []

    def load(uri: str) -> Image.Image:
        loads.append(uri)
        shade = int(uri.rsplit("-", 1)[1]) * 40
        return Image.new("RGB", (4, 3), (shade, 255 - shade, 7))

    images = _Images(load, capacity=2)
    rows = [{"content_key": f"k{i}", "image_uri": f"img-{i}"} for i in range(5)]
    first = [images.of(row).copy() for row in rows]
    assert len(images.pixels) == 2 and list(images.pixels) == ["k3", "k4"]
    assert images.of(rows[4]) is images.pixels["k4"] and loads.count("img-4") == 1  # a cached one is not read again
    again = images.of(rows[0])  # evicted: read again, same pixels
    assert loads.count("img-0") == 2 and np.array_equal(again, first[0])
    assert first[1][0, 0, 0] == 40 / 255 and first[0].shape == (3, 4, 3)
