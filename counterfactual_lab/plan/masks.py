"""Inpainting masks: where ``generation.method: inpaint`` may change pixels (white = edit).

A mask comes from ``generation.params.mask``:

* ``{column: NAME}``: a column of the dataset, per row either
  - a **mask image**, in any of the forms the image column takes (a Hugging Face
    ``struct{bytes, path}``, plain binary, or a path inside the dataset root), any mode and
    size: a pixel is in the mask when its grey level is above 127 (an alpha channel, when
    present, is used instead), and a mask of another size than its image is resized to it
    (nearest neighbour); or
  - a **polygon** in the image's pixel coordinates: a list of ``[x, y]`` points, or a list of
    such polygons for several regions (the union is filled); e.g. ``[[10, 4], [50, 4], [30, 60]]``;
  rows are matched by id (the spec's id column, else the image's content key, as ingest derives it);
* ``{segment: PROMPT, model: DIR, threshold: 0.4, dilation: 0}``: CLIPSeg
  (``CLIPSegForImageSegmentation``) finds the region the prompt names ("person", "face") in the
  source: ``sigmoid(logits)`` resized (bilinear) to the source's size, ``> threshold``, then grown
  by ``dilation`` pixels (Euclidean distance), so the edit can reach past the outline.

Every mask is binary (0/255, mode ``L``) at its source's size and stored as a PNG in the image
store by content key: a column mask under the sha256 of its pixels, a segmentation mask under
the sha256 of what made it (source key, prompt, the CLIPSeg model's identity, threshold,
dilation), so it is computed once. A source without a usable mask (a null cell, an unreadable
image, a polygon with fewer than 3 points, a mask with no pixel set, a segmentation that finds
nothing above the threshold) gets an error instead; its work items fail with that error and the
run goes on (:func:`attach_masks`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.errors import DatasetUnreadable, UserError
from counterfactual_lab.models.load_once import load_once, on_device
from counterfactual_lab.models.safety import check_no_custom_code, safe_load_kwargs
from counterfactual_lab.plan.work_items import WorkItem
from counterfactual_lab.storage.images import content_key

if TYPE_CHECKING:  # polars is imported where frames are made: the editors (GPU benches) need none
    import polars as pl

# The columns of a masks frame, one row per source (all strings).
MASK_COLUMNS = ("source_id", "mask_key", "mask_uri", "mask_error")
EMPTY_MASK = "empty mask"


def _masks_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    # here, not at the top: it imports polars
    import polars as pl

    return pl.DataFrame(rows, schema={name: pl.String for name in MASK_COLUMNS})


class MaskError(ValueError):
    """A source has no usable mask (the item fails with this message; the run goes on)."""

def binary_mask(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` as a 0/255 mask of ``size`` (width, height): alpha if present, else grey > 127."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        grey = image.convert("RGBA").getchannel("A")
    else:
        grey = image.convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.NEAREST)
    return grey.point(lambda level: 255 if level > 127 else 0)


def polygon_mask(polygons: Any, size: tuple[int, int]) -> Image.Image:
    """A 0/255 mask of ``size`` with the polygon(s) filled: ``[[x, y], ...]`` or a list of those."""
    if not isinstance(polygons, list | tuple) or not polygons:
        raise MaskError("a polygon mask must be a list of [x, y] points (or a list of polygons)")
    if all(_is_point(p) for p in polygons):
        polygons = [polygons]
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if not isinstance(polygon, list | tuple) or not all(_is_point(p) for p in polygon):
            raise MaskError(f"a polygon must be a list of [x, y] points, got {str(polygon)[:80]}")
        if len(polygon) < 3:
            raise MaskError(f"a polygon needs at least 3 points, got {len(polygon)}")
        draw.polygon([(float(x), float(y)) for x, y in polygon], fill=255)
    return canvas


def _is_point(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in value))


def require_pixels(mask: Image.Image, what: str) -> Image.Image:
    """``mask`` unless no pixel is set (:class:`MaskError` "empty mask: <what>")."""
    if mask.getbbox() is None:
        raise MaskError(f"{EMPTY_MASK}: {what} has no pixel set, so there is nothing to edit")
    return mask


def pixel_key(mask: Image.Image) -> str:
    """The content key of a binary mask: sha256 of its size and pixels (not of a PNG encoding)."""
    digest = hashlib.sha256(f"mask:{mask.size[0]}x{mask.size[1]}:".encode())
    digest.update(mask.tobytes())
    return digest.hexdigest()


def segmentation_key(source_key: str, segment: dict[str, Any], model_key: str) -> str:
    """The content key of a CLIPSeg mask: what makes it, so it is known before it is computed."""
    recipe = ["segment", source_key, segment["segment"], model_key, segment["threshold"], segment["dilation"]]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()


def masked_item_key(content_key: str, mask_key: str) -> str:
    """An inpainting item's content key: the plan's key and its mask's content key."""
    return hashlib.sha256(json.dumps(["inpaint-mask", content_key, mask_key]).encode()).hexdigest()


