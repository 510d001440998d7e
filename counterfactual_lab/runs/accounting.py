"""Row accounting: rows in = valid + quarantined; planned work items = kept + dropped + failed.
Every run's manifest carries it, and any gap in it is named."""

from __future__ import annotations

from typing import Any

import polars as pl


def row_accounting(rows_in: int, valid: int, quarantined: int, counterfactuals: pl.DataFrame) -> dict[str, Any]:
    """Rows in = valid + quarantined; planned = kept + dropped + failed, with drop reasons."""
    if counterfactuals.is_empty():
        kept = dropped = failed = 0
        by_reason: dict[str, int] = {}
    else:
        failed_mask = pl.col("status") == "failed"
        kept = counterfactuals.filter(pl.col("kept")).height
        failed = counterfactuals.filter(failed_mask).height
        dropped_rows = counterfactuals.filter(~pl.col("kept") & ~failed_mask)
        dropped = dropped_rows.height
        by_reason = {
            str(reason): int(n)
            for reason, n in dropped_rows.group_by("drop_reason").len().sort("drop_reason").iter_rows()
        }
    return {
        "rows_in": rows_in,
        "valid": valid,
        "quarantined": quarantined,
        "planned": counterfactuals.height,
        "kept": kept,
        "dropped": dropped,
        "failed": failed,
        "dropped_by_reason": by_reason,
    }


