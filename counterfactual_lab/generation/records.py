"""What happened to one work item (:class:`GenerationRecord`: generated, served from the store, or
failed), as a generation task returns and stores it (data-only JSON), and the counts of a run's records."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any

GENERATED = "generated"
CACHED = "cached"
FAILED = "failed"


@dataclass
class GenerationRecord:
    """What happened to one work item."""

    content_key: str
    image_uri: str | None
    status: str  # "generated" | "cached" | "failed"
    error: str | None = None
    oom_halvings: int = 0
    seconds: float = 0.0  # this item's share of its sub-batch's wall time

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (what a stored generation result holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> GenerationRecord:
        """The record ``data`` describes; ``ValueError`` naming the field unless ``data`` is
        exactly what :meth:`to_dict` writes (the same keys, each of its type, a known status).

        Stored results are decoded with this alone: it builds nothing but a GenerationRecord.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a generation record must be an object, got {type(data).__name__}")
        if set(data) != RECORD_FIELDS:
            unknown, missing = sorted(set(data) - RECORD_FIELDS), sorted(RECORD_FIELDS - set(data))
            raise ValueError(f"a generation record has fields {sorted(RECORD_FIELDS)}; unknown {unknown}, missing {missing}")
        for name, kinds in _FIELD_TYPES.items():
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"generation record field {name!r} has type {type(value).__name__}")
        if data["status"] not in (GENERATED, CACHED, FAILED):
            raise ValueError(f"generation record status {data['status']!r} is not generated, cached or failed")
        if data["oom_halvings"] < 0 or not 0.0 <= data["seconds"] < float("inf"):
            raise ValueError("generation record counts must be finite and not negative")
        return cls(**data)


RECORD_FIELDS = frozenset(("content_key", "image_uri", "status", "error", "oom_halvings", "seconds"))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "content_key": (str,),
    "image_uri": (str, type(None)),
    "status": (str,),
    "error": (str, type(None)),
    "oom_halvings": (int,),
    "seconds": (int, float),
}


def as_cache_hits(records: list[Any]) -> list[Any]:
    """The records of a batch served whole by the orchestrator's task cache, as this run saw them.

    A cached task result holds the records of the run that made the images (status
    ``generated``); for this run those images were reused, so they count as cache hits.
    Failures stay failures.
    """
    return [replace(r, status="cached", seconds=0.0) if r.status == "generated" else r for r in records]


def generation_counts(records: list[Any]) -> dict[str, int]:
    """How many *images* were generated, served from the store, or failed; OOM halvings.

    One generation record per unique content key: work items that share a key (an ``img2img``
    reconstruction asked for by several attributes) share one image and count once here, while
    ``row_accounting`` and a failed run's ``failure`` count work items (candidate rows).
    """
    statuses = Counter(record.status for record in records)
    return {
        "generated": statuses.get("generated", 0),
        "cache_hits": statuses.get("cached", 0),
        "failed": statuses.get("failed", 0),
        "oom_halvings": sum(record.oom_halvings for record in records),
    }
