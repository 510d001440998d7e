"""Datasets written to disk for tests, in each layout the input contract allows."""

from __future__ import annotations

from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
from counterfactual_lab.demo.sample_dataset import write_sample_dataset


def path_dataset(root: Path, rows: int = 4, layout: str = "string") -> Path:
    """The sample's rows with their images as files under ``root/images`` referenced by path.

    ``layout``: ``string`` (an image column of relative paths) or ``struct`` (the Hugging Face
    struct with null bytes and a path).
    """
    sample = pq.read_table(next(write_sample_dataset(root.parent / f"{root.name}-src", rows=rows).glob("*.parquet")))
    (root / "images").mkdir(parents=True)
    paths = []
    for row in sample.to_pylist():
        path = f"images/{row['id']}.png"
        (root / path).write_bytes(row["image"]["bytes"])
        paths.append(path)
    if layout == "string":
        image = pa.array(paths, pa.string())
    else:
        image = pa.array([{"bytes": None, "path": p} for p in paths], sample.schema.field("image").type)
    pq.write_table(sample.set_column(sample.schema.get_field_index("image"), "image", image), root / "part-0.parquet")
    return root
