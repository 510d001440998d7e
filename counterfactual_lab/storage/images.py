"""Image bytes -> checked RGB image: content keys, safe header checks, decoding, mode conversion.

Decoding happens in two steps so a hostile file costs nothing:

1. :func:`open_header` parses only the header (format and claimed size). Pillow's
   decompression-bomb guard fires here, and the caller rejects a claimed size above its
   pixel limit, so a small file claiming hundreds of millions of pixels is never decoded.
2. :func:`decode_rgb` decodes the pixels and converts every mode to RGB. It releases the
   GIL inside Pillow, so callers may run it in a thread pool.

Each failure carries a reason (the constants below) and a human-readable detail.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

REASON_UNDECODABLE = "undecodable_image"
REASON_EMPTY_IMAGE = "empty_image"
REASON_TRUNCATED = "truncated_image"
REASON_DECOMPRESSION_BOMB = "decompression_bomb"

# A claimed pixel count this many times the file's byte count is not a photograph: real
# images compress to well under 100 pixels per byte, bombs to thousands.
BOMB_PIXELS_PER_BYTE = 1000


class ImageRejected(Exception):
    """An image that cannot be used; ``reason`` is one of the REASON_* constants."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    """What the header claims, before any pixel is decoded."""

    image: Image.Image  # lazily loaded: pixels are decoded by decode_rgb
    format: str | None
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def content_key(data: bytes) -> str:
    """sha256 hex digest of the image's original bytes: the image's identity everywhere."""
    return hashlib.sha256(data).hexdigest()


def looks_like_bomb(pixels: int, n_bytes: int) -> bool:
    """True when a file claims far more pixels than its size can plausibly hold."""
    return pixels > BOMB_PIXELS_PER_BYTE * max(n_bytes, 1)


def open_header(data: bytes) -> ImageHeader:
    """Parse the header of ``data`` without decoding pixels.

    Raises :class:`ImageRejected` for empty bytes, unknown formats and decompression bombs
    (Pillow's own guard, whether it raises or warns). Call it from one thread at a time:
    it turns Pillow's bomb warning into an error with ``warnings.catch_warnings``, which is
    process-global state.
    """
    if not data:
        raise ImageRejected(REASON_EMPTY_IMAGE, "image has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(REASON_DECOMPRESSION_BOMB, f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected(
            REASON_UNDECODABLE, f"not a recognised image format ({len(data)} bytes, starts {data[:8]!r})"
        ) from None
    except Exception as exc:  # Pillow plugins raise many types on corrupt headers
        raise ImageRejected(REASON_UNDECODABLE, f"corrupt image header: {_describe(exc)}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected(REASON_UNDECODABLE, f"image claims an empty size {width}x{height}")
    return ImageHeader(image=image, format=image.format, width=width, height=height)


def decode_rgb(header: ImageHeader) -> Image.Image:
    """Decode the pixels and return an RGB image of the header's size.

    Raises :class:`ImageRejected` (truncated or undecodable) instead of Pillow's errors.
    """
    image = header.image
    try:
        image.load()
    except Exception as exc:
        text = _describe(exc)
        truncated = "truncated" in text.lower() or isinstance(exc, EOFError)
        reason = REASON_TRUNCATED if truncated else REASON_UNDECODABLE
        raise ImageRejected(reason, f"{header.format or 'image'} data cannot be decoded: {text}") from None
    try:
        return to_rgb(image)
    except Exception as exc:
        raise ImageRejected(
            REASON_UNDECODABLE, f"cannot convert {header.format} mode {image.mode} to RGB: {_describe(exc)}"
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB.

    Transparency is composited on white (what a viewer shows), 16/32-bit and float greys
    are scaled to 8 bits instead of clipped, and CMYK goes through Pillow's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if (mode == "P" and "transparency" in image.info) or mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _grey_to_rgb(image)
    return image.convert("RGB")


def _grey_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F":
        top = float(values.max()) if values.size and values.max() > 1.0 else 1.0
    else:  # "I": 16-bit PNGs load as I; treat values above 255 as 16-bit
        top = 65535.0 if values.size and values.max() > 255 else 255.0
    scaled = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
