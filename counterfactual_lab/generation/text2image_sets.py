"""Text-to-image counterfactual sets (``generation.method: text2image-sets``), SocialCounterfactuals style.

**Where the prompts come from.**

* ``generation.params.templates``: caption templates with ``{attribute}`` placeholders, e.g.
  ``"a photo of a {race} {gender} doctor"``. Each template is one *set template*; its placeholders
  must be attributes of the config's ``attributes`` section, and its members are every combination
  of the values listed there (in the config's order: the first member, every attribute at its
  first value, is the set's *reference*). No dataset is read: ``dataset`` may be omitted, or give
  only ``name`` (the run's name, default ``text2image-sets``) and ``vocabularies``; a dataset URI
  beside templates is an error (which prompts would count?).
* no templates: the **dataset's captions**. Each valid row is a set template whose members rewrite
  its caption to every combination of the configured attributes' values, through the rule-based
  text counterfactuals the editing methods use (``rewrite_caption``, one attribute after the
  other; the source value from the row's column, else from the caption). The dataset's images are
  not read; its labels carry over to every member. Rows are the dataset's, so validation,
  quarantine and the row accounting are as for any audit.

**What is generated.** For each set template and each seed ``seed, seed+1, …`` (up to
``seeds_per_target``; adaptively in rounds, see :mod:`counterfactual_lab.generation.rounds`) one *set*: every
member's image from the same initial latents (:mod:`counterfactual_lab.generation.text2image`).
A member is a :class:`~counterfactual_lab.plan.work_items.WorkItem` with ``source_id`` = the set template's
id, ``attribute`` = the varied attributes joined by ``+`` (``race+gender``), ``target_value`` =
its values joined the same way, ``attribute_values`` = the pairs, ``caption`` = the reference
prompt, ``counterfactual_caption`` = its own prompt. Its content key hashes its prompt, the
reference prompt when attention is shared, the seed and the generator: the same member is never
made twice, whatever template or run asks for it.

**What is kept.** The judge scores the members of a set against each other
(:mod:`counterfactual_lab.judge.sets`); a set is kept only when every member passes; the best
``keep_per_target`` sets of a set template are kept.

**What is published.** The kept sets, as a dataset in the SocialCounterfactuals layout under
``OUT/<run_id>/sets/`` (:func:`publish_sets`): Parquet parts with one row per member, ``image``
as the Hugging Face struct ``{bytes, path}`` (PNG bytes), ``caption``, ``counterfactual_set``,
``a1_type``, ``a1``, ``a2_type``, ``a2``, … (one pair per varied attribute, in template order;
null beyond a template's own), plus ``id``, ``label``, ``template``, ``seed`` and the judge's
scores; and ``dataset.yaml``, the dataset spec that reads it (``columns.counterfactual_set``,
``columns.attribute_pairs``). ``cflab validate --spec OUT/<run_id>/sets/dataset.yaml`` and an
evaluate-only audit (``--dataset OUT/<run_id>/sets/dataset.yaml``) read it as it is; ``cflab
audit`` with this method evaluates it itself, the same way.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from counterfactual_lab.config.methods import METHODS, check_templates, template_fields
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.plan.captions import detect_value, rewrite_caption
from counterfactual_lab.plan.work_items import (
    VARIANT_COUNTERFACTUAL,
    WorkItem,
    generator_fingerprint,
    pack,
)
from counterfactual_lab.storage.files import (
    STORED_IMAGE_MAX_BYTES,
    filesystem,
    join,
    read_bytes,
    write_bytes_atomic,
)

if TYPE_CHECKING:  # polars is imported where frames are read or made (GPU benches plan without it)
    import polars as pl

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.config.dataset_spec import DatasetSpec

# The method this module plans sets for: the one whose prompts may come from templates.
METHOD = next(name for name, method in METHODS.items() if "templates" in method.params)
# The dataset URI a template-only run records: nothing is read from it.
SETS_FOLDER = "sets"
SETS_SPEC_NAME = "dataset.yaml"
ROWS_PER_PART = 1000
ATTRIBUTE_JOIN = "+"


@dataclass(frozen=True)
class SetTemplate:
    """One source of sets: its id, the reference prompt, the members and the ground-truth label."""

    source_id: str
    template: str  # the template (or the dataset caption) the members were written from
    attributes: tuple[str, ...]  # the attributes its members vary, in template order
    members: tuple[tuple[tuple[tuple[str, str], ...], str], ...]  # ((attribute, value) pairs, prompt)
    explanation: tuple[str, ...] = ()  # per member: how its prompt was made
    label: str | None = None

    @property
    def reference_prompt(self) -> str:
        return self.members[0][1]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class TemplateFingerprint:
    """What a template-only run reads instead of a dataset: the templates (the manifest's ``dataset``)."""

    value: str

    def manifest_fields(self) -> dict[str, Any]:
        return {"fingerprint": self.value, "fingerprint_method": "sha256 of generation.params.templates (no dataset is read)",
                "parquet_files": 0, "referenced_images": 0, "unresolved_images": 0}


def template_fingerprint(config: AuditConfig) -> TemplateFingerprint:
    """The fingerprint of a template-only run's input: its templates."""
    return TemplateFingerprint(_key("templates", config.generation.params.get("templates")))


def check_text2image(config: AuditConfig, spec: DatasetSpec) -> None:
    """What a text2image-sets config must hold beyond its params: each template's placeholders are
    configured attributes and vary something. Raises :class:`ConfigError` naming the template."""

    templates = config.generation.params.get("templates")
    if templates is None:
        return
    for index, template in enumerate(check_templates(templates)):
        fields = template_fields(template)
        unknown = [f for f in fields if f not in config.attributes]
        if unknown:
            raise ConfigError(
                f"generation.params.templates[{index}] {template!r} uses {{{unknown[0]}}}, which is not in "
                f"'attributes' ({', '.join(config.attributes)}); list its values there"
            )
        if all(len(_values(config, spec, f)) < 2 for f in fields):
            raise ConfigError(
                f"generation.params.templates[{index}] {template!r} varies nothing: each of its attributes "
                "lists a single value under 'attributes'"
            )
    used = {f for template in templates for f in template_fields(template)}
    unused = [a for a in config.attributes if a not in used]
    if unused:
        raise ConfigError(
            f"attributes.{unused[0]} is in no template of generation.params.templates, so no set varies it; "
            "add it to a template or remove it"
        )


def _values(config: AuditConfig, spec: DatasetSpec, attribute: str) -> list[str]:
    """The configured values of ``attribute``, in the vocabulary's spelling, each once."""
    return list(dict.fromkeys(spec.canonical_value(attribute, v) or v for v in config.attributes[attribute]))


def templates_from_config(config: AuditConfig, spec: DatasetSpec) -> list[SetTemplate]:
    """One :class:`SetTemplate` per ``generation.params.templates`` entry."""

    out = []
    for template in config.generation.params["templates"]:
        attributes = tuple(template_fields(template))
        members = []
        for values in itertools.product(*(_values(config, spec, a) for a in attributes)):
            pairs = tuple(zip(attributes, values))
            members.append((pairs, template.format(**dict(pairs))))
        out.append(SetTemplate(
            source_id=_key("template", template)[:16], template=template, attributes=attributes,
            members=tuple(members), explanation=tuple(f"template: {template}" for _ in members),
        ))
    return out


def templates_from_captions(valid: pl.DataFrame, config: AuditConfig, spec: DatasetSpec) -> list[SetTemplate]:
    """One :class:`SetTemplate` per valid row: its caption rewritten to every combination of values."""

    attributes = tuple(config.attributes)
    out = []
    for row in valid.iter_rows(named=True):
        caption = row["caption"]
        sources = {a: row.get(a) or detect_value(caption, a) for a in attributes}
        members, notes = [], []
        for values in itertools.product(*(_values(config, spec, a) for a in attributes)):
            prompt, steps = caption, []
            for attribute, value in zip(attributes, values):
                rewritten = rewrite_caption(prompt, attribute, sources[attribute], value)
                prompt = rewritten.caption
                steps.append(rewritten.explanation)
            members.append((tuple(zip(attributes, values)), prompt))
            notes.append("; ".join(s for s in steps if s))
        out.append(SetTemplate(
            source_id=str(row["id"]), template=caption, attributes=attributes, members=tuple(members),
            explanation=tuple(notes), label=row.get("label"),
        ))
    return out


def member_key(prompt: str, reference: str | None, seed: int, generator: str) -> str:
    """The content key of a member image: its prompt, the shared-attention reference (None when
    attention is not shared), the seed and the generator fingerprint."""
    return _key(METHOD, prompt, reference, int(seed), generator)


def plan_member_sets(
    set_templates: list[SetTemplate], config: AuditConfig, generator_identity: str | None = None,
    precision: dict[str, Any] | None = None,
) -> list[WorkItem]:
    """Every member of every set (set template × seed ``seed … seed+seeds_per_target−1``), set by set.

    ``generator_identity`` names the model in every key instead of the config's path, as in
    :func:`counterfactual_lab.plan.work_items.plan_work_items`.
    """
    generation = config.generation
    fields = generation.fingerprint_fields()
    if generator_identity is not None:
        fields.update(model=generator_identity, revision=None)
    if precision:  # device type, dtype and versions that change pixels, as in plan_work_items
        fields["precision"] = dict(precision)
    fingerprint = generator_fingerprint(fields)
    shares = bool(generation.params.get("attention_sharing") or generation.params.get("self_attention_sharing"))
    items = []
    for set_template in set_templates:
        attribute = ATTRIBUTE_JOIN.join(set_template.attributes)
        reference = set_template.reference_prompt
        source_key = _key("set-template", set_template.template)
        explanations = set_template.explanation or ("",) * len(set_template.members)
        for seed in range(generation.seed, generation.seed + generation.seeds_per_target):
            for (pairs, prompt), explanation in zip(set_template.members, explanations):
                items.append(WorkItem(
                    source_id=set_template.source_id, source_key=source_key, source_image_uri="",
                    caption=reference, attribute=attribute, source_value=None,
                    target_value=ATTRIBUTE_JOIN.join(value for _, value in pairs), seed=seed,
                    counterfactual_caption=prompt, explanation=explanation, instruction="",
                    generator=fingerprint,
                    content_key=member_key(prompt, reference if shares else None, seed, fingerprint),
                    variant=VARIANT_COUNTERFACTUAL, control=False, attribute_values=pairs,
                ))
    return items


def chunk_sets(items: list[WorkItem], size: int) -> list[list[WorkItem]]:
    """Batches of at most ``size`` items that never split a set (a set larger than ``size`` is a
    batch of its own): the members of a set share their latents and attention in one task."""

    return pack(items, max(1, size), lambda item: item.set_id, split_groups=False)


def template_outcome(set_templates: list[SetTemplate]) -> Any:
    """A :class:`~counterfactual_lab.ingest.validation.ValidationOutcome` of a template-only run: each
    template is one valid row (nothing to quarantine), so the row accounting closes as for data."""
    # here, not at the top: it imports polars
    import polars as pl

    # here, not at the top: it imports polars, pyarrow, pydantic
    from counterfactual_lab.ingest.validation import QUARANTINE_SCHEMA, ValidationOutcome

    valid = pl.DataFrame(
        {"id": [t.source_id for t in set_templates], "caption": [t.template for t in set_templates]},
        schema={"id": pl.String, "caption": pl.String},
    )
    return ValidationOutcome(valid=valid, quarantine=pl.DataFrame(schema=QUARANTINE_SCHEMA),
                             rows_in=len(set_templates), by_reason={}, expectations={})


# ---- the published sets ----------------------------------------------------------------------


def sets_dataset_spec(sets_uri: str, name: str, vocabularies: dict[str, list[str]], pairs: int,
                      storage_options: dict[str, Any] | None = None) -> DatasetSpec:
    """The dataset spec that reads a published sets folder (what ``dataset.yaml`` holds)."""
    # here, not at the top: it imports pydantic
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    return DatasetSpec.parse_spec({
        "name": name,
        "uri": sets_uri,
        "columns": {"id": "id", "image": "image", "caption": "caption", "label": "label",
                    "counterfactual_set": "counterfactual_set",
                    "attribute_pairs": [[f"a{i}_type", f"a{i}"] for i in range(1, max(1, pairs) + 1)]},
        "vocabularies": vocabularies,
        "storage_options": dict(storage_options or {}),
    }, source="the published sets")


def sets_rows(judged: pl.DataFrame, templates: dict[str, str], labels: dict[str, str | None]) -> list[dict[str, Any]]:
    """One row per member of a kept set (image bytes not yet read), sets in order, members in order."""
    # here, not at the top: it imports polars
    import polars as pl

    kept = judged.filter(pl.col("kept").fill_null(False))
    rows = []
    for row in kept.iter_rows(named=True):
        entry: dict[str, Any] = {
            # unique even where two sets hold the same image (the same prompt and seed)
            "id": _key("member", row["set_id"], row["content_key"])[:24],
            "image_uri": row["image_uri"],
            "image_key": row["content_key"],
            "caption": row["counterfactual_caption"],
            "counterfactual_set": row["set_id"],
            "template": templates.get(row["source_id"]),
            "source_id": row["source_id"],
            "seed": row["seed"],
            "label": labels.get(row["source_id"]),
            "text_similarity": row.get("text_similarity"),
            "direction_similarity": row.get("direction_similarity"),
            "image_similarity": row.get("image_similarity"),
        }
        for index, pair in enumerate(row["attribute_values"] or [], start=1):
            entry[f"a{index}_type"], entry[f"a{index}"] = pair["attribute"], pair["value"]
        rows.append(entry)
    return rows


def publish_sets(judged: pl.DataFrame, store: Any, run_uri: str, *, name: str, vocabularies: dict[str, list[str]],
                 templates: dict[str, str], labels: dict[str, str | None] | None = None,
                 storage_options: dict[str, Any] | None = None, rows_per_part: int = ROWS_PER_PART) -> DatasetSpec:
    """Write the kept sets under ``run_uri/sets/`` (Parquet parts of ``rows_per_part`` rows; one
    empty part when no set was kept), then ``dataset.yaml``; return the spec that reads them.
    ``templates``/``labels``: per set template id, its template (or caption) and label. An earlier
    folder of the same run is removed first."""
    # here, not at the top: it imports pyarrow
    import pyarrow as pa

    # here, not at the top: it imports pyarrow
    import pyarrow.parquet as pq


    sets_uri = join(run_uri, SETS_FOLDER)
    fs, path = filesystem(sets_uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    rows = sets_rows(judged, templates, labels or {})
    pairs = max([len(v or []) for v in judged["attribute_values"].to_list()] or [1]) if judged.height else 1
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("id", pa.string()), ("image", image_type), ("caption", pa.string()), ("counterfactual_set", pa.string())]
        + [field for i in range(1, pairs + 1) for field in ((f"a{i}_type", pa.string()), (f"a{i}", pa.string()))]
        + [("label", pa.string()), ("template", pa.string()), ("source_id", pa.string()), ("seed", pa.int64()),
           ("text_similarity", pa.float64()), ("direction_similarity", pa.float64()), ("image_similarity", pa.float64())]
    )
    for part, start in enumerate(range(0, max(len(rows), 1), rows_per_part)):
        columns: dict[str, list[Any]] = {column: [] for column in schema.names}
        for row in rows[start : start + rows_per_part]:
            data = read_bytes(row["image_uri"], store.storage_options, max_bytes=STORED_IMAGE_MAX_BYTES,
                              what="a stored image")
            columns["image"].append({"bytes": data, "path": f"{row['image_key']}.png"})
            for column in schema.names:
                if column != "image":
                    columns[column].append(row.get(column))
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns, schema=schema), buffer)
        write_bytes_atomic(join(sets_uri, f"part-{part:05d}.parquet"), buffer.getvalue(), storage_options)
    spec = sets_dataset_spec(sets_uri, name, vocabularies, pairs, storage_options)
    document = spec.model_dump(mode="json", exclude={"storage_options", "storage_options_secret", "limits"},
                               exclude_none=True)
    write_bytes_atomic(join(sets_uri, SETS_SPEC_NAME), yaml.safe_dump(document, sort_keys=False).encode(), storage_options)
    return spec
