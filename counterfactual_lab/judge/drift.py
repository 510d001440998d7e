"""Off-target drift: what else the generator changed between a set's reconstruction and its
counterfactuals, read by the judge; and the sets whose drift is too large to keep.

An edit of gender should change gender and nothing else. Per image the judge reads (``judge.max_drift``
on; docs/metrics.md, "Confound diagnostics"):

* **low level**, over the pixels *outside the person mask*: ``brightness`` = mean(0.299 R + 0.587 G
  + 0.114 B)/255 and ``red``, ``green``, ``blue`` = the channel means/255;
* **other protected attributes** (``judge.drift_attributes``; default the vocabulary's gender, age
  and race the run does not audit): ``<attribute>=<value>`` = the judge model's zero-shot
  probability of each value, with the judge's attribute prompts.

The person mask is the inpainting mask of the item (``mask_uri``), else the region the method
declares it edits (``Method.edit_region``: the planted-bias world's badge band); without either
the low-level readings cover the whole image (``mask`` null) and are reported, never tested.

Per pair, the **drift** is to − from of each reading, and ``outside_mask`` = mean |Δ pixel|/255
outside the mask (unsigned; only with a mask). The pairs are the reconstruction → each
counterfactual of its set (transition ``a→b``) and the reconstruction → the control image of the
same (source, attribute) (``control``, transition ``a→a``), only where sets have a reconstruction.

**The set rule.** A counterfactual is dropped (``off_target_drift``; its set then drops whole,
``set_incomplete``) when for some measure k its own drift exceeds what a seed change alone does
by more than ``max_drift``::

    |d_k| > max_drift_k + q95_k,   q95_k = 95th percentile of |d_k| over the attribute's control pairs

(the largest |d_k| with fewer than 20 control pairs; 0 without any). The bare run threshold cannot
serve per set: one set's channel drift varies with the seed far more than the run's mean does.

The output is ``drift.parquet`` (:data:`DRIFT_SCHEMA`), one row per (pair, measure).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.config.audit_config import JudgeSection
from counterfactual_lab.config.dataset_spec import DEFAULT_VOCABULARIES
from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.judge.scores import attribute_prompt_for

DRIFT_SCHEMA = {
    "attribute": pl.String, "source_id": pl.String, "set_id": pl.String, "transition": pl.String,
    "control": pl.Boolean, "from_key": pl.String, "to_key": pl.String, "measure": pl.String,
    "value": pl.Float64, "threshold": pl.Float64, "mask": pl.String, "exceeded": pl.Boolean, "kept": pl.Boolean,
}
# What read_drift returns: one row per (pair, measure), with the pair's candidate row indices.
READINGS_SCHEMA = {**{k: v for k, v in DRIFT_SCHEMA.items() if k not in ("exceeded", "kept")},
                   "_from": pl.Int64, "_to": pl.Int64}
CHANNEL_MEASURES = ("brightness", "red", "green", "blue")
MEASURE_OUTSIDE_MASK = "outside_mask"
MASK_INPAINT, MASK_METHOD = "inpaint", "method"
# Control pairs below which the set rule's q95 is their largest |drift| instead.
MIN_CONTROL_PAIRS = 20
_LUMA = np.array([0.299, 0.587, 0.114])


def is_attribute_measure(measure: str) -> bool:
    """``age=elderly`` (another attribute's zero-shot probability) rather than a low-level reading."""
    return "=" in measure


def threshold_key(measure: str) -> str:
    """The ``judge.max_drift`` key of a measure."""
    if is_attribute_measure(measure):
        return "attribute"
    if measure in ("red", "green", "blue"):
        return "colour"
    return measure


def drift_attribute_names(judge: JudgeSection, audited: Sequence[str]) -> list[str]:
    """The other protected attributes whose zero-shot probabilities the drift reads (module doc)."""
    if judge.drift_attributes is not None:
        return [a for a in judge.drift_attributes if a not in set(audited)]
    return [a for a in DEFAULT_VOCABULARIES if a not in set(audited)]


def empty_drift() -> pl.DataFrame:
    return pl.DataFrame(schema=DRIFT_SCHEMA)


def empty_readings() -> pl.DataFrame:
    """:func:`read_drift`'s frame with no pairs."""
    return pl.DataFrame(schema=READINGS_SCHEMA)


# -- readings -------------------------------------------------------------------------------------


def pixels_of(image: Any) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] of a PIL image."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def low_level(pixels: np.ndarray, outside: np.ndarray | None) -> dict[str, float]:
    """brightness, red, green, blue over the pixels where ``outside`` is true (all without a mask)."""
    region = pixels.reshape(-1, 3) if outside is None else pixels[outside]
    if region.size == 0:
        region = pixels.reshape(-1, 3)
    means = region.mean(axis=0)
    return {"brightness": float(means @ _LUMA), "red": float(means[0]), "green": float(means[1]), "blue": float(means[2])}


