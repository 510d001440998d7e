"""Plan the work: each valid row × attribute change × seed becomes one work item.

A work item's ``content_key`` identifies the pixels it will produce: the source image's
sha256, the change, the seed and the generator's fingerprint. Identical work therefore has
one key, whatever run or dataset asks for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from counterfactual_lab.config import AuditConfig
    from counterfactual_lab.spec import DatasetSpec


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


def plan_work_items(
    valid: "pl.DataFrame", config: "AuditConfig", spec: "DatasetSpec", generator_identity: str | None = None
) -> list[WorkItem]:
    """Every valid row × requested attribute change × seed, as work items.

    The source value comes from the dataset's attribute column, else from the caption
    (``detect_value``); when neither says, the row is planned for every target. A target
    equal to the source value is not a change and is skipped. Rows are planned in dataset
    order, so the plan (and every key in it) is deterministic.

    ``generator_identity`` (``model_identity(...).key``: the sha256 of the model's files, or a
    hub commit) names the generator in every key in place of the config's spelling of its path,
    so a relative and an absolute path to one model plan the same keys and share every image.
    """
    from counterfactual_lab.text_counterfactual import detect_value, edit_instruction, rewrite_caption

    generation = config.generation
    fields = generation.fingerprint_fields()
    if generator_identity is not None:
        fields.update(model=generator_identity, revision=None)
    fingerprint = generator_fingerprint(fields)
    seeds = range(generation.seed, generation.seed + generation.seeds_per_target)
    targets_by_attribute = {
        attribute: [spec.canonical_value(attribute, value) or value for value in values]
        for attribute, values in config.attributes.items()
    }
    items: list[WorkItem] = []
    for row in valid.iter_rows(named=True):
        if not row.get("image_uri"):
            raise ValueError(f"row {row['id']!r} has no stored source image; ingest with an image store")
        for attribute, targets in targets_by_attribute.items():
            source_value = row.get(attribute) or detect_value(row["caption"], attribute)
            for target in targets:
                if source_value is not None and target.casefold() == source_value.casefold():
                    continue
                text = rewrite_caption(row["caption"], attribute, source_value, target)
                instruction = edit_instruction(attribute, source_value, target, row["caption"])
                for seed in seeds:
                    key = work_item_key(
                        row["content_key"], attribute, source_value, target, seed, text.caption, fingerprint
                    )
                    items.append(
                        WorkItem(
                            source_id=str(row["id"]),
                            source_key=row["content_key"],
                            source_image_uri=row["image_uri"],
                            caption=row["caption"],
                            attribute=attribute,
                            source_value=source_value,
                            target_value=target,
                            seed=seed,
                            counterfactual_caption=text.caption,
                            explanation=text.explanation,
                            instruction=instruction,
                            generator=fingerprint,
                            content_key=key,
                        )
                    )
    return items
