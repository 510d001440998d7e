"""The candidate table the judge reads: one row per planned work item with its generation record, and the counts of what generation did."""

from __future__ import annotations

from typing import Any

import polars as pl

from counterfactual_lab.config.methods import method_facts
from counterfactual_lab.plan.work_items import WorkItem

CANDIDATE_SCHEMA = {
    "source_id": pl.String,
    "source_key": pl.String,
    "source_image_uri": pl.String,
    "attribute": pl.String,
    "source_value": pl.String,
    "target_value": pl.String,
    "variant": pl.String,
    "control": pl.Boolean,
    "set_id": pl.String,
    "method": pl.String,
    "seed": pl.Int64,
    "caption": pl.String,
    "counterfactual_caption": pl.String,
    "explanation": pl.String,
    "instruction": pl.String,
    "content_key": pl.String,
    "image_uri": pl.String,
    "status": pl.String,
    "error": pl.String,
    "oom_halvings": pl.Int64,
}


# text2image-sets: (attribute, value) of each attribute a set member varies, in template order.
ATTRIBUTE_VALUES_TYPE = pl.List(pl.Struct({"attribute": pl.String, "value": pl.String}))


def candidates_frame(items: list[WorkItem], records: list[Any], method: str) -> pl.DataFrame:
    """One row per planned work item, joined with its generation record (by content key).

    ``variant`` ("counterfactual" | "reconstruction"), ``control`` and ``set_id`` (one per
    (source, attribute, seed), see :func:`counterfactual_lab.plan.work_items.set_id_for`) say how the
    judge groups the candidates and how the evaluation pool uses them. Items that share a
    content key share its record (and image). ``inpaint`` adds ``mask_uri``; ``text2image-sets``
    adds ``attribute_values`` (:data:`ATTRIBUTE_VALUES_TYPE`).
    """
    by_key = {record.content_key: record for record in records}
    rows = []
    for item in items:
        record = by_key.get(item.content_key)
        rows.append(
            {
                "source_id": item.source_id,
                "source_key": item.source_key,
                "source_image_uri": item.source_image_uri,
                "attribute": item.attribute,
                "source_value": item.source_value,
                "target_value": item.target_value,
                "variant": item.variant,
                "control": item.control,
                "set_id": item.set_id,
                "method": method,
                "seed": item.seed,
                "caption": item.caption,
                "counterfactual_caption": item.counterfactual_caption,
                "explanation": item.explanation,
                "instruction": item.instruction,
                "content_key": item.content_key,
                "image_uri": record.image_uri if record else None,
                "status": record.status if record else "failed",
                "error": (record.error if record else "no generation record (batch lost)"),
                "oom_halvings": record.oom_halvings if record else 0,
            }
        )
    frame = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)
    facts = method_facts(method)
    if facts.reads_mask:  # the mask each image was edited inside (null: its source had none)
        frame = frame.with_columns(pl.Series("mask_uri", [item.mask_uri for item in items], dtype=pl.String))
    if not facts.reads_source:  # a text-to-image set member's value of each attribute it varies
        values = [[{"attribute": a, "value": v} for a, v in item.attribute_values] for item in items]
        frame = frame.with_columns(pl.Series("attribute_values", values, dtype=ATTRIBUTE_VALUES_TYPE))
    return frame


