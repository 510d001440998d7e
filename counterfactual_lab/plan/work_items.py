"""Plan the work: each valid row × attribute × value × seed becomes one work item.

With ``generation.reconstruction`` (the default) every image that is compared goes through
the same editor. For each valid row and audited attribute the plan asks, for each seed
``seed … seed + seeds_per_target − 1``, for

* a **reconstruction**: the source's own value (``target_value = source_value``, null when
  unknown), the caption unchanged, through the same editor in the same way (below);
* a **counterfactual** for every other value the config lists for the attribute;

and one **control** item: a reconstruction at seed ``seed + seeds_per_target``, a seed no
candidate uses, which measures the generator's own variation when nothing protected changes.
The reconstruction and the counterfactuals of one (source, attribute, seed) form a *set*
(:func:`set_id_for`). With ``reconstruction: false`` the plan is the older one:
counterfactuals only, no reconstruction, no control.

How each method reconstructs (the prompt it gets, so that a reconstruction differs from its
counterfactuals in the target value alone):

* ``img2img``: the unchanged caption (a counterfactual gets the rewritten caption);
* ``instruct-pix2pix``: the instruction template with target = source ("make the man a
  man"); "make no changes" when the source value is unknown;
* ``ledits``: the source concept as both the reversed and the target concept (LEDITS++
  pushes away from and towards "man"); no concept at all (a plain inversion
  reconstruction) when the source value is unknown.

A work item's ``content_key`` identifies the pixels it will produce. A counterfactual's
key hashes the source image's sha256, the change, the seed and the generator's
fingerprint. A reconstruction's key hashes what its editor reads instead
(:func:`reconstruction_key`): an ``img2img`` reconstruction reads only the caption, so
the gender and the age reconstruction of one source and seed share a key and are
generated once; the other methods read the attribute's value and get a key per value.
Identical work therefore has one key, whatever run, dataset or attribute asks for it.

**Joint edits** (``attributes.intersections``, where the method's ``joint_edits`` fact holds:
``img2img``, ``instruct-pix2pix``): per row and intersection, the same sets for the joint attribute
(``race+gender``, :mod:`counterfactual_lab.config.intersections`) — a reconstruction, every
combination of the listed values that changes *every* attribute of the intersection from the
source's (``White female`` → ``Black male``: the caption rewritten once per attribute; one
instruction, "make the woman a Black man"), and the control. A row whose value of some attribute in
the intersection is unknown gets no joint edit (a joint transition needs its source).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from counterfactual_lab.config.intersections import joint_name, joint_targets, joint_value
from counterfactual_lab.config.methods import method_facts
from counterfactual_lab.plan.captions import (
    detect_value,
    edit_instruction,
    joint_edit_instruction,
    rewrite_caption,
)

if TYPE_CHECKING:
    import polars as pl

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.config.dataset_spec import DatasetSpec

# The images an audit compares (predictions.parquet `variant`, names other tools rely on): the
# dataset's originals, and the generated reconstructions and counterfactuals.
VARIANT_ORIGINAL = "original"
VARIANT_COUNTERFACTUAL = "counterfactual"
VARIANT_RECONSTRUCTION = "reconstruction"
VARIANTS = (VARIANT_ORIGINAL, VARIANT_RECONSTRUCTION, VARIANT_COUNTERFACTUAL)
# The instruction of an instruct-pix2pix reconstruction whose source value is unknown.
NO_CHANGE_INSTRUCTION = "make no changes"
RECONSTRUCTION_EXPLANATION = "reconstruction: caption unchanged"


def generator_fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of everything that changes a generator's output."""
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def set_id_for(source_id: str, attribute: str, seed: int) -> str:
    """The id of the set of (source, attribute, seed): its reconstruction and counterfactuals.

    Stable (a hash of the three, 16 hex digits), so runs and tables join on it.
    """
    payload = json.dumps(["set", str(source_id), attribute, int(seed)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkItem:
    """One image to generate. Small and picklable: tasks pass these, never images."""

    source_id: str
    source_key: str  # sha256 of the source image bytes
    source_image_uri: str  # the source image (RGB PNG) in the content-addressed store
    caption: str
    attribute: str
    source_value: str | None  # None when neither the dataset nor the caption says
    target_value: str | None  # a reconstruction's target is its source value (None when unknown)
    seed: int
    counterfactual_caption: str  # a reconstruction's is the caption, unchanged
    explanation: str  # human-readable list of the caption substitutions
    instruction: str  # e.g. "make the man a woman" (instruct-pix2pix)
    generator: str  # generator fingerprint
    content_key: str
    variant: str = VARIANT_COUNTERFACTUAL  # "counterfactual" | "reconstruction"
    control: bool = False  # the reconstruction at the seed no candidate uses
    # text2image-sets: the member's value of each attribute its template varies, in template order.
    attribute_values: tuple[tuple[str, str], ...] = ()
    # inpaint: the source's mask in the image store (white = edit), part of the content key.
    mask_uri: str | None = None

    @property
    def set_id(self) -> str:
        """See :func:`set_id_for` (a control item's set holds the control alone)."""
        return set_id_for(self.source_id, self.attribute, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def work_item_key(
    source_key: str, attribute: str, source_value: str | None, target_value: str, seed: int,
    counterfactual_caption: str, generator: str,
) -> str:
    """The content key of a counterfactual."""
    payload = json.dumps(
        [source_key, attribute, source_value, target_value, seed, counterfactual_caption, generator]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def reconstruction_key(
    method: str, source_key: str, attribute: str, source_value: str | None, seed: int,
    caption: str, instruction: str, generator: str,
) -> str:
    """The content key of a reconstruction: what its editor reads, the seed and the generator.

    What it reads is the method's ``reconstruction_reads`` fact: the caption only (``img2img``,
    ``inpaint``, whose mask, per source, joins the key later in ``masks.attach_masks``), the
    instruction (``instruct-pix2pix``), the value's concept word (``ledits``: the words depend on
    the value, not the attribute, and overrides are in the generator fingerprint), or everything
    the item carries, so nothing is shared that might differ.
    """
    reads: list[Any] = {
        "caption": ["caption", caption],
        "instruction": ["instruction", instruction],
        "concept": ["concept", source_value],
        "item": ["item", attribute, source_value, caption, instruction],
    }[method_facts(method).reconstruction_reads]
    payload = json.dumps([VARIANT_RECONSTRUCTION, source_key, reads, seed, generator])
    return hashlib.sha256(payload.encode()).hexdigest()


def chunk(items: list[Any], size: int) -> list[list[Any]]:
    """Split ``items`` into consecutive batches of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def unique_by_content_key(items: list[WorkItem]) -> list[WorkItem]:
    """The first item of each content key, in plan order: what has to be generated.

    Items sharing a key (an ``img2img`` reconstruction asked for by several attributes)
    produce the same pixels, so one of them is generated and every row reads its image.
    """
    seen: dict[str, WorkItem] = {}
    for item in items:
        seen.setdefault(item.content_key, item)
    return list(seen.values())


def plan_work_items(
    valid: "pl.DataFrame", config: "AuditConfig", spec: "DatasetSpec", generator_identity: str | None = None,
    precision: dict[str, Any] | None = None,
) -> list[WorkItem]:
    """Every work item of the audit, in a deterministic order (see the module docstring).

    The source value comes from the dataset's attribute column, else from the caption
    (``detect_value``); when neither says, every listed value is a counterfactual and the
    reconstruction's value is null. Per (row, attribute), in order: for each seed the
    reconstruction then the counterfactuals in the config's order, then the control. With
    ``generation.reconstruction`` off, per (row, attribute): for each listed value other than
    the source's, each seed (the older plan, item for item). Rows are planned in dataset order.

    ``generator_identity`` (``model_identity(...).key``: the sha256 of the model's files, or a
    hub commit) names the generator in every key in place of the config's spelling of its path,
    so a relative and an absolute path to one model plan the same keys and share every image.

    ``precision`` (:func:`counterfactual_lab.models.devices.generation_precision`: the device type, the
    dtype and the versions of the packages that change pixels) enters the fingerprint too, so an
    fp16 CUDA image is never served to an fp32 CPU run. The audit flow always passes it; without
    it (an empty dict or None) the fingerprint is the config's alone.
    """
    generation = config.generation
    fields = generation.fingerprint_fields()
    if generator_identity is not None:
        fields.update(model=generator_identity, revision=None)
    if precision:
        fields["precision"] = dict(precision)
    fingerprint = generator_fingerprint(fields)
    seeds = list(range(generation.seed, generation.seed + generation.seeds_per_target))
    control_seed = generation.seed + generation.seeds_per_target
    targets_by_attribute = {
        # A value listed twice is planned once.
        attribute: list(dict.fromkeys(spec.canonical_value(attribute, value) or value for value in values))
        for attribute, values in config.attributes.items()
    }
    planner = _RowPlanner(generation.method, fingerprint)
    joint = (getattr(config, "intersections", None) or []) if method_facts(generation.method).joint_edits else []
    items: list[WorkItem] = []
    for row in valid.iter_rows(named=True):
        if not row.get("image_uri"):
            raise ValueError(f"row {row['id']!r} has no stored source image; ingest with an image store")
        for attribute, targets in targets_by_attribute.items():
            items.extend(
                planner.items(row, attribute, targets, seeds, control_seed if generation.reconstruction else None)
            )
        for names in joint:
            items.extend(planner.joint_items(row, names, targets_by_attribute, seeds,
                                             control_seed if generation.reconstruction else None))
    return items


class _RowPlanner:
    """The items of one (row, attribute)."""

    def __init__(self, method: str, fingerprint: str) -> None:
        self.method = method
        self.fingerprint = fingerprint

    def items(
        self, row: dict[str, Any], attribute: str, targets: list[str], seeds: list[int], control_seed: int | None
    ) -> list[WorkItem]:

        source_value = row.get(attribute) or detect_value(row["caption"], attribute)
        changes = [t for t in targets if source_value is None or t.casefold() != source_value.casefold()]
        counterfactuals = [self._counterfactual(row, attribute, source_value, target) for target in changes]
        if control_seed is None:  # the older plan, in its order: target by target
            return [make(seed) for make in counterfactuals for seed in seeds]
        items: list[WorkItem] = []
        for seed in seeds:  # a set's members side by side, so a batch tends to hold whole sets
            items.append(self._reconstruction(row, attribute, source_value, seed, control=False))
            items.extend(make(seed) for make in counterfactuals)
        items.append(self._reconstruction(row, attribute, source_value, control_seed, control=True))
        return items

    def joint_items(
        self, row: dict[str, Any], names: list[str], targets: dict[str, list[str]], seeds: list[int],
        control_seed: int | None,
    ) -> list[WorkItem]:
        """The joint sets of one row and intersection (module doc): none when a source value is unknown."""
        sources = [row.get(name) or detect_value(row["caption"], name) for name in names]
        if any(value is None for value in sources):
            return []
        attribute, source_value = joint_name(names), joint_value(sources)
        caption = row["caption"]
        changes = []
        for combination in joint_targets(sources, targets, names):
            text = caption
            for name, source, target in zip(names, sources, combination):
                text = rewrite_caption(text, name, source, target).caption
            instruction = joint_edit_instruction(list(zip(names, sources, combination)), caption)
            changes.append((joint_value(combination), text, instruction))

        def counterfactual(target: str, text: str, instruction: str, seed: int) -> WorkItem:
            key = work_item_key(row["content_key"], attribute, source_value, target, seed, text, self.fingerprint)
            return self._item(row, attribute, source_value, target, seed, text, f"joint edit: {source_value} → {target}",
                              instruction, key, VARIANT_COUNTERFACTUAL, False)

        def reconstruction(seed: int, control: bool) -> WorkItem:
            instruction = joint_edit_instruction(list(zip(names, sources, sources)), caption)
            key = reconstruction_key(self.method, row["content_key"], attribute, source_value, seed, caption, instruction,
                                     self.fingerprint)
            return self._item(row, attribute, source_value, source_value, seed, caption, RECONSTRUCTION_EXPLANATION,
                              instruction, key, VARIANT_RECONSTRUCTION, control)

        if control_seed is None:
            return [counterfactual(*change, seed) for change in changes for seed in seeds]
        items: list[WorkItem] = []
        for seed in seeds:
            items.append(reconstruction(seed, control=False))
            items.extend(counterfactual(*change, seed) for change in changes)
        items.append(reconstruction(control_seed, control=True))
        return items

    def _counterfactual(self, row: dict[str, Any], attribute: str, source_value: str | None, target: str):

        text = rewrite_caption(row["caption"], attribute, source_value, target)
        instruction = edit_instruction(attribute, source_value, target, row["caption"])

        def at(seed: int) -> WorkItem:
            key = work_item_key(
                row["content_key"], attribute, source_value, target, seed, text.caption, self.fingerprint
            )
            return self._item(row, attribute, source_value, target, seed, text.caption, text.explanation,
                              instruction, key, VARIANT_COUNTERFACTUAL, False)

        return at

    def _reconstruction(
        self, row: dict[str, Any], attribute: str, source_value: str | None, seed: int, *, control: bool
    ) -> WorkItem:

        caption = row["caption"]
        instruction = (
            NO_CHANGE_INSTRUCTION if source_value is None
            else edit_instruction(attribute, source_value, source_value, caption)
        )
        key = reconstruction_key(
            self.method, row["content_key"], attribute, source_value, seed, caption, instruction, self.fingerprint
        )
        return self._item(row, attribute, source_value, source_value, seed, caption, RECONSTRUCTION_EXPLANATION,
                          instruction, key, VARIANT_RECONSTRUCTION, control)

    def _item(self, row, attribute, source_value, target, seed, caption, explanation, instruction, key,
              variant, control) -> WorkItem:
        return WorkItem(
            source_id=str(row["id"]),
            source_key=row["content_key"],
            source_image_uri=row["image_uri"],
            caption=row["caption"],
            attribute=attribute,
            source_value=source_value,
            target_value=target,
            seed=seed,
            counterfactual_caption=caption,
            explanation=explanation,
            instruction=instruction,
            generator=self.fingerprint,
            content_key=key,
            variant=variant,
            control=control,
        )


def pack(entries: list[Any], size: int, group_of: Any = None, *, split_groups: bool = True) -> list[list[Any]]:
    """Consecutive parts of at most ``size`` entries; with ``group_of(entry)``, whole groups are kept
    together where they fit. A group larger than ``size`` is split into parts of ``size``, or with
    ``split_groups=False`` is a part of its own."""
    if group_of is None:
        return [entries[i : i + size] for i in range(0, len(entries), size)]
    groups: dict[Any, list[Any]] = {}
    for entry in entries:
        groups.setdefault(group_of(entry), []).append(entry)
    parts: list[list[Any]] = []
    current: list[Any] = []
    for members in groups.values():
        if len(current) + len(members) > size and current:
            parts.append(current)
            current = []
        if len(members) > size:
            if split_groups:
                parts.extend(members[i : i + size] for i in range(0, len(members), size))
            else:
                parts.append(members)
            continue
        current.extend(members)
    if current:
        parts.append(current)
    return parts