# ---- masks from a dataset column -------------------------------------------------------------


def column_masks(spec: Any, valid: pl.DataFrame, column: str, store: Any) -> pl.DataFrame:
    """The mask of every valid row from dataset column ``column`` (see the module docstring).

    Returns a masks frame (:data:`MASK_COLUMNS`), one row per valid row. A dataset without the column is an
    error naming it (:class:`~counterfactual_lab.errors.DatasetUnreadable`); a bad cell is
    that row's ``mask_error``.
    """
    # here, not at the top: it imports pyarrow and polars
    from counterfactual_lab.ingest.source import missing_columns_message, open_dataset

    source = open_dataset(spec)
    if column not in source.schema.names:
        raise DatasetUnreadable(missing_columns_message(spec.uri, [column], source.schema.names)
                                .replace("map them under 'columns' in the dataset spec", "fix generation.params.mask.column"))
    by_id = {row["id"]: row for row in valid.select("id", "content_key", "width", "height").iter_rows(named=True)}
    found: dict[str, dict[str, Any]] = {}
    id_column = source.plan.id
    projection = [c for c in dict.fromkeys([id_column or source.plan.image, column]) if c]
    for fragment in source._dataset.get_fragments():
        for batch in fragment.to_batches(columns=projection, batch_size=256, use_threads=False):
            ids = _row_ids(batch, id_column, source)
            cells = batch.column(column).to_pylist()
            for row_id, cell in zip(ids, cells):
                row = by_id.get(row_id)
                if row is None or row_id in found:  # quarantined, or a later duplicate of a valid id
                    continue
                found[row_id] = _store_cell(cell, row, source, store)
    rows = [found.get(row_id, {"mask_key": None, "mask_uri": None, "mask_error": "no row of the mask column matched"})
            | {"source_id": row_id} for row_id in by_id]
    return _masks_frame(rows)


def _row_ids(batch: Any, id_column: str | None, source: Any) -> list[str | None]:
    """The ids ingest gives these rows: the id column, else the image content key's prefix."""
    # here, not at the top: it imports polars, pyarrow, pydantic
    from counterfactual_lab.ingest.read import DERIVED_ID_CHARS

    if id_column:
        return [None if v is None else str(v) for v in batch.column(id_column).cast("string").to_pylist()]
    ids = []
    for cell in batch.column(source.plan.image).to_pylist():
        try:
            data = _image_bytes(cell, source)
        except MaskError:  # an unreadable image: ingest quarantined that row, so no mask matches it
            data = None
        ids.append(content_key(data)[:DERIVED_ID_CHARS] if data else None)
    return ids


