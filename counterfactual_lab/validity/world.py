"""The planted-bias world: scenes whose protected attribute is a rendered badge stripe.

Every image is ``IMAGE_SIZE`` × ``IMAGE_SIZE`` pixels in two parts:

* the **band**, the top ``band_height`` rows (one 8-pixel patch row at 48 px): a light grey
  strip holding the **feature**, a horizontal badge stripe whose colour *is* the row's gender
  (``FEATURE_COLOURS``: female orange-red, male blue). Nothing else ever differs in the band;
* the **scene** below it: a background whose blue-versus-green tint ``tau`` (uniform in
  [-1, 1]) decides the ground-truth occupation (doctor when ``tau`` plus a little noise is
  positive, else nurse), three rectangles of random colours, and a fine checkerboard texture
  of random contrast (a "sharp photo" cue that a generator's blur removes).

Gender alternates by row (female, male, ...) and is drawn independently of the scene, so in
this world gender has no effect on anything but the stripe: any association a model shows
between gender and an occupation is the model's own.

Rows are deterministic: row ``i`` of world ``seed`` is drawn from
``numpy.random.default_rng([seed, i])``, whatever the number of rows. The dataset layout is
the sample dataset's (Hugging Face image layout; ``counterfactual_lab/demo/sample_dataset.py``):
``OUT/part-00000.parquet`` with columns id, image (struct{bytes: PNG, path}), caption,
gender, label, plus a README.md.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from counterfactual_lab.errors import UserError
from counterfactual_lab.generation.planted import ATTRIBUTE, feature_box, paint_feature

IMAGE_SIZE = 48  # the world models read 48 px images in 8 px patches (6 × 6)
PATCH_SIZE = 8
LABELS = ("doctor", "nurse")
BAND_COLOUR = (225, 225, 225)
TAU_COLOUR_SHIFT = 20.0  # grey levels of blue (+) / green (-) per unit of tint
LABEL_NOISE = 0.3  # sd of the noise added to tau before thresholding it into a label
TEXTURE_CONTRAST = (6.0, 14.0)  # checkerboard amplitude range, grey levels
SHAPES = 3

_NOUNS = {"female": ("woman", "her"), "male": ("man", "his")}
_PLACES = ("at {p} desk", "next to {p} locker", "in front of {p} window", "holding {p} notebook", "beside {p} bag")


@dataclass(frozen=True)
class WorldRow:
    """One row of the world, before it is written: the pixels and what is true of them."""

    id: str
    pixels: np.ndarray  # (IMAGE_SIZE, IMAGE_SIZE, 3) uint8
    caption: str
    gender: str
    label: str
    tau: float  # the scene tint that decided the label
    texture: float  # checkerboard amplitude (grey levels)


def world_row(seed: int, index: int, size: int = IMAGE_SIZE) -> WorldRow:
    """Row ``index`` of world ``seed`` (deterministic; independent of how many rows are drawn)."""
    rng = np.random.default_rng([seed, index])
    gender = ("female", "male")[index % 2]
    tau = float(rng.uniform(-1.0, 1.0))
    label = LABELS[0] if tau + rng.normal(0.0, LABEL_NOISE) > 0 else LABELS[1]
    level = rng.uniform(90.0, 170.0)
    background = np.array([level + rng.uniform(-15, 15), level - TAU_COLOUR_SHIFT * tau, level + TAU_COLOUR_SHIFT * tau])
    box = feature_box(size, size)
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = background
    image[: box.band_height] = BAND_COLOUR
    for _ in range(SHAPES):
        h, w = rng.integers(6, 16, size=2)
        top = rng.integers(box.band_height, size - h + 1)
        left = rng.integers(0, size - w + 1)
        image[top : top + h, left : left + w] = background + rng.uniform(-35, 35, size=3)
    texture = float(rng.uniform(*TEXTURE_CONTRAST))
    rows, cols = np.indices((size - box.band_height, size))
    image[box.band_height :] += texture * np.where((rows + box.band_height + cols) % 2 == 0, 1.0, -1.0)[..., None]
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    pixels = paint_feature(pixels, ATTRIBUTE, gender)
    noun, pronoun = _NOUNS[gender]
    place = _PLACES[int(rng.integers(len(_PLACES)))].format(p=pronoun)
    return WorldRow(
        id=f"world{seed}-{index:05d}", pixels=pixels, caption=f"a photo of a {noun} {place}",
        gender=gender, label=label, tau=tau, texture=texture,
    )


def world_rows(seed: int, rows: int, start: int = 0) -> list[WorldRow]:
    """Rows ``start .. start+rows-1`` of world ``seed``."""
    if rows < 1:
        raise UserError(f"a world needs at least 1 row, got {rows}")
    return [world_row(seed, index) for index in range(start, start + rows)]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_world(out_dir: str | Path, rows: int = 48, seed: int = 0) -> Path:
    """Write world ``seed`` with ``rows`` rows as a Parquet dataset under ``out_dir``; returns it.

    Same arguments, same bytes. The ingest reads it with the default column names (id,
    image, caption, gender, label); gender uses the default vocabulary's values.
    """
    # here, not at the top: it imports pyarrow
    import pyarrow as pa

    # here, not at the top: it imports pyarrow
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("caption", pa.string()),
            ("gender", pa.string()),
            ("label", pa.string()),
        ]
    )
    records = [
        {"id": row.id, "image": {"bytes": png_bytes(row.pixels), "path": f"{row.id}.png"},
         "caption": row.caption, "gender": row.gender, "label": row.label}
        for row in world_rows(seed, rows)
    ]
    pq.write_table(pa.Table.from_pylist(records, schema=schema), out / "part-00000.parquet", row_group_size=256)
    (out / "README.md").write_text(
        "# cflab planted-bias world\n\n"
        f"Synthetic, made by `counterfactual_lab.validity.world.write_world(rows={rows}, seed={seed})`.\n"
        "Gender is a rendered badge stripe at the top of each image (orange-red: female, blue: male);\n"
        "the occupation label follows the scene's tint. It exists to validate the audit (bench/validity.py),\n"
        "not to measure any real model.\n"
    )
    return out
