"""CITS, the Counterfactual Image-Text Score: this project's own summary of counterfactual quality.

CITS is defined by this project; it is not a published metric (docs/metrics.md). For one
counterfactual with source image I₀, source caption T₀, counterfactual image I₁ and
counterfactual caption T₁, embedded by the judge model:

* alignment    ``a = cos(I₁, T₁)``            — the new image shows the new caption;
* direction    ``d = cos(I₁ − I₀, T₁ − T₀)``  — the image changed, and the way the text changed
  (0 for an unchanged image: I₁ − I₀ = 0 has no direction);
* preservation ``p = cos(I₀, I₁)``            — everything else stayed the same.

CITS is the harmonic mean of the three, each clipped at 0::

    CITS = 3 / (1/a⁺ + 1/d⁺ + 1/p⁺),   s⁺ = max(s, 0);   CITS = 0 when any s⁺ = 0

so it lies in [0, 1] and is high only for an edit that is real, aligned and preserving at
once: an unedited copy (d = 0), an edit the wrong way (d < 0) and an unrelated image (p ≤ 0)
all score 0, and excelling on one axis cannot make up for another. (The earlier definition
mapped each cosine by (1 + s)/2, which gave an unchanged copy d' = 0.5 and scored it about as
well as a real edit.) Its scale follows the judge model, so compare CITS between runs with the
same judge only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.judge.scores import (
    directional_similarity,
    image_similarity,
    text_similarity,
)
from counterfactual_lab.metrics.intervals import IntervalSettings, mean_estimate
from counterfactual_lab.metrics.schema import UNKNOWN_GROUP, metric_row
from counterfactual_lab.plan.work_items import VARIANT_COUNTERFACTUAL

CITS = "cits"


def cits_score(alignment, direction, preservation) -> np.ndarray:
    """Element-wise CITS from the judge's three cosines (arrays or scalars)."""
    parts = np.stack(np.broadcast_arrays(*[np.clip(np.asarray(x, dtype=float), 0.0, 1.0) for x in (alignment, direction, preservation)]))
    positive = (parts > 0).all(axis=0)
    with np.errstate(divide="ignore"):
        harmonic = 3.0 / np.where(parts > 0, 1.0 / np.where(parts > 0, parts, 1.0), np.inf).sum(axis=0)
    return np.where(positive, harmonic, 0.0)


def cits_from_embeddings(i0: np.ndarray, t0: np.ndarray, i1: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """CITS of each row from the four embeddings, with the judge's own similarity functions."""
    return cits_score(text_similarity(i1, t1), directional_similarity(i0, i1, t0, t1), image_similarity(i0, i1))


def cits_rows(counterfactuals: pl.DataFrame, attribute: str, stratum: str, settings: IntervalSettings) -> list[dict[str, Any]]:
    """Mean CITS of one attribute's kept counterfactuals, overall (group null) and per transition.

    Reconstructions and controls have no direction (null ``direction_similarity``) and are not
    counterfactuals: they are left out. The cluster is the source image.
    """
    needed = {"attribute", "kept", "text_similarity", "direction_similarity", "image_similarity", "source_value", "target_value"}
    if counterfactuals.height == 0 or not needed <= set(counterfactuals.columns):
        return []
    kept = counterfactuals.filter(
        (pl.col("attribute") == attribute) & pl.col("kept").fill_null(False) & pl.col("direction_similarity").is_not_null()
    )
    if "variant" in kept.columns:
        kept = kept.filter(pl.col("variant").fill_null(VARIANT_COUNTERFACTUAL) == VARIANT_COUNTERFACTUAL)
    if kept.height == 0:
        return []
    sources = kept["source_id"] if "source_id" in kept.columns else pl.Series([str(i) for i in range(kept.height)])
    kept = kept.with_columns(
        sources.cast(pl.String).alias("_cluster"),
        (pl.col("source_value").cast(pl.String).fill_null(UNKNOWN_GROUP) + "→" + pl.col("target_value").cast(pl.String)).alias("transition"),
    )
    rows = []
    for transition in [None, *sorted(kept["transition"].unique().to_list())]:
        subset = kept if transition is None else kept.filter(pl.col("transition") == transition)
        scores = cits_score(subset["text_similarity"].to_numpy(), subset["direction_similarity"].to_numpy(), subset["image_similarity"].to_numpy())
        rows.append(metric_row(CITS, stratum, attribute, mean_estimate(scores, subset["_cluster"].to_numpy(), settings), group=transition))
    return rows