def _image_bytes(cell: Any, source: Any) -> bytes | None:
    """The bytes of an image cell (struct, binary or path inside the dataset root), or None when
    it holds none. A path is read as ingest reads images (``DatasetSource.read_bounded``: a regular
    file of at most ``limits.max_image_bytes``); one that cannot be is :class:`MaskError` saying why."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        cell = cell.get("path")
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    if isinstance(cell, str) and cell.strip():
        limit = source.spec.limits.max_image_bytes
        try:
            data, size = source.read_bounded(source.resolve_image(cell), limit)
        except Exception as exc:  # noqa: BLE001 - an unreadable path is that row's problem (a FIFO: never opened)
            raise MaskError(f"the mask path {cell.strip()[:200]!r} cannot be read: {exc}") from None
        if data is None:
            raise MaskError(f"the mask path {cell.strip()[:200]!r} has {size:,} bytes or more, over the {limit:,}-byte "
                            "limit for an image (limits.max_image_bytes)")
        return data
    return None


def _store_cell(cell: Any, row: dict[str, Any], source: Any, store: Any) -> dict[str, Any]:
    size = (int(row["width"]), int(row["height"]))
    try:
        if cell is None:
            raise MaskError("the mask cell is null")
        if isinstance(cell, list | tuple):
            mask = polygon_mask(list(cell), size)
        else:
            data = _image_bytes(cell, source)
            if data is None:
                raise MaskError("the mask cell holds no image bytes and no readable path")
            try:
                with Image.open(io.BytesIO(data)) as image:
                    mask = binary_mask(image, size)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise MaskError(f"the mask image cannot be decoded: {exc}") from None
        require_pixels(mask, f"the mask of row {row['id']!r}")
    except MaskError as exc:
        return {"mask_key": None, "mask_uri": None, "mask_error": str(exc)}
    key = pixel_key(mask)
    uri = store.uri(key) if key in store.existing([key]) else store.put_png(key, mask)
    return {"mask_key": key, "mask_uri": uri, "mask_error": None}


# ---- masks from a text-prompted segmentation model ---------------------------------------------

SEGMENTER_KIND = "clipseg-segmenter"  # load_once's kind


def load_segmenter(model: str, revision: str | None = None, device: str = "auto") -> tuple[Any, Any]:
    """(CLIPSegForImageSegmentation, CLIPSegProcessor), loaded once per process: safetensors only."""
    # here, not at the top: it imports torch
    from counterfactual_lab.models.devices import resolve_device

    device = str(resolve_device(device))
    return load_once(SEGMENTER_KIND, model, revision, device, lambda: _load_segmenter(model, revision, device))


def _load_segmenter(model: str, revision: str | None, device: str) -> tuple[Any, Any]:
    # here, not at the top: only a segmenting run loads CLIPSeg
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    # here, not at the top: it imports torch
    from counterfactual_lab.models.devices import dtype_for

    check_no_custom_code(model)
    kwargs = safe_load_kwargs(model, revision)
    try:
        network = CLIPSegForImageSegmentation.from_pretrained(model, dtype=dtype_for(device), **kwargs)
        processor = CLIPSegProcessor.from_pretrained(model, **{k: v for k, v in kwargs.items() if k == "revision"})
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the CLIPSeg model {model!r} (generation.params.mask.model): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return on_device(network, model, revision, device), processor


def segment(images: list[Image.Image], prompt: str, network: Any, processor: Any, *, threshold: float,
            dilation: int) -> list[Image.Image]:
    """CLIPSeg masks (0/255, each at its image's size) of the region ``prompt`` names."""
    # here, not at the top: it imports torch
    import torch

    if not images:
        return []
    inputs = processor(text=[prompt] * len(images), images=[im.convert("RGB") for im in images],
                       return_tensors="pt", padding=True)
    device = next(network.parameters()).device
    dtype = next(network.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
    with torch.inference_mode():
        logits = network(**inputs).logits.float()
    if logits.ndim == 2:  # CLIPSeg squeezes a batch of one
        logits = logits.unsqueeze(0)
    probabilities = torch.sigmoid(logits).unsqueeze(1)
    masks = []
    for image, probability in zip(images, probabilities):
        width, height = image.size
        resized = torch.nn.functional.interpolate(probability[None], size=(height, width), mode="bilinear",
                                                  align_corners=False)[0, 0].cpu().numpy()
        region = resized > threshold
        if dilation and region.any():
            # here, not at the top: only a dilated mask needs scipy
            from scipy.ndimage import distance_transform_edt

            region = distance_transform_edt(~region) <= dilation
        masks.append(Image.fromarray(np.where(region, 255, 0).astype(np.uint8), "L"))
    return masks


def segmentation_masks(valid: pl.DataFrame, mask_spec: dict[str, Any], model_key: str, store: Any,
                       device: str = "auto", batch_size: int = 16) -> pl.DataFrame:
    """The CLIPSeg mask of every valid row (a masks frame), computing only those not stored."""
    rows = valid.select("id", "content_key", "image_uri").to_dicts()
    keys = {row["content_key"]: segmentation_key(row["content_key"], mask_spec, model_key) for row in rows}
    stored = store.existing(sorted(set(keys.values())))
    missing = list({row["content_key"]: row for row in rows if keys[row["content_key"]] not in stored}.values())
    errors: dict[str, str] = {}
    if missing:
        network, processor = load_segmenter(mask_spec["model"], None, device)
        for start in range(0, len(missing), batch_size):
            part = missing[start : start + batch_size]
            images = [store.load(row["image_uri"]) for row in part]
            made = segment(images, mask_spec["segment"], network, processor,
                           threshold=mask_spec["threshold"], dilation=mask_spec["dilation"])
            for row, mask in zip(part, made):
                key = keys[row["content_key"]]
                if mask.getbbox() is None:
                    errors[key] = (f"{EMPTY_MASK}: segmentation of {mask_spec['segment']!r} found no pixel above "
                                   f"threshold {mask_spec['threshold']} in source {row['id']!r}")
                store.put_png(key, mask)  # stored even when empty: the next run need not segment it again
    out = []
    for row in rows:
        key = keys[row["content_key"]]
        error = errors.get(key)
        if error is None and key in stored:
            error = _stored_mask_error(store, key, row["id"], mask_spec)
        out.append({"source_id": row["id"], "mask_key": None if error else key,
                    "mask_uri": None if error else store.uri(key), "mask_error": error})
    return _masks_frame(out)


def _stored_mask_error(store: Any, key: str, row_id: str, mask_spec: dict[str, Any]) -> str | None:
    mask = store.get(key).convert("L")
    if mask.getbbox() is None:
        return (f"{EMPTY_MASK}: segmentation of {mask_spec['segment']!r} found no pixel above threshold "
                f"{mask_spec['threshold']} in source {row_id!r}")
    return None


def prepare_masks(valid: pl.DataFrame, mask_spec: dict[str, Any], spec: Any, store: Any, *,
                  segmenter_key: str | None = None, device: str = "auto") -> pl.DataFrame:
    """The mask of every valid row, by ``mask_spec`` (``params.mask``, checked): a masks frame."""
    if "column" in mask_spec:
        return column_masks(spec, valid, mask_spec["column"], store)
    if segmenter_key is None:
        raise ValueError("segmentation masks need the CLIPSeg model's identity (segmenter_key)")
    return segmentation_masks(valid, mask_spec, segmenter_key, store, device)


def segmenter_reference(generation: Any) -> str | None:
    """The CLIPSeg model an ``inpaint`` config segments with (``params.mask.model``), else None."""
    mask = generation.params.get("mask") if METHODS[generation.method].reads_mask else None
    return mask.get("model") if isinstance(mask, dict) and "segment" in mask else None


def attach_masks(items: list[WorkItem], masks: pl.DataFrame) -> tuple[list[WorkItem], dict[str, str]]:
    """Each item with its source's mask (``mask_uri``, and the mask's key in its content key), and
    the items whose source has no usable mask: ``{content_key: error}`` (they are never generated)."""
    by_source = {row["source_id"]: row for row in masks.iter_rows(named=True)}
    attached, failed = [], {}
    for item in items:
        row = by_source.get(item.source_id)
        if row is None or row["mask_key"] is None:
            error = "no mask" if row is None else row["mask_error"]
            key = masked_item_key(item.content_key, "none")
            attached.append(replace(item, content_key=key, mask_uri=None))
            failed[key] = f"no usable mask: {error}"
            continue
        attached.append(replace(item, content_key=masked_item_key(item.content_key, row["mask_key"]),
                                mask_uri=row["mask_uri"]))
    return attached, failed
