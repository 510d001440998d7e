"""Plan the work: each valid row × attribute change × seed becomes one work item.

A work item's ``content_key`` identifies the pixels it will produce: the source image's
sha256, the change, the seed and the generator's fingerprint. Identical work therefore has
one key, whatever run or dataset asks for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any


def generator_fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of everything that changes a generator's output."""
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkItem:
    """One counterfactual to generate. Small and picklable: tasks pass these, never images."""

    source_id: str
    source_key: str  # sha256 of the source image bytes
    source_image_uri: str  # the source image (RGB PNG) in the content-addressed store
    caption: str
    attribute: str
    source_value: str | None  # None when the dataset does not say
    target_value: str
    seed: int
    counterfactual_caption: str
    explanation: str  # human-readable list of the caption substitutions
    instruction: str  # e.g. "make the man a woman" (instruct-pix2pix)
    generator: str  # generator fingerprint
    content_key: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def work_item_key(
    source_key: str, attribute: str, source_value: str | None, target_value: str, seed: int,
    counterfactual_caption: str, generator: str,
) -> str:
    payload = json.dumps(
        [source_key, attribute, source_value, target_value, seed, counterfactual_caption, generator]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def chunk(items: list[Any], size: int) -> list[list[Any]]:
    """Split ``items`` into consecutive batches of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
