"""Mask-guided inpainting: masks from a column (images, polygons) or CLIPSeg, pixels outside the mask
kept exactly, and an empty mask as a per-item failure; end to end through the audit flow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from counterfactual_lab.config.audit_config import GenerationSection
from counterfactual_lab.errors import UserError
from counterfactual_lab.generation.inpaint import InpaintEditor
from counterfactual_lab.plan.masks import (
    attach_masks,
    binary_mask,
    column_masks,
    polygon_mask,
    segmentation_key,
    segmentation_masks,
)
from counterfactual_lab.config.methods import check_mask_spec
from counterfactual_lab.plan.work_items import WorkItem
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.ingest.validation import ingest_and_validate

SIZE = (45, 37)  # deliberately not a multiple of 8: the output is composited back at this size


def photo(seed: int, size=SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_outside_is_source(output: Image.Image, source: Image.Image, mask: Image.Image) -> None:
    out, src = np.asarray(output.convert("RGB"), int), np.asarray(source.convert("RGB"), int)
    inside = np.asarray(mask.convert("L")) > 127
    assert out.shape == src.shape
    assert np.abs(out - src)[~inside].max() == 0  # not a grey level off outside the mask
    assert np.abs(out - src)[inside].max() > 0  # and the inside was repainted


# ---- mask specs and formats ----


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (None, "mask is required"),
        ({"column": "m", "segment": "person"}, "exactly one of 'column' and 'segment'"),
        ({"segment": "person"}, "mask.model must name the CLIPSeg model"),
        ({"segment": "person", "model": "m", "threshold": 1.0}, r"threshold must be a probability in \[0, 1\)"),
        ({"segment": "person", "model": "m", "dilation": -1}, "dilation must be whole pixels"),
        ({"segment": "person", "model": "m", "treshold": 0.5}, "did you mean 'threshold'"),
        ({"column": ""}, "must name a dataset column"),
    ],
)
def test_bad_mask_specs_name_the_key(mask, message):
    with pytest.raises(UserError, match=message):
        check_mask_spec(mask)
    assert check_mask_spec({"segment": "face", "model": "m"}) == {"segment": "face", "model": "m", "threshold": 0.4, "dilation": 0}


def test_polygons_one_or_several_are_filled_in_pixel_coordinates():
    one = np.asarray(polygon_mask([[0, 0], [9, 0], [9, 9], [0, 9]], (20, 10)))
    assert one[5, 5] == 255 and one[5, 15] == 0 and set(np.unique(one)) == {0, 255}
    two = np.asarray(polygon_mask([[[0, 0], [3, 0], [3, 3]], [[15, 5], [19, 5], [19, 9]]], (20, 10)))
    assert two[1, 2] == 255 and two[8, 18] == 255 and two[8, 2] == 0
    with pytest.raises(ValueError, match="at least 3 points"):
        polygon_mask([[0, 0], [5, 5]], (20, 10))
    with pytest.raises(ValueError, match=r"list of \[x, y\] points"):
        polygon_mask([[0, 0, 1], [5, 5, 1], [1, 1, 1]], (20, 10))


def test_mask_images_use_alpha_when_present_and_take_the_source_size():
    rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 5, 10))  # opaque black on the left: the alpha channel decides
    mask = np.asarray(binary_mask(rgba, (20, 20)))
    assert mask.shape == (20, 20) and mask[:, :10].min() == 255 and mask[:, 10:].max() == 0


# ---- masks from a dataset column ----


@pytest.fixture(scope="module")
def polygon_dataset(tmp_path_factory):
    """Three rows without an id column (ids derived from the images), polygons in a column, one null."""
    root = tmp_path_factory.mktemp("polygons")
    images = [photo(i) for i in range(3)]
    polygons = [[[2.0, 2.0], [30.0, 2.0], [15.0, 30.0]], None, [[0.0, 0.0], [44.0, 0.0], [44.0, 10.0], [0.0, 10.0]]]
    table = pa.table({
        "image": pa.array([png(im) for im in images], pa.binary()),
        "caption": ["a photo of a man"] * 3,
        "region": pa.array(polygons, pa.list_(pa.list_(pa.float64()))),
    })
    pq.write_table(table, root / "part-0.parquet")
    return root, images


def test_a_polygon_column_gives_stored_masks_and_a_null_cell_an_error(polygon_dataset, tmp_path):
    root, images = polygon_dataset
    spec = DatasetSpec.parse_spec({"uri": str(root)})
    store = ImageStore(str(tmp_path))
    valid = ingest_and_validate(spec, image_store=store).valid
    masks = column_masks(spec, valid, "region", store)
    assert masks.height == 3
    rows = {r["source_id"]: r for r in masks.to_dicts()}
    by_image = dict(zip(valid["content_key"], valid["id"]))
    first = rows[by_image[next(k for k in valid["content_key"] if store.get(k) == images[0].convert("RGB"))]]
    stored = store.get(first["mask_key"]).convert("L")
    assert stored.size == SIZE and np.asarray(stored)[10, 15] == 255 and np.asarray(stored)[35, 40] == 0
    assert sorted(str(r["mask_error"]) for r in rows.values()) == ["None", "None", "the mask cell is null"]
    with pytest.raises(UserError, match="lacks required column.*'nope'.*generation.params.mask.column"):
        column_masks(spec, valid, "nope", store)


def item(source_key: str, source_uri: str, key: str, source_id: str = "r1", mask_uri: str | None = None) -> WorkItem:
    return WorkItem(source_id=source_id, source_key=source_key, source_image_uri=source_uri, caption="a photo of a man",
                    attribute="gender", source_value="male", target_value="female", seed=0,
                    counterfactual_caption="a photo of a woman", explanation="", instruction="", generator="g",
                    content_key=key, mask_uri=mask_uri)


def test_items_take_their_masks_key_and_a_source_without_one_never_reaches_the_generator():
    masks = pl.DataFrame({"source_id": ["r1", "r2"], "mask_key": ["m1", None], "mask_uri": ["u1", None],
                          "mask_error": [None, "empty mask: nothing to edit"]})
    items, failed = attach_masks([item("s", "u", "k1", "r1"), item("s", "u", "k2", "r2")], masks)
    assert items[0].mask_uri == "u1" and items[0].content_key not in ("k1",)
    assert items[1].mask_uri is None and failed == {items[1].content_key: "no usable mask: empty mask: nothing to edit"}
    again, _ = attach_masks([item("s", "u", "k1", "r1")], masks.with_columns(pl.lit("m2").alias("mask_key")))
    assert again[0].content_key != items[0].content_key  # another mask, another image


# ---- the editor ----


def test_the_output_is_the_source_outside_the_mask_at_the_sources_size(generator_models, tmp_path):
    store = ImageStore(str(tmp_path))
    source = photo(7)
    source_uri = store.put_png("source", source)
    mask = polygon_mask([[5, 5], [40, 8], [20, 33]], SIZE)
    generation = GenerationSection(method="inpaint", model=str(generator_models["inpaint"]), steps=2, resolution=32,
                                  params={"mask": {"column": "m"}})
    editor = InpaintEditor(generation, device="cpu")
    empty = Image.new("L", SIZE, 0)
    out = editor.edit([item("source", source_uri, "a"), item("source", source_uri, "b")], [source, source], [mask, empty])
    assert_outside_is_source(out[0], source, mask)
    assert isinstance(out[1], ValueError) and "empty mask" in str(out[1])


# ---- end to end ----


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory):
    """Three rows with a mask image column: two usable masks and one all black (empty)."""
    root = tmp_path_factory.mktemp("masked")
    masks = [polygon_mask([[3, 3], [40, 3], [40, 30]], SIZE), polygon_mask([[0, 20], [44, 20], [22, 36]], SIZE),
             Image.new("L", SIZE, 0)]
    table = pa.table({
        "id": ["r0", "r1", "r2"],
        "image": pa.array([{"bytes": png(photo(10 + i)), "path": f"{i}.png"} for i in range(3)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": ["a photo of a man at work", "a photo of a woman at work", "a photo of a man at work"],
        "mask": pa.array([png(m) for m in masks], pa.binary()),
    })
    pq.write_table(table, root / "part-0.parquet")
    return root


def inpaint_config(path: Path, dataset: Path, tiny_models, generator_models, out: str, mask: dict) -> str:
    clip = str(tiny_models["clip"])
    raw = {
        "dataset": {"uri": str(dataset), "name": "masked"},
        "attributes": {"gender": ["female", "male"]},
        "generation": {"method": "inpaint", "model": str(generator_models["inpaint"]), "steps": 2, "seeds_per_target": 1,
                       "batch_size": 4, "resolution": 32, "params": {"mask": mask}},
        "judge": {"model": clip, "thresholds": {"text": -1.0, "direction": -1.0, "image": -1.0}, "check_attribute": False},
        "audit": {"model": clip, "bootstrap_samples": 50},
        "output": {"uri": out},
        "runtime": {"max_workers": 2, "max_failed_fraction": 0.5},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def check_masked_run(run: Path) -> pl.DataFrame:
    cf = pl.read_parquet(run / "counterfactuals.parquet")
    made = cf.filter(pl.col("status") != "failed")
    assert made.height > 0
    for row in made.iter_rows(named=True):
        assert Path(row["mask_uri"]).parent == Path(row["image_uri"]).parent  # beside the images, by content key
        with Image.open(row["source_image_uri"]) as source, Image.open(row["mask_uri"]) as mask, \
                Image.open(row["image_uri"]) as output:
            assert_outside_is_source(output, source, mask)
    return cf


@pytest.mark.slow
@pytest.mark.prefect
def test_a_mask_column_run_keeps_the_background_and_fails_only_the_empty_mask(
    prefect_server, masked_dataset, tiny_models, generator_models, tmp_path
):
    from counterfactual_lab.flows.audit import dataset_audit

    config = inpaint_config(tmp_path / "a.yaml", masked_dataset, tiny_models, generator_models, str(tmp_path / "out"),
                            {"column": "mask"})
    run = Path(dataset_audit(config_uri=config))
    cf = check_masked_run(run)
    failed = cf.filter(pl.col("status") == "failed")
    assert set(failed["source_id"]) == {"r2"} and failed["mask_uri"].null_count() == failed.height
    assert all("empty mask" in error for error in failed["error"])
    assert set(cf.filter(pl.col("status") != "failed")["source_id"]) == {"r0", "r1"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"  # 3 of 9 items failed, under max_failed_fraction 0.5
    assert manifest["generation_counts"]["failed"] == failed.height
    assert manifest["generation_counts"]["calls"] == cf.height - failed.height  # failed masks never reach the model
    assert 'alt="mask"' in (run / "report.html").read_text()  # the mask is shown in the image grid


@pytest.mark.slow
@pytest.mark.prefect
def test_a_segmentation_model_makes_the_masks(prefect_server, masked_dataset, tiny_models, generator_models, tmp_path):
    from counterfactual_lab.flows.audit import dataset_audit

    mask = {"segment": "person", "model": str(generator_models["clipseg"]), "threshold": 0.5, "dilation": 1}
    config = inpaint_config(tmp_path / "s.yaml", masked_dataset, tiny_models, generator_models, str(tmp_path / "out"), mask)
    run = Path(dataset_audit(config_uri=config, evaluate=False))
    cf = check_masked_run(run)
    assert cf["mask_uri"].n_unique() == 3 and (cf["status"] != "failed").all()
    manifest = json.loads((run / "manifest.json").read_text())
    assert "segmenter" in manifest["models"]  # the CLIPSeg weights are part of what the run is
    # stored under what made them: a rerun of the masks segments nothing
    valid = pl.DataFrame({"id": cf["source_id"], "content_key": cf["source_key"], "image_uri": cf["source_image_uri"]}).unique("id")
    store = ImageStore(str(tmp_path / "out"))
    checked = check_mask_spec(mask)
    key = segmentation_key(valid["content_key"][0], checked, manifest["models"]["segmenter"]["identity"])
    assert store.has(key)
    import counterfactual_lab.plan.masks as masks_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(masks_module, "segment", lambda *a, **k: pytest.fail("segmented again"))
        again = segmentation_masks(valid, checked, manifest["models"]["segmenter"]["identity"], store, "cpu")
    assert again["mask_error"].null_count() == 3


def test_preflight_names_a_missing_segmentation_model(tmp_path, masked_dataset, tiny_models, generator_models):
    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.runs.preflight import check_audit

    path = inpaint_config(tmp_path / "p.yaml", masked_dataset, tiny_models, generator_models, str(tmp_path / "out"),
                          {"segment": "face", "model": str(tmp_path / "no-such-clipseg")})
    with pytest.raises(UserError, match=r"generation.params.mask.model: .*no-such-clipseg does not exist"):
        check_audit(AuditConfig.from_yaml(path))
    good = inpaint_config(tmp_path / "g.yaml", masked_dataset, tiny_models, generator_models, str(tmp_path / "out"),
                          {"segment": "face", "model": str(generator_models["clipseg"])})
    assert check_audit(AuditConfig.from_yaml(good)).name == "masked"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "oversized"])
def test_a_mask_path_to_a_hostile_file_is_that_rows_error_within_seconds(tmp_path, kind):
    """Issue 17: a mask column's path naming a FIFO hung the audit (opened without the regular-file
    check, read without a limit); now it is never opened and the row gets the reason as its mask_error."""
    from hang_guard import call_within
    from hostile_files import expected_words, plant

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    images = [photo(i) for i in range(2)]
    for i, image in enumerate(images):
        (root / "images" / f"r{i}.png").write_bytes(png(image))
        (root / "images" / f"m{i}.png").write_bytes(png(Image.new("L", SIZE, 255)))
    table = pa.table({"id": ["r0", "r1"], "image": [f"images/r{i}.png" for i in range(2)],
                      "caption": ["a photo of a man", "a photo of a woman"], "mask": ["images/m0.png", "images/m1.png"]})
    pq.write_table(table, root / "part-0.parquet")
    spec = DatasetSpec.parse_spec({"uri": str(root), "limits": {"max_image_bytes": 1_000_000}})
    store = ImageStore(str(tmp_path / "out"))
    valid = ingest_and_validate(spec, image_store=store).valid
    planted = plant(root / "images" / "m1.png", kind, 1_000_000)
    masks = call_within(20, lambda: column_masks(spec, valid, "mask", store), fifos=[planted], what="column_masks")
    errors = dict(zip(masks["source_id"], masks["mask_error"]))
    bad = [e for e in errors.values() if e is not None]
    assert len(errors) == 2 and list(errors.values()).count(None) == 1  # the other row keeps its mask
    # A symlink to /dev/zero is refused before any stat of its target: it leads out of the dataset root.
    words = ("links outside the dataset root",) if kind == "dev-zero" else expected_words(kind)
    assert len(bad) == 1 and "images/m1.png" in bad[0] and all(word in bad[0] for word in words), bad
