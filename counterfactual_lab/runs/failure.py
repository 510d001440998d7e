"""When a run has failed, and how it says so.

A run *fails* when more than ``runtime.max_failed_fraction`` of its planned work items failed
to generate. Work items are the rows of the run's candidate table (``counterfactuals.parquet``,
one per planned item, status ``failed`` when its image could not be made), the same rows that
the manifest's ``row_accounting`` counts::

    failed_fraction = failed work items / planned work items   (0 when nothing was planned)
    failed          = failed_fraction > max_failed_fraction

Not generation records: several work items can share one content key (an ``img2img``
reconstruction asked for by several attributes is made once), so records count *images*
(the manifest's ``generation_counts``), and an image that failed fails every item that needed it.

A failed run still publishes everything it has, but its manifest says ``"status": "failed"``
with the counts and the commonest error (:meth:`FailedItems.manifest_entry`), its report
and ``cflab report`` open with :func:`failure_banner`, it is not "complete" (the next audit of
the same config and data runs it again, reusing every image already made), and the audit
raises :class:`~counterfactual_lab.errors.TooManyFailedItems`, so ``cflab`` exits 1 with
:meth:`FailedItems.message` as its one line.

Errors are grouped by exception type (``MemoryError``, ``FileNotFoundError``, ...), the part
of a recorded error that is the same for every item it hits; the line quotes the most
frequent full message of the commonest type.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

RUN_COMPLETE, RUN_FAILED = "complete", "failed"
MAX_QUOTED_ERROR_CHARS = 300
_EXCEPTION_NAME = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception|Exit|Interrupt|Warning))\s*:")


def error_kind(error: str) -> str:
    """The exception type named in a recorded error (``"MemoryError: ..."`` -> ``MemoryError``),
    else the error's text up to its first colon."""
    match = _EXCEPTION_NAME.search(error)
    if match:
        return match.group(1)
    return error.split(":", 1)[0].strip() or "unknown error"


def _one_line(text: str, limit: int = MAX_QUOTED_ERROR_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class FailedItems:
    """How many of a run's work items failed, against the limit, and the commonest error."""

    planned: int  # work items (candidate rows)
    failed: int  # of those, the ones whose image could not be made
    max_fraction: float
    commonest_error: str | None = None  # the most frequent message of the commonest error type
    commonest_count: int = 0  # failed items whose error has that type

    @property
    def fraction(self) -> float:
        return self.failed / self.planned if self.planned else 0.0

    @property
    def over_limit(self) -> bool:
        return self.fraction > self.max_fraction

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's ``failure`` object."""
        return {
            "reason": "too many failed work items",
            "unit": "work items (rows of counterfactuals.parquet, as in row_accounting)",
            "failed_items": self.failed,
            "planned_items": self.planned,
            "failed_fraction": round(self.fraction, 6),
            "max_failed_fraction": self.max_fraction,
            "commonest_error": self.commonest_error,
            "commonest_error_count": self.commonest_count,
        }

    def message(self, run_uri: str) -> str:
        """One line for the terminal: the counts, the limit, the commonest error, where to look."""
        return _sentence(self.manifest_entry()) + f"; published as failed: {run_uri}"


def count_failed_items(candidates: pl.DataFrame, max_fraction: float) -> FailedItems:
    """:class:`FailedItems` of one run's candidate table: one row per planned work item, with
    ``status`` (``failed`` when its image could not be made) and ``error``. A frame without
    rows (an evaluate-only dataset plans nothing) has nothing failed."""
    if candidates.is_empty():
        return FailedItems(planned=0, failed=0, max_fraction=max_fraction)
    failed_rows = candidates.filter(pl.col("status") == "failed")
    errors = [str(error or "no error recorded") for error in failed_rows["error"].to_list()]
    if not errors:
        return FailedItems(planned=candidates.height, failed=0, max_fraction=max_fraction)
    kinds = Counter(error_kind(error) for error in errors)
    kind, count = min(kinds.items(), key=lambda item: (-item[1], item[0]))  # most items; ties by name
    example, _ = Counter(e for e in errors if error_kind(e) == kind).most_common(1)[0]
    return FailedItems(
        planned=candidates.height, failed=len(errors), max_fraction=max_fraction,
        commonest_error=_one_line(example), commonest_count=count,
    )


def _sentence(failure: Mapping[str, Any]) -> str:
    failed, planned = failure.get("failed_items"), failure.get("planned_items")
    fraction, limit = failure.get("failed_fraction") or 0.0, failure.get("max_failed_fraction")
    limit_text = f"{limit:.1%}" if isinstance(limit, int | float) else "?"
    text = (
        f"{failed} of {planned} work items failed ({fraction:.1%}, over runtime.max_failed_fraction "
        f"{limit_text})"
    )
    if failure.get("commonest_error"):
        text += f"; commonest error ({failure.get('commonest_error_count')} items): {failure['commonest_error']}"
    return text


def is_failed(manifest: Mapping[str, Any]) -> bool:
    """True when ``manifest`` marks its run failed."""
    return manifest.get("status") == RUN_FAILED


def failure_banner(manifest: Mapping[str, Any]) -> str | None:
    """The first line of a failed run's report and of ``cflab report`` (None for other runs)."""
    if not is_failed(manifest):
        return None
    failure = manifest.get("failure") or {}
    return (
        f"RUN FAILED: {_sentence(failure)}. The tables hold what the run made; "
        "its metrics are not an audit of the planned work."
    )
