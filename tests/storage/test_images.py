"""Image decoding: every mode becomes RGB, bad bytes get a reason, bombs are never decoded."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from counterfactual_lab.storage.images import (
    REASON_DECOMPRESSION_BOMB,
    REASON_EMPTY_IMAGE,
    REASON_TRUNCATED,
    REASON_UNDECODABLE,
    ImageRejected,
    content_key,
    decode_rgb,
    looks_like_bomb,
    open_header,
    to_rgb,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (1-bit grey) and holds no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def gradient(mode: str, size=(24, 16)) -> Image.Image:
    rgb = Image.new("RGB", size)
    rgb.putdata([(x * 10 % 256, y * 15 % 256, (x + y) * 5 % 256) for y in range(size[1]) for x in range(size[0])])
    return rgb.convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("1", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("P", "GIF"),
        ("CMYK", "JPEG"),
        ("RGB", "WEBP"),
        ("RGBA", "WEBP"),
        ("L", "JPEG"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
    ],
)
def test_every_mode_decodes_to_rgb_of_the_same_size(mode, fmt):
    data = encode(gradient(mode), fmt)
    header = open_header(data)
    assert (header.width, header.height) == (24, 16)
    rgb = decode_rgb(header)
    assert rgb.mode == "RGB"
    assert rgb.size == (24, 16)


def test_cmyk_jpeg_keeps_its_colours():
    red = Image.new("RGB", (16, 16), (220, 30, 30)).convert("CMYK")
    rgb = decode_rgb(open_header(encode(red, "JPEG", quality=95)))
    r, g, b = rgb.getpixel((8, 8))
    assert r > 180 and g < 80 and b < 80


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    rgb = to_rgb(image)
    assert rgb.getpixel((4, 4)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (255, 0, 0)


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    rgb = decode_rgb(open_header(encode(image, "PNG")))
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 1)) == (10, 200, 10)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    rgb = decode_rgb(open_header(data))
    assert [rgb.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_content_key_is_sha256_of_the_original_bytes():
    data = encode(gradient("RGB"), "PNG")
    assert content_key(data) == hashlib.sha256(data).hexdigest()


def test_empty_bytes():
    with pytest.raises(ImageRejected) as info:
        open_header(b"")
    assert info.value.reason == REASON_EMPTY_IMAGE


def test_bytes_that_are_no_image():
    with pytest.raises(ImageRejected) as info:
        open_header(b"this is a caption, not a picture")
    assert info.value.reason == REASON_UNDECODABLE
    assert "not a recognised image format" in info.value.detail


def test_truncated_png():
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    with pytest.raises(ImageRejected) as info:
        decode_rgb(open_header(data[: len(data) // 2]))
    assert info.value.reason == REASON_TRUNCATED


def test_truncated_jpeg():
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    with pytest.raises(ImageRejected) as info:
        decode_rgb(open_header(data[: len(data) // 2]))
    assert info.value.reason == REASON_TRUNCATED


@pytest.mark.parametrize("side", [20_000, 10_000])  # over 2x Pillow's limit (error) and between 1x and 2x (warning)
def test_decompression_bomb_is_rejected_from_the_header(side):
    data = png_header_only(side, side)
    assert len(data) < 100
    with pytest.raises(ImageRejected) as info:
        open_header(data)
    assert info.value.reason == REASON_DECOMPRESSION_BOMB


def test_bomb_ratio():
    assert looks_like_bomb(pixels=100_000_000, n_bytes=2_000)
    assert not looks_like_bomb(pixels=12_000_000, n_bytes=3_000_000)  # a 12 MP photo


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on corrupt TIFF tags: expected here
def test_mutated_images_decode_to_rgb_or_are_rejected_with_a_reason():
    """Seeded fuzz of the two decoding steps on real files with random damage (bit flips,
    cut tails, spliced noise, overwritten headers) in every format above: each either decodes
    to RGB of its header's size or raises ImageRejected with a known reason, never anything else."""
    import random
    import time

    rng = random.Random(7)
    reasons = {REASON_UNDECODABLE, REASON_TRUNCATED, REASON_EMPTY_IMAGE, REASON_DECOMPRESSION_BOMB}
    sources = [
        encode(gradient(mode), fmt)
        for mode, fmt in [("RGB", "PNG"), ("P", "GIF"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "WEBP"),
                          ("RGB", "TIFF"), ("RGB", "BMP"), ("LA", "PNG")]
    ]

    def damage(data: bytes) -> bytes:
        data = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:  # flip a few bits anywhere, the header included
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # cut the tail
            del data[rng.randint(0, len(data) - 1):]
        elif kind == 2:  # splice noise into the middle
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        else:  # overwrite a run of header bytes
            at = rng.randrange(min(64, len(data)))
            data[at : at + 4] = rng.randbytes(4)
        return bytes(data)

    outcomes = {"decoded": 0, "rejected": 0}
    started = time.monotonic()
    for _ in range(1500):
        data = damage(rng.choice(sources))
        try:
            header = open_header(data)
            if header.pixels > 64 * 64:  # as ingest does: over the pixel limit is never decoded
                outcomes["rejected"] += 1
                continue
            rgb = decode_rgb(header)
        except ImageRejected as rejected:
            assert rejected.reason in reasons and rejected.detail and "\n" not in rejected.detail
            outcomes["rejected"] += 1
            continue
        assert rgb.mode == "RGB" and rgb.size == (header.width, header.height)
        outcomes["decoded"] += 1
    assert outcomes["decoded"] > 20 and outcomes["rejected"] > 20, outcomes  # both paths exercised
    assert time.monotonic() - started < 30
