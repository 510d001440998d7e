"""Which modality carries the gap: every pair read three ways (``audit.modalities``).

A probe or label template with ``{person}`` says who is pictured, so a pair can change the image,
the word, or both (GenderBias-VL's image-only and text-only swaps). A pair from → to (a set's
reconstruction → a counterfactual; :mod:`counterfactual_lab.metrics.pairs`) keeps its from side —
the from image read with its own value's word — and reads its to side as:

=========  ===========================================  ==========================================
modality   to side                                      Δ = answer(to) − answer(from) measures
=========  ===========================================  ==========================================
``image``  the to image, the from value's word          the image alone changed
``text``   the from image, the to value's word          the word alone changed
``both``   the to image, the to value's word            both changed
=========  ===========================================  ==========================================

The control pairs (a set's reconstruction → the control: same value, another seed) are read the
same way, so each modality's rows sit beside their own control: the image's and both's is the
generator's seed-to-seed change; the text's is exactly 0 (the same image with the same word).

The readings are the evaluation pool's (:mod:`counterfactual_lab.evaluate.readings`): one
prediction per (image, ``person_value``). Where no template has ``{person}`` the word changes
nothing: ``image`` and ``both`` are the pairs as they are and ``text`` is a pair with no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from counterfactual_lab.evaluate.readings import (
    MODALITIES,
    MODALITY_BOTH,
    MODALITY_IMAGE,
    MODALITY_TEXT,
    PERSON_VALUE_COLUMN,
    has_readings,
)

__all__ = ["MODALITIES", "MODALITY_BOTH", "MODALITY_IMAGE", "MODALITY_TEXT", "in_modality", "modalities_of",
           "reading_table"]

# Where each modality's to side is read: (which image, which value's word).
_TO_SIDE = {
    MODALITY_IMAGE: ("content_key_to", "from_group"),
    MODALITY_TEXT: ("content_key_from", "to_group"),
    MODALITY_BOTH: ("content_key_to", "to_group"),
}


def modalities_of(audit: Any) -> list[str]:
    """``audit.modalities`` (``["image"]`` for a config or table from before they existed)."""
    return list(getattr(audit, "modalities", None) or [MODALITY_IMAGE])


def reading_table(predictions: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame | None:
    """``attribute, content_key, person_value`` and ``columns`` (a prediction's answers), one row per
    reading; None when the predictions hold no person-word readings."""
    if not has_readings(predictions):
        return None
    return predictions.select("attribute", "content_key", PERSON_VALUE_COLUMN, *columns).unique(
        subset=["attribute", "content_key", PERSON_VALUE_COLUMN], keep="first", maintain_order=True)


def in_modality(pairs: pl.DataFrame, readings: pl.DataFrame | None, columns: Sequence[str], modality: str) -> pl.DataFrame:
    """``pairs`` with their to side (``<column>_to`` for each of ``columns``, e.g. ``top1`` and
    ``score_<label>``) read in ``modality`` (module doc) from ``readings`` (:func:`reading_table`).

    A to side with no reading (never asked) is null, so the pair is left out as any pair with a
    missing answer is.
    """
    if modality not in _TO_SIDE:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    to_columns = [f"{c}_to" for c in columns]
    if readings is None:  # no template has {person}: the word changes nothing
        if modality != MODALITY_TEXT:
            return pairs
        return pairs.with_columns(pl.col(f"{c}_from").alias(f"{c}_to") for c in columns)
    image, value = _TO_SIDE[modality]
    lookup = readings.select(
        "attribute", pl.col("content_key").alias(image), pl.col(PERSON_VALUE_COLUMN).alias(value),
        *[pl.col(c).alias(f"{c}_to") for c in columns],
    )
    order = pairs.columns
    joined = pairs.drop(to_columns).join(lookup, on=["attribute", image, value], how="left", nulls_equal=True,
                                         maintain_order="left")
    return joined.select(order)


def tagged(rows: list[dict[str, Any]], modality: str) -> list[dict[str, Any]]:
    """``rows`` (metric rows) with their ``modality``."""
    for row in rows:
        row["modality"] = modality
    return rows
