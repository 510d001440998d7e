"""The people's review of a run in a few lines: what the HTML report and ``cflab report`` show near
the top (from the run's manifest and the review rows of its metrics; :mod:`counterfactual_lab.review.figures`)."""

from __future__ import annotations

import posixpath
from typing import Any

import polars as pl

from counterfactual_lab.report.sentences import number, percent
from counterfactual_lab.review.figures import (
    FEW_LABELS,
    HUMAN_VALIDITY_RATE,
    INTER_RATER_AGREEMENT,
    JUDGE_FALSE_ACCEPT_RATE,
    JUDGE_FALSE_REJECT_RATE,
    JUDGE_HUMAN_AGREEMENT,
    is_review_row,
)


def _overall(metrics: pl.DataFrame, metric: str, label: str | None = None) -> dict[str, Any] | None:
    if metrics.is_empty() or "stratum" not in metrics.columns:
        return None
    rows = metrics.filter(is_review_row(metrics) & (pl.col("metric") == metric) & pl.col("attribute").is_null())
    rows = rows.filter(pl.col("label").is_null() if label is None else pl.col("label") == label)
    return rows.row(0, named=True) if rows.height else None


def _figure(row: dict[str, Any] | None, fmt: Any) -> str:
    if row is None:
        return "not computed"
    if row["value"] is None:
        return f"undefined: {row['note']}"
    interval = f" [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]" if row["ci_low"] is not None else ""
    return f"{fmt(row['value'])}{interval}"


def review_lines(manifest: dict[str, Any], metrics: pl.DataFrame) -> list[str]:
    """The review's figures in a few lines (the report's and ``cflab report``'s, near the top)."""
    review = manifest.get("review")
    if not review or _overall(metrics, HUMAN_VALIDITY_RATE) is None:
        if (manifest.get("row_accounting") or {}).get("planned") == 0:
            return []  # nothing was generated (evaluate-only data): nothing for people to check
        folder = posixpath.dirname(str((manifest.get("tables") or {}).get("counterfactuals") or "")) or "OUT/<run>"
        return [f"People's review: none yet. Check the judge: cflab review {folder} --reviewer NAME, then --apply."]
    validity = _overall(metrics, HUMAN_VALIDITY_RATE)
    n, reviewers = validity["n"], review.get("reviewers") or []
    lines = [f"People's review: {review.get('reviewed_counterfactuals', n)} counterfactual(s) reviewed by "
             f"{len(reviewers)} reviewer(s) ({', '.join(reviewers)}); {n} with a verdict"
             + (f"; few labels (n = {n}): read these as a hint" if n < FEW_LABELS else "") + ".",
             f"  valid in people's eyes (target shown, nothing else that matters changed): {_figure(validity, percent)}",
             f"  judge vs people: Cohen's κ {_figure(_overall(metrics, JUDGE_HUMAN_AGREEMENT), number)}",
             f"  judge's false accepts (of what it passed, people reject): "
             f"{_figure(_overall(metrics, JUDGE_FALSE_ACCEPT_RATE), percent)}; false rejects (of what it failed, "
             f"people accept): {_figure(_overall(metrics, JUDGE_FALSE_REJECT_RATE), percent)}",
             f"  reviewers agree: Krippendorff's α {_figure(_overall(metrics, INTER_RATER_AGREEMENT), number)}"]
    rejected, excluded = review.get("rejected_sets") or [], review.get("excluded_sets") or []
    if rejected:
        where = (f"{len(excluded)} left out of the metrics (review.exclude_rejected)" if review.get("exclude_rejected")
                 else "kept in the metrics (review.exclude_rejected: false)")
        lines.append(f"  sets people rejected: {len(rejected)}; {where}")
    return lines
