"""Which (image, person word) readings the model under audit is asked for, when a template has ``{person}``.

A probe or label template with ``{person}`` (``"a photo of a {person} who is a {label}"``) asks
about an image *and* a word for who is pictured (:mod:`counterfactual_lab.plan.person_words`).
Each pool row (:data:`counterfactual_lab.evaluate.pool.POOL_SCHEMA`) is then asked once per word
it needs, as one row per reading with two more columns:

* ``person``: the word the row was asked with (``woman``, ``elderly person``);
* ``person_value``: the value of the row's attribute that word says (``female``; null: unknown,
  the word ``person``).

Which readings a row needs follows from the modalities of ``audit.modalities`` (docs/metrics.md,
"Which modality carries the gap"). A pair compares *from* → *to*; the from side is always read
with its own source value's word, and the to side with

==========  ===============================================
``image``   the counterfactual image, the source's word
``text``    the reference image, the target's word
``both``    the counterfactual image, the target's word
==========  ===============================================

so, per design (the source value *s* of a generated row is its original's group; *t* a target):

* ``generated``: original, control: *s*; reconstruction: *s*, and each target *t* of its set with
  ``text``; counterfactual: *s*, and its own *t* with ``both``;
* ``real_vs_generated``: original: *s*, and each target of its source with ``text``;
  counterfactual: *s*, and its own *t* with ``both``;
* ``evaluate_only``: a member: its own value, and with ``image`` or ``text`` every value of its
  set (an ordered pair a → b reads b with a's word, or a with b's).

The **base reading** of a row (:func:`base_readings`) is the one everything but the pairs' to
side uses — group and retrieval metrics, the pairs' from side: a generated or real-vs-generated
row with its source's word, an evaluate-only member with its own. Without any ``{person}``
template nothing is added and every row is its own base reading.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from counterfactual_lab.plan.person_words import PersonWords
from counterfactual_lab.plan.work_items import (
    VARIANT_COUNTERFACTUAL,
    VARIANT_ORIGINAL,
    VARIANT_RECONSTRUCTION,
)

PERSON_COLUMN = "person"
PERSON_VALUE_COLUMN = "person_value"
MODALITY_IMAGE, MODALITY_TEXT, MODALITY_BOTH = "image", "text", "both"
MODALITIES = (MODALITY_IMAGE, MODALITY_TEXT, MODALITY_BOTH)
_BASE = "_base_value"


def has_readings(frame: pl.DataFrame | None) -> bool:
    """Whether ``frame`` (a pool or predictions) holds person-word readings."""
    return frame is not None and PERSON_VALUE_COLUMN in frame.columns


def _with_base_value(pool: pl.DataFrame) -> pl.DataFrame:
    """``pool`` with ``_base_value``: the value whose word a row's base reading says (module doc)."""
    variants = set(pool["variant"].unique().to_list()) if pool.height else set()
    if variants <= {VARIANT_COUNTERFACTUAL}:  # evaluate-only sets: no member is the source
        return pool.with_columns(pl.col("group").alias(_BASE))
    sources = (pool.filter(pl.col("variant") == VARIANT_ORIGINAL)
               .group_by("attribute", "source_id").agg(pl.col("group").drop_nulls().first().alias(_BASE)))
    if VARIANT_RECONSTRUCTION in variants:  # a generated pool without originals still has its sources' value
        made = (pool.filter(pl.col("variant") == VARIANT_RECONSTRUCTION)
                .group_by("attribute", "source_id").agg(pl.col("group").drop_nulls().first().alias("_made")))
        sources = sources.join(made, on=["attribute", "source_id"], how="full", coalesce=True).select(
            "attribute", "source_id", pl.coalesce(_BASE, "_made").alias(_BASE))
    return pool.join(sources, on=["attribute", "source_id"], how="left", maintain_order="left")


def _needed_values(pool: pl.DataFrame, modalities: Sequence[str]) -> pl.DataFrame:
    """One row per (pool row, value whose word it is asked with): ``_row`` and ``person_value``."""
    text, both, image = MODALITY_TEXT in modalities, MODALITY_BOTH in modalities, MODALITY_IMAGE in modalities
    rows = _with_base_value(pool.with_row_index("_row"))
    parts = [rows.select("_row", pl.col(_BASE).alias(PERSON_VALUE_COLUMN))]
    variants = set(rows["variant"].unique().to_list()) if rows.height else set()
    counterfactuals = rows.filter(pl.col("variant") == VARIANT_COUNTERFACTUAL)
    if variants <= {VARIANT_COUNTERFACTUAL}:
        if image or text:  # every member with every value of its set
            groups = counterfactuals.filter(pl.col("set_id").is_not_null()).group_by("attribute", "set_id").agg(
                pl.col("group").drop_nulls().unique().alias(PERSON_VALUE_COLUMN))
            parts.append(counterfactuals.join(groups, on=["attribute", "set_id"]).select("_row", PERSON_VALUE_COLUMN)
                         .explode(PERSON_VALUE_COLUMN))
    else:
        if both:
            parts.append(counterfactuals.select("_row", pl.col("group").alias(PERSON_VALUE_COLUMN)))
        if text:  # the reference read with each target's word
            if VARIANT_RECONSTRUCTION in variants:
                references = rows.filter((pl.col("variant") == VARIANT_RECONSTRUCTION) & ~pl.col("control").fill_null(False))
                keys = ["attribute", "set_id"]
            else:
                references = rows.filter(pl.col("variant") == VARIANT_ORIGINAL)
                keys = ["attribute", "source_id"]
            targets = counterfactuals.filter(pl.all_horizontal(pl.col(k).is_not_null() for k in keys)).group_by(keys).agg(
                pl.col("group").drop_nulls().unique().alias(PERSON_VALUE_COLUMN))
            parts.append(references.join(targets, on=keys).select("_row", PERSON_VALUE_COLUMN).explode(PERSON_VALUE_COLUMN))
    needed = pl.concat([p.with_columns(pl.col(PERSON_VALUE_COLUMN).cast(pl.String)) for p in parts])
    return needed.unique(maintain_order=True).sort("_row", maintain_order=True)


def with_readings(pool: pl.DataFrame, words: PersonWords | None, modalities: Sequence[str] = (MODALITY_IMAGE,)
                  ) -> pl.DataFrame:
    """``pool`` with one row per reading it needs (module doc), ``person`` and ``person_value`` added;
    ``words`` None (no template has ``{person}``): ``pool`` as it is."""
    if words is None:
        return pool
    needed = _needed_values(pool, modalities)
    expanded = pool.with_row_index("_row").join(needed, on="_row", how="inner", maintain_order="right")
    spoken = [words.word(a, v) for a, v in expanded.select("attribute", PERSON_VALUE_COLUMN).iter_rows()]
    return expanded.drop("_row").with_columns(pl.Series(PERSON_COLUMN, spoken, dtype=pl.String)).select(
        *pool.columns, PERSON_COLUMN, PERSON_VALUE_COLUMN)


def base_readings(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per pool row: its base reading (module doc); ``frame`` itself without readings."""
    if not has_readings(frame) or frame.height == 0:
        return frame
    based = _with_base_value(frame)
    return based.filter(pl.col(PERSON_VALUE_COLUMN).eq_missing(pl.col(_BASE))).drop(_BASE)
