"""Which images are compared with which: counterfactual pairs and control pairs.

A pair is an ordered (from, to) of two predictions of the same attribute; its transition is
``"<from group>→<to group>"``. Every pair frame has the columns::

    attribute, source_id, set_id, from_group, to_group, transition,
    top1_from, top1_to, score_<label>_from, score_<label>_to   (one pair of score columns per label)

then, where the predictions have them, ``content_key_from, content_key_to`` (which image each side
is: :mod:`counterfactual_lab.metrics.modalities` reads a side again with another person word).
``source_id`` is the cluster the bootstrap resamples. The three designs (docs/metrics.md):

* :func:`reconstruction_pairs` — generated vs generated: within one set (``attribute, set_id``:
  one source, one seed) the reconstruction → each counterfactual;
* :func:`member_pairs` — evaluate-only: within one counterfactual set every ordered pair of
  members whose groups differ (both directions, so no value is privileged);
* :func:`original_pairs` — reconstruction off: the original → each counterfactual of the same
  (source_id, attribute); it compares a real photo with a generated image.

:func:`control_pairs` pairs each control image (same source, same value, a seed no set uses)
with the reconstruction of every kept set of the same (source_id, attribute): the change in the
answer when nothing protected changes.

:func:`synthetic_pairs` pairs each original with the reconstruction of every kept set of the same
(source_id, attribute): the change in the answer when the photo is generated and nothing else
changes (the synthetic shift, :mod:`counterfactual_lab.metrics.synthetic_shift`).
"""

from __future__ import annotations

import polars as pl

from counterfactual_lab.evaluate.pool import score_column
from counterfactual_lab.metrics.schema import (
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_REAL_VS_GENERATED,
    UNKNOWN_GROUP,
)
from counterfactual_lab.plan.work_items import (
    VARIANT_COUNTERFACTUAL,
    VARIANT_ORIGINAL,
    VARIANT_RECONSTRUCTION,
)

_KEYS = ("attribute", "source_id", "set_id")


def pair_columns(labels: list[str]) -> list[str]:
    """The columns of a pair frame, in order."""
    scores = [f"{score_column(label)}_{side}" for label in labels for side in ("from", "to")]
    return ["attribute", "source_id", "set_id", "from_group", "to_group", "transition", "top1_from", "top1_to", *scores]


# Which image each side of a pair is, where the predictions carry content keys.
CONTENT_KEY_COLUMNS = ("content_key_from", "content_key_to")


def _side(frame: pl.DataFrame, labels: list[str], side: str, keys: list[str]) -> pl.DataFrame:
    return frame.select(
        *keys,
        pl.col("group").alias(f"{side}_group"),
        pl.col("top1").alias(f"top1_{side}"),
        *[pl.col(score_column(label)).alias(f"{score_column(label)}_{side}") for label in labels],
        *([pl.col("content_key").alias(f"content_key_{side}")] if "content_key" in frame.columns else []),
    )


def _finish(pairs: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    pairs = pairs.with_columns(
        (pl.col("from_group").fill_null(UNKNOWN_GROUP) + "→" + pl.col("to_group").fill_null(UNKNOWN_GROUP)).alias("transition")
    )
    keys = [c for c in CONTENT_KEY_COLUMNS if c in pairs.columns]
    return pairs.select(*pair_columns(labels), *keys).sort(["attribute", "source_id", "set_id", "transition"], nulls_last=True)


def _empty(labels: list[str]) -> pl.DataFrame:
    schema = {c: pl.String for c in pair_columns(labels)}
    schema.update({f"{score_column(label)}_{side}": pl.Float64 for label in labels for side in ("from", "to")})
    schema.update({column: pl.String for column in CONTENT_KEY_COLUMNS})
    return pl.DataFrame(schema=schema)


def _variant(predictions: pl.DataFrame, variant: str, control: bool = False) -> pl.DataFrame:
    return predictions.filter((pl.col("variant") == variant) & (pl.col("control").fill_null(False) == control))


def reconstruction_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(reconstruction → counterfactual) within each (attribute, set_id)."""
    references = _variant(predictions, VARIANT_RECONSTRUCTION).filter(pl.col("set_id").is_not_null())
    members = _variant(predictions, VARIANT_COUNTERFACTUAL).filter(pl.col("set_id").is_not_null())
    if references.height == 0 or members.height == 0:
        return _empty(labels)
    keys = ["attribute", "set_id"]
    left = _side(references, labels, "from", [*keys, "source_id"]).unique(subset=keys, keep="first", maintain_order=True)
    right = _side(members, labels, "to", keys)
    return _finish(left.join(right, on=keys, how="inner"), labels)


def member_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """Every ordered pair of members with different (known) groups within each (attribute, set_id)."""
    members = _variant(predictions, VARIANT_COUNTERFACTUAL).filter(
        pl.col("set_id").is_not_null() & pl.col("group").is_not_null()
    )
    if members.height == 0:
        return _empty(labels)
    keys = ["attribute", "set_id"]
    left = _side(members, labels, "from", [*keys, "source_id"])
    right = _side(members, labels, "to", keys)
    pairs = left.join(right, on=keys, how="inner").filter(pl.col("from_group") != pl.col("to_group"))
    return _finish(pairs, labels)


def original_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(original → counterfactual) on (source_id, attribute): real vs generated."""
    originals = _variant(predictions, VARIANT_ORIGINAL)
    edits = _variant(predictions, VARIANT_COUNTERFACTUAL)
    if originals.height == 0 or edits.height == 0:
        return _empty(labels)
    keys = ["attribute", "source_id"]
    left = _side(originals, labels, "from", keys).unique(subset=keys, keep="first", maintain_order=True)
    right = _side(edits, labels, "to", [*keys, "set_id"])
    return _finish(left.join(right, on=keys, how="inner"), labels)


def control_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(kept set's reconstruction → control image) for every kept set of the control's (source_id, attribute).

    ``set_id`` is the reconstruction's set; the transition is ``value→value`` (nothing
    protected changes).
    """
    controls = _variant(predictions, VARIANT_RECONSTRUCTION, control=True)
    references = _variant(predictions, VARIANT_RECONSTRUCTION).filter(pl.col("set_id").is_not_null())
    if controls.height == 0 or references.height == 0:
        return _empty(labels)
    keys = ["attribute", "source_id"]
    left = _side(references, labels, "from", [*keys, "set_id"]).unique(subset=["attribute", "set_id"], keep="first", maintain_order=True)
    right = _side(controls, labels, "to", keys)
    return _finish(left.join(right, on=keys, how="inner"), labels)


def synthetic_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(original → kept set's reconstruction) on (source_id, attribute): real vs its own regeneration.

    ``set_id`` is the reconstruction's set; the transition is ``value→value``.
    """
    originals = _variant(predictions, VARIANT_ORIGINAL)
    references = _variant(predictions, VARIANT_RECONSTRUCTION).filter(pl.col("set_id").is_not_null())
    if originals.height == 0 or references.height == 0:
        return _empty(labels)
    keys = ["attribute", "source_id"]
    left = _side(originals, labels, "from", keys).unique(subset=keys, keep="first", maintain_order=True)
    right = _side(references, labels, "to", [*keys, "set_id"])
    return _finish(left.join(right, on=keys, how="inner"), labels)


# The pairs each design compares (its stratum → the function that builds them).
PAIRS_BY_DESIGN = {
    STRATUM_GENERATED: reconstruction_pairs,
    STRATUM_EVALUATE_ONLY: member_pairs,
    STRATUM_REAL_VS_GENERATED: original_pairs,
}
