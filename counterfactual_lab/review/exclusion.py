"""``review.exclude_rejected``: an audit leaves the sets people rejected out of its metrics.

A set is rejected when people call any of its counterfactuals invalid
(:mod:`counterfactual_lab.review.figures`). With the setting on, the audit marks every row of
such a set dropped (``drop_reason`` ``rejected_by_review``) before the model under audit is asked
anything, exactly as if the judge had dropped it: the evaluation pool, every metric and the row
accounting then leave it out, and ``counterfactuals.parquet`` says why; so do the drift
metrics (the set's pairs in ``drift.parquet`` are no longer ``kept``). The manifest's
``review`` block lists the sets left out (``excluded_sets``).

The run id does not depend on the setting or on the labels (labels arrive after the run); so
the next audit of a run whose rejected sets changed recomputes it (:func:`exclusion_is_stale`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import polars as pl

from counterfactual_lab.review.figures import rejected_sets, review_table
from counterfactual_lab.review.labels import read_labels
from counterfactual_lab.review.sets import DROP_REJECTED_BY_REVIEW, members_frame, review_sets


def sets_to_exclude(candidates: pl.DataFrame, run_uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The sets of ``candidates`` people rejected in the labels beside ``run_uri`` (none without labels)."""
    labels = read_labels(run_uri, storage_options)
    if labels.is_empty() or candidates.is_empty():
        return []
    members = members_frame(review_sets(candidates, run_uri))
    return rejected_sets(review_table(labels, members))


def mark_excluded(candidates: pl.DataFrame, set_ids: Collection[str]) -> pl.DataFrame:
    """``candidates`` with every kept row of the ``set_ids`` dropped as ``rejected_by_review``."""
    if not set_ids or candidates.is_empty():
        return candidates
    hit = pl.col("set_id").is_in(list(set_ids)) & pl.col("kept").fill_null(False)
    return candidates.with_columns(
        pl.when(hit).then(pl.lit(DROP_REJECTED_BY_REVIEW)).otherwise(pl.col("drop_reason")).alias("drop_reason"),
        pl.when(hit).then(pl.lit(False)).otherwise(pl.col("kept")).alias("kept"),
    )


def mark_excluded_drift(drift: pl.DataFrame, candidates: pl.DataFrame, set_ids: Collection[str]) -> pl.DataFrame:
    """``drift`` (the judge's readings, ``drift.parquet``) with every pair that has an image of the
    ``set_ids`` no longer kept: a pair's ``kept`` means both its images were kept, and the drift
    metrics read only kept pairs."""
    if not set_ids or drift.is_empty() or candidates.is_empty():
        return drift
    keys = candidates.filter(pl.col("set_id").is_in(list(set_ids)))["content_key"].unique().to_list()
    gone = pl.col("from_key").is_in(keys) | pl.col("to_key").is_in(keys)
    return drift.with_columns((pl.col("kept").fill_null(False) & ~gone).alias("kept"))


def exclusion_is_stale(manifest: dict[str, Any], candidates: pl.DataFrame, run_uri: str,
                       storage_options: dict[str, Any] | None = None, exclude_rejected: bool | None = None) -> bool:
    """True when a published run's metrics leave out other sets than its config and labels now ask
    (``exclude_rejected`` None: the setting the run was made with)."""
    if exclude_rejected is None:
        exclude_rejected = bool(((manifest.get("config") or {}).get("review") or {}).get("exclude_rejected"))
    excluded = set((manifest.get("review") or {}).get("excluded_sets") or [])
    wanted = set(sets_to_exclude(candidates, run_uri, storage_options)) if exclude_rejected else set()
    return wanted != excluded
