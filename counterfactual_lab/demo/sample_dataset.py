"""A small synthetic image-text dataset in the Hugging Face image layout, deterministic for a seed.

Each row shows a simple drawn figure (head, body, a prop for the occupation) and a caption
that names the person with words the text rewriter can swap ("a photo of an elderly Asian
man in a white coat holding his stethoscope"). The gender, age and race columns agree with
the caption and use the default vocabularies; ``label`` is the occupation.

Layout: ``OUT/part-00000.parquet`` (more parts with ``files > 1``) with columns id, image
(struct{bytes: PNG, path}), caption, gender, age, race, label; plus a README.md, as on the hub.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from counterfactual_lab.config.dataset_spec import DEFAULT_VOCABULARIES
from counterfactual_lab.errors import UserError

LABELS = ["doctor", "nurse", "teacher", "engineer"]

# Occupation scene: (caption tail with {pronoun}, background colour, prop colour).
_SCENES: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int]]] = {
    "doctor": ("in a white coat holding {pronoun} stethoscope", (200, 225, 240), (245, 245, 245)),
    "nurse": ("in blue scrubs checking on {pronoun} patient", (215, 240, 220), (70, 130, 200)),
    "teacher": ("writing on a blackboard in front of {pronoun} class", (235, 225, 200), (40, 70, 50)),
    "engineer": ("wearing a hard hat and reading {pronoun} blueprints", (225, 225, 230), (250, 200, 30)),
}
_GENDERS = {"male": ("man", "his"), "female": ("woman", "her")}
# Ages named in captions; "child" is left out because the occupations are adult ones.
_AGES = {"young": "young", "middle-aged": "middle-aged", "elderly": "elderly"}
_SKIN = {
    "Asian": (224, 187, 148),
    "Black": (105, 70, 45),
    "Indian": (170, 120, 85),
    "Latino": (198, 145, 105),
    "Middle Eastern": (190, 140, 100),
    "White": (240, 205, 180),
}
_COLUMNS = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("caption", pa.string()),
        ("gender", pa.string()),
        ("age", pa.string()),
        ("race", pa.string()),
        ("label", pa.string()),
    ]
)


def write_sample_dataset(
    out_dir: str | Path, rows: int = 24, seed: int = 0, image_size: int = 64, files: int = 1
) -> Path:
    """Write the sample dataset under ``out_dir`` and return ``out_dir``.

    Same arguments, same bytes: every random choice comes from ``random.Random(seed)``.
    """
    if rows < 1:
        raise UserError(f"rows must be at least 1, got {rows}")
    if files < 1 or files > rows:
        raise UserError(f"files must be between 1 and rows ({rows}), got {files}")
    if image_size < 16:
        raise UserError(f"image_size must be at least 16 pixels, got {image_size}")
    _check_vocabularies()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = [_record(i, rng, image_size) for i in range(rows)]
    per_file = -(-rows // files)
    for part in range(files):
        chunk = records[part * per_file : (part + 1) * per_file]
        table = pa.Table.from_pylist(chunk, schema=_COLUMNS)
        pq.write_table(table, out / f"part-{part:05d}.parquet", row_group_size=256)
    (out / "README.md").write_text(_readme(rows, seed, image_size, files))
    return out


def sample_caption(gender: str, age: str, race: str, label: str) -> str:
    """The caption of a row with these attributes ("a photo of a young Black woman in ...")."""
    noun, pronoun = _GENDERS[gender]
    words = f"{_AGES[age]} {race} {noun}"
    article = "an" if words[0].lower() in "aeiou" else "a"
    scene = _SCENES[label][0].format(pronoun=pronoun)
    return f"a photo of {article} {words} {scene}"


def _record(index: int, rng: random.Random, size: int) -> dict:
    label = LABELS[index % len(LABELS)]
    gender = rng.choice(sorted(_GENDERS))
    age = rng.choice(list(_AGES))
    race = rng.choice(list(_SKIN))
    row_id = f"sample-{index:05d}"
    png = _draw(rng, size, label, gender, age, race)
    return {
        "id": row_id,
        "image": {"bytes": png, "path": f"{row_id}.png"},
        "caption": sample_caption(gender, age, race, label),
        "gender": gender,
        "age": age,
        "race": race,
        "label": label,
    }


def _draw(rng: random.Random, size: int, label: str, gender: str, age: str, race: str) -> bytes:
    _, background, prop = _SCENES[label]
    image = Image.new("RGB", (size, size), _jitter(rng, background))
    draw = ImageDraw.Draw(image)
    s = size / 64  # drawing coordinates are for 64 px and scale with the size
    # A few background shapes so no two images are alike.
    for _ in range(3):
        x, y = rng.uniform(0, 56) * s, rng.uniform(0, 20) * s
        draw.rectangle([x, y, x + 8 * s, y + 6 * s], fill=_jitter(rng, background, 40))
    skin = _SKIN[race]
    hair = (210, 210, 210) if age == "elderly" else (60, 40, 25)
    cx = rng.uniform(26, 38) * s
    draw.ellipse([cx - 8 * s, 14 * s, cx + 8 * s, 30 * s], fill=skin)  # head
    if gender == "female":  # long hair
        draw.rectangle([cx - 9 * s, 14 * s, cx + 9 * s, 18 * s], fill=hair)
        draw.rectangle([cx - 10 * s, 16 * s, cx - 7 * s, 32 * s], fill=hair)
        draw.rectangle([cx + 7 * s, 16 * s, cx + 10 * s, 32 * s], fill=hair)
    else:
        draw.rectangle([cx - 8 * s, 13 * s, cx + 8 * s, 17 * s], fill=hair)
    draw.rectangle([cx - 12 * s, 31 * s, cx + 12 * s, 60 * s], fill=prop)  # body, in work clothes
    draw.rectangle([cx - 3 * s, 31 * s, cx + 3 * s, 36 * s], fill=skin)  # neck
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jitter(rng: random.Random, colour: tuple[int, int, int], amount: int = 15) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _check_vocabularies() -> None:
    """The sample must stay inside the default vocabularies it claims to use."""
    for attribute, values in (("gender", _GENDERS), ("age", _AGES), ("race", _SKIN)):
        unknown = set(values) - set(DEFAULT_VOCABULARIES[attribute])
        if unknown:
            raise AssertionError(f"sample {attribute} values {sorted(unknown)} are not in the default vocabulary")


def _readme(rows: int, seed: int, image_size: int, files: int) -> str:
    return (
        "# cflab sample dataset\n\n"
        f"Synthetic, made by `cflab sample-dataset --rows {rows} --seed {seed} --image-size {image_size}`"
        f" ({files} Parquet file(s)).\n"
        "Columns: id, image (struct of PNG bytes and path), caption, gender, age, race, label.\n"
        "The drawings are simple figures, not photographs; use them to try the pipeline, not to measure bias.\n"
    )