def method_region(method: str | None, width: int, height: int) -> np.ndarray | None:
    """The (H, W) boolean region a method declares it edits, or None."""
    facts = METHODS.get(method) if method else None
    return None if facts is None else facts.edit_region_mask(width, height)


# Decoded images kept at once: pairs come in candidate order, a source's set together, so a
# reconstruction is reused within a few pairs. Keeping every image of a run held 7.9 GB of float
# pixels at 10^5 work items (bench/scale.py); an image read again costs one PNG decode.
CACHED_IMAGES = 256


class _Images:
    """Decoded pixels (the last ``CACHED_IMAGES`` used) and person masks of the candidates."""

    def __init__(self, load_image: Callable[[str], Any], capacity: int = CACHED_IMAGES) -> None:
        self.load_image = load_image
        self.capacity = capacity
        self.pixels: OrderedDict[str, np.ndarray] = OrderedDict()
        self.masks: OrderedDict[str, np.ndarray] = OrderedDict()

    def of(self, row: dict[str, Any]) -> np.ndarray:
        key = row["content_key"]
        if key in self.pixels:
            self.pixels.move_to_end(key)
        else:
            self.pixels[key] = pixels_of(self.load_image(row["image_uri"]))
            if len(self.pixels) > self.capacity:
                self.pixels.popitem(last=False)
        return self.pixels[key]

    def outside(self, row: dict[str, Any], shape: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
        """(where the pixels lie outside the person, which mask says so) for one candidate's image."""
        uri = row.get("mask_uri")
        if uri:
            if uri not in self.masks:
                mask = self.load_image(uri).convert("L")
                if mask.size != (shape[1], shape[0]):
                    mask = mask.resize((shape[1], shape[0]))
                self.masks[uri] = np.asarray(mask) >= 128
                if len(self.masks) > self.capacity:
                    self.masks.popitem(last=False)
            return ~self.masks[uri], MASK_INPAINT
        region = method_region(row.get("method"), shape[1], shape[0])
        if region is not None:
            return ~region, MASK_METHOD
        return None, None


def _attribute_readings(rows: list[dict[str, Any]], judge: JudgeSection, embedder, load_image,
                        drift_vocabulary: dict[str, list[str]], batch_size: int) -> tuple[list[str], np.ndarray]:
    """(the ``<attribute>=<value>`` measures, the judge's zero-shot probability of each per row: rows × measures)."""
    names: list[str] = []
    columns: list[np.ndarray] = []
    if rows and drift_vocabulary:
        images = embedder.embed_image_uris([r["image_uri"] for r in rows], [r["content_key"] for r in rows], load_image,
                                           batch_size=batch_size)
        for attribute, values in drift_vocabulary.items():
            if len(values) < 2:
                continue
            prompts = embedder.embed_texts([attribute_prompt_for(judge, attribute, v) for v in values])
            probabilities = np.asarray(embedder.zero_shot(images, prompts), dtype=np.float64)
            for k, value in enumerate(values):
                names.append(f"{attribute}={value}")
                columns.append(probabilities[:, k])
    return names, (np.stack(columns, axis=1) if columns else np.zeros((len(rows), 0)))


# -- pairs ----------------------------------------------------------------------------------------


def _usable(row: dict[str, Any]) -> bool:
    return row.get("image_uri") is not None and row.get("status") != "failed"


def drift_pairs(rows: list[dict[str, Any]], source: str) -> list[tuple[int, int, bool]]:
    """(from index, to index, control) of every pair (module doc), in candidate order."""
    reconstructions: dict[tuple, int] = {}
    controls: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("variant") != "reconstruction" or not _usable(row):
            continue
        if row.get("control"):
            controls.setdefault((row[source], row["attribute"]), []).append(i)
        else:
            reconstructions[(row[source], row["attribute"], row["seed"])] = i
    pairs = []
    for i, row in enumerate(rows):
        if row.get("variant") == "reconstruction" or not _usable(row):
            continue
        origin = reconstructions.get((row[source], row["attribute"], row["seed"]))
        if origin is not None:
            pairs.append((origin, i, False))
    for (source_id, attribute, _), origin in reconstructions.items():
        for i in controls.get((source_id, attribute), []):
            pairs.append((origin, i, True))
    return pairs


def read_drift(
    rows: list[dict[str, Any]], judge: JudgeSection, embedder, load_image: Callable[[str], Any], *,
    source: str, drift_vocabulary: dict[str, list[str]], batch_size: int = 32,
) -> pl.DataFrame:
    """One row per (pair, measure) of the candidates ``rows``: :data:`READINGS_SCHEMA` (``DRIFT_SCHEMA`` less
    ``exceeded`` and ``kept``, plus ``_from`` and ``_to``, the pair's indices in ``rows``).

    Built column by column: at 10^5 work items a run has ~10^6 readings, which as one dict each
    held over a gigabyte (bench/scale.py)."""
    pairs = drift_pairs(rows, source)
    if not pairs:
        return empty_readings()
    involved = sorted({i for pair in pairs for i in pair[:2]})
    position = {i: p for p, i in enumerate(involved)}
    attribute_names, probabilities = _attribute_readings([rows[i] for i in involved], judge, embedder, load_image,
                                                         drift_vocabulary, batch_size)
    images = _Images(load_image)
    limits = _limits(judge)
    thresholds = {m: limits[threshold_key(m)] for m in (*CHANNEL_MEASURES, MEASURE_OUTSIDE_MASK, *attribute_names)}
    columns: dict[str, list] = {name: [] for name in READINGS_SCHEMA}
    for origin, target, control in pairs:
        before, after = rows[origin], rows[target]
        a, b = images.of(before), images.of(after)
        outside, mask = images.outside(after, a.shape[:2]) if a.shape == b.shape else (None, None)
        low_before, low_after = low_level(a, outside), low_level(b, outside)
        measures = list(CHANNEL_MEASURES)
        values = [low_after[k] - low_before[k] for k in CHANNEL_MEASURES]
        if outside is not None:
            measures.append(MEASURE_OUTSIDE_MASK)
            values.append(float(np.abs(b[outside] - a[outside]).mean()) if outside.any() else 0.0)
        measures += attribute_names
        values += (probabilities[position[target]] - probabilities[position[origin]]).tolist()
        pair_values = {
            "attribute": after["attribute"], "source_id": after[source], "set_id": before.get("set_id"),
            "transition": f"{before['target_value']}→{after['target_value']}", "control": control,
            "from_key": before["content_key"], "to_key": after["content_key"], "mask": mask,
            "_from": origin, "_to": target,
        }
        for name, value in pair_values.items():
            columns[name].extend([value] * len(measures))
        columns["measure"].extend(measures)
        columns["value"].extend(values)
        columns["threshold"].extend(thresholds[m] for m in measures)
    return pl.DataFrame(columns, schema=READINGS_SCHEMA)


def _limits(judge: JudgeSection) -> dict[str, float]:
    drift = judge.max_drift
    return {key: float(getattr(drift, key)) for key in ("brightness", "colour", "attribute", "outside_mask")}


def set_rule(readings: pl.DataFrame) -> np.ndarray:
    """Per reading, whether the set rule fires (module doc): |d| > threshold + q95 of the attribute's control pairs."""
    allowance: dict[tuple[str, str], float] = {}
    controls = readings.filter(pl.col("control")).group_by(["attribute", "measure"], maintain_order=True).agg("value")
    for attribute, measure, values in controls.iter_rows():
        magnitudes = np.abs(np.asarray(values, dtype=np.float64))
        allowance[(attribute, measure)] = (float(np.percentile(magnitudes, 95)) if len(magnitudes) >= MIN_CONTROL_PAIRS
                                           else float(magnitudes.max()))
    allowed = np.array([allowance.get(key, 0.0) for key in zip(readings["attribute"], readings["measure"])],
                       dtype=np.float64)
    control = readings["control"].to_numpy().astype(bool)
    return ~control & (np.abs(readings["value"].to_numpy()) > readings["threshold"].to_numpy() + allowed)


def drift_frame(readings: pl.DataFrame, exceeded: Sequence[bool], kept: Sequence[bool]) -> pl.DataFrame:
    """``drift.parquet``'s frame: each reading with ``exceeded`` and ``kept`` (both images kept)."""
    if readings.is_empty():
        return empty_drift()
    kept_flags = np.asarray(kept, dtype=bool)
    both_kept = kept_flags[readings["_from"].to_numpy()] & kept_flags[readings["_to"].to_numpy()]
    return readings.with_columns(
        pl.Series("exceeded", np.asarray(exceeded, dtype=bool), dtype=pl.Boolean),
        pl.Series("kept", both_kept, dtype=pl.Boolean),
    ).select(list(DRIFT_SCHEMA))
