"""Run the model under audit on originals, reconstructions and kept counterfactuals.

The evaluation pool (:func:`build_evaluation_pool`, or :func:`pool_from_counterfactual_sets`
for a dataset that already holds counterfactual sets) has one row per image *per
attribute*: an image appears once under every audited attribute, with ``group`` = its
value of that attribute, so per-attribute metrics are plain group-bys. Columns
(:data:`POOL_SCHEMA`):

``id, source_id, variant, control, attribute, group, seed, set_id, caption, image_uri,
content_key, label``

* ``variant``: ``original`` (a dataset image), ``reconstruction`` (the source's own value
  generated through the editor) or ``counterfactual``;
* ``control``: true only for the control reconstruction (the seed no candidate uses);
* ``seed``: the generation seed (null for originals); ``set_id``: the comparison set the
  image belongs to (null for originals, and for counterfactuals of a run without
  reconstructions, which compare with their original on (source_id, attribute)).

Two probes run on it:

* :func:`predict` — zero-shot classification over ``audit.labels`` with ``audit.prompt``:
  one ``score_<label>`` column per label, ``top1`` and ``caption_similarity``
  (cos(image, own caption));
* :func:`retrieval_scores` — cos(image, query) for each neutral ``audit.queries`` entry,
  one row per (query, pool image): ``query, id, content_key, score``. Retrieval fairness
  ranks these per attribute (see :mod:`counterfactual_lab.metrics.retrieval`).

Each distinct image (by ``content_key``) is embedded once, whatever number of rows or
probes use it, and the embedder's cache shares it with the judge when they use one model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.config.intersections import VALUE_SEPARATOR, joint_name
from counterfactual_lab.config.templates import uses_person
from counterfactual_lab.evaluate.auditees.kinds import CONTRASTIVE, resolved_negative_controls
from counterfactual_lab.evaluate.readings import PERSON_COLUMN
from counterfactual_lab.plan.person_words import fill_person
from counterfactual_lab.plan.work_items import (
    VARIANT_COUNTERFACTUAL,
    VARIANT_ORIGINAL,
    VARIANT_RECONSTRUCTION,
    set_id_for,
)

POOL_SCHEMA = {
    "id": pl.String,
    "source_id": pl.String,
    "variant": pl.String,
    "control": pl.Boolean,
    "attribute": pl.String,
    "group": pl.String,
    "seed": pl.Int64,
    "set_id": pl.String,
    "caption": pl.String,
    "image_uri": pl.String,
    "content_key": pl.String,
    "label": pl.String,
}

# Columns of the valid rows that describe the row, not the pictured person: never held fixed.
_NOT_ATTRIBUTES = ("id", "content_key", "caption", "label", "image_uri", "width", "height")


def score_column(label: str) -> str:
    """The predictions column holding the probability of ``label``."""
    return f"score_{label}"


# A label probe asked in several phrasings (audit.phrasings of audit.prompt or audit.choice_prompt):
# the first phrasing's answers keep their columns (score_<label>, top1, unclear), phrasing k ≥ 1's
# sit beside them as "<column>@<k>".
PHRASING_SEPARATOR = "@"


def phrased_column(column: str, index: int) -> str:
    """The predictions column of ``column`` (``score_doctor``, ``top1``, ``unclear``) in phrasing ``index``
    of the label prompt (0: the prompt as configured, the column itself)."""
    return column if index == 0 else f"{column}{PHRASING_SEPARATOR}{index}"


def phrasing_view(predictions: pl.DataFrame, index: int, columns: Sequence[str]) -> pl.DataFrame:
    """``predictions`` with phrasing ``index``'s answers under the plain names of ``columns`` (module doc)."""
    if index == 0:
        return predictions
    renamed = {phrased_column(c, index): c for c in columns if phrased_column(c, index) in predictions.columns}
    return predictions.drop([c for c in renamed.values() if c in predictions.columns]).rename(renamed)


# A contrastive model's negative controls (audit.negative_controls "A | B") in predictions.parquet.
NEGATIVE_CONTROL_PREFIX = "nc_score_"


def negative_control_column(text: str) -> str:
    """The predictions column holding a negative control's probability P(A) (``nc_score_<A>``)."""
    return f"{NEGATIVE_CONTROL_PREFIX}{text}"


def negative_control_texts(entry: str) -> tuple[str, str]:
    """("A", "B") of a contrastive negative control "A | B"; ValueError naming the form otherwise."""
    parts = [part.strip() for part in entry.split(" | ")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"audit.negative_controls entry {entry!r} must be two texts separated by ' | ', "
                         "e.g. 'an outdoor photo | an indoor photo'")
    return parts[0], parts[1]


def _require(frame: pl.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {frame.columns})")


def _label_column(valid: pl.DataFrame) -> pl.Expr:
    return pl.col("label").cast(pl.String) if "label" in valid.columns else pl.lit(None, dtype=pl.String)


def _as_pool(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(t) for c, t in POOL_SCHEMA.items()])


def build_evaluation_pool(valid: pl.DataFrame, counterfactuals: pl.DataFrame, attributes: list[str]) -> pl.DataFrame:
    """The images the model under audit sees, per attribute: every valid row, then the kept generated images.

    ``valid``: id, content_key, caption, image_uri, optional label, one column per
    attribute (null when unknown). ``counterfactuals``: the judge's output (source_id,
    attribute, source_value, target_value, counterfactual_caption, image_uri, content_key,
    kept; ``variant``, ``control``, ``seed``, ``set_id`` when the plan made
    reconstructions). Rows:

    * each valid row once per attribute, variant ``original``, ``group`` = its value (an
      unknown value takes the source value its generated images were planned from, when they
      agree on one);
    * each kept generated image: the reconstruction and counterfactuals of each kept set and
      each kept control, ``group`` = its target value (a reconstruction's is the source's
      own value, null when unknown), ``caption`` = the caption it was generated from,
      ``id`` = its content key, ``label`` = its source's ground truth (the change must not
      change the answer).

    ``set_id`` is the candidate's set; without any reconstruction in ``counterfactuals``
    (``generation.reconstruction: false``) it is null, since such counterfactuals compare
    with their original, not within a set.
    """
    _require(valid, ["id", "content_key", "caption", "image_uri"], "the valid rows")
    kept = pl.DataFrame(schema={"source_id": pl.String, "attribute": pl.String, "source_value": pl.String})
    if counterfactuals.height:
        _require(
            counterfactuals,
            ["source_id", "attribute", "source_value", "target_value", "counterfactual_caption", "image_uri", "content_key", "kept"],
            "the counterfactuals",
        )
        kept = _generated_columns(counterfactuals).filter(
            pl.col("kept").fill_null(False) & pl.col("image_uri").is_not_null()
        )
    sets = kept.height > 0 and (kept["variant"] == VARIANT_RECONSTRUCTION).any()
    labels = valid.select(pl.col("id").cast(pl.String).alias("source_id"), _label_column(valid).alias("label"))
    frames = []
    for attribute in attributes:
        known = pl.col(attribute).cast(pl.String) if attribute in valid.columns else pl.lit(None, dtype=pl.String)
        edits = kept.filter(pl.col("attribute") == attribute)
        planned = (
            edits.group_by("source_id")
            .agg(pl.col("source_value").drop_nulls().unique().alias("values"))
            .filter(pl.col("values").list.len() == 1)
            .select("source_id", pl.col("values").list.first().cast(pl.String).alias("planned"))
        )
        originals = (
            valid.select(
                pl.col("id").cast(pl.String),
                pl.col("id").cast(pl.String).alias("source_id"),
                pl.lit(VARIANT_ORIGINAL).alias("variant"),
                pl.lit(False).alias("control"),
                pl.lit(attribute).alias("attribute"),
                known.alias("group"),
                pl.lit(None, dtype=pl.Int64).alias("seed"),
                pl.lit(None, dtype=pl.String).alias("set_id"),
                pl.col("caption").cast(pl.String),
                pl.col("image_uri").cast(pl.String),
                pl.col("content_key").cast(pl.String),
                _label_column(valid).alias("label"),
            )
            .join(planned, on="source_id", how="left")
            .with_columns(pl.coalesce("group", "planned").alias("group"))
            .drop("planned")
        )
        frames.append(originals)
        if edits.height:
            frames.append(
                edits.select(
                    pl.col("content_key").cast(pl.String).alias("id"),
                    pl.col("source_id").cast(pl.String),
                    "variant",
                    "control",
                    pl.lit(attribute).alias("attribute"),
                    pl.col("target_value").cast(pl.String).alias("group"),
                    "seed",
                    (pl.col("set_id") if sets else pl.lit(None, dtype=pl.String)).alias("set_id"),
                    pl.col("counterfactual_caption").cast(pl.String).alias("caption"),
                    pl.col("image_uri").cast(pl.String),
                    pl.col("content_key").cast(pl.String),
                )
                .join(labels, on="source_id", how="left")
            )
    if not frames:
        return pl.DataFrame(schema=POOL_SCHEMA)
    return pl.concat([_as_pool(f) for f in frames])


def _generated_columns(counterfactuals: pl.DataFrame) -> pl.DataFrame:
    """The judge's output with ``variant``, ``control``, ``seed`` and ``set_id`` (filled for older frames)."""

    frame = counterfactuals.with_columns(pl.col("source_id").cast(pl.String))
    fill = {
        "variant": pl.lit(VARIANT_COUNTERFACTUAL),
        "control": pl.lit(False),
        "seed": pl.lit(None, dtype=pl.Int64),
    }
    frame = frame.with_columns(expr.alias(name) for name, expr in fill.items() if name not in frame.columns)
    if "set_id" not in frame.columns:
        ids = [
            None if seed is None else set_id_for(source, attribute, seed)
            for source, attribute, seed in frame.select("source_id", "attribute", "seed").iter_rows()
        ]
        frame = frame.with_columns(pl.Series("set_id", ids, dtype=pl.String))
    return frame.with_columns(
        pl.col("variant").cast(pl.String), pl.col("control").cast(pl.Boolean).fill_null(False),
        pl.col("seed").cast(pl.Int64), pl.col("set_id").cast(pl.String),
    )


def comparison_set_id(counterfactual_set: str, attribute: str, held_fixed: Sequence[tuple[str, str | None]]) -> str:
    """The id of an evaluate-only comparison group: a hash of the set, the attribute and the fixed values."""
    payload = json.dumps(["comparison", counterfactual_set, attribute, [list(pair) for pair in held_fixed]])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pool_from_counterfactual_sets(
    valid: pl.DataFrame,
    attributes: list[str],
    set_column: str = "counterfactual_set",
    held_fixed: Sequence[str] | None = None,
    intersections: Sequence[Sequence[str]] = (),
) -> pl.DataFrame:
    """The evaluation pool of a dataset that already holds counterfactual sets (evaluate-only mode).

    In the SocialCounterfactuals layout, images of one set show the same scene and differ
    in protected attributes only. For each audited attribute, the rows of a set that agree
    on every other attribute form a *comparison group* that differs in that attribute alone:
    its ``set_id`` (:func:`comparison_set_id`). Every row is variant ``counterfactual``
    (none is the reference: metrics pair every ordered pair of members with different
    groups), ``source_id`` = its counterfactual set (the cluster a bootstrap resamples), no
    seed, no reconstruction, no control. A comparison group of one member still counts in
    group and retrieval metrics; it has nothing to pair with.

    ``held_fixed``: the columns that must agree within a comparison group besides the other
    audited attributes; default: every other column of ``valid`` except the input
    contract's (id, content_key, caption, label, image_uri, width, height) and the set
    column, i.e. the dataset's other attribute columns and ``other_attributes`` (the
    attributes of an ``attribute_pairs`` layout that have no vocabulary, e.g. a
    SocialCounterfactuals "physical" type). Null values agree with each other.

    ``intersections`` (``attributes.intersections``) add each intersection's joint attribute
    (``race+gender``, :mod:`counterfactual_lab.config.intersections`): its group is the members'
    values joined (``White female``; null when one is unknown), its comparison groups hold fixed the
    audited attributes outside the intersection.
    """
    _require(valid, ["id", "content_key", "caption", "image_uri", set_column], "an evaluate-only dataset")
    missing = [a for a in attributes if a not in valid.columns]
    if missing:
        raise ValueError(f"an evaluate-only dataset needs one column per attribute; missing {missing}")
    if held_fixed is None:
        held_fixed = [c for c in valid.columns if c not in (*_NOT_ATTRIBUTES, set_column) and c not in attributes]
    else:
        _require(valid, list(held_fixed), "an evaluate-only dataset")
    base = valid.with_columns(pl.col("id").cast(pl.String), pl.col(set_column).cast(pl.String).alias("source_id"))
    frames = []
    compared = [(attribute, (attribute,)) for attribute in attributes]
    compared += [(joint_name(names), tuple(names)) for names in intersections]
    for attribute, parts in compared:
        fixed = sorted({*[a for a in attributes if a not in parts], *held_fixed} - set(parts))
        group = (pl.col(parts[0]).cast(pl.String) if len(parts) == 1
                 else pl.concat_str([pl.col(p).cast(pl.String) for p in parts], separator=VALUE_SEPARATOR))
        keys = base.select("source_id", *[pl.col(c).cast(pl.String) for c in fixed]).unique()
        ids = [
            comparison_set_id(row[0], attribute, list(zip(fixed, row[1:]))) for row in keys.iter_rows()
        ]
        keys = keys.with_columns(pl.Series("set_id", ids, dtype=pl.String))
        rows = base.with_columns(*[pl.col(c).cast(pl.String) for c in fixed]).join(
            keys, on=["source_id", *fixed], how="left", nulls_equal=True
        )
        frames.append(
            _as_pool(
                rows.with_columns(
                    pl.lit(VARIANT_COUNTERFACTUAL).alias("variant"),
                    pl.lit(False).alias("control"),
                    pl.lit(attribute).alias("attribute"),
                    group.alias("group"),
                    pl.lit(None, dtype=pl.Int64).alias("seed"),
                    _label_column(valid).alias("label"),
                )
            )
        )
    if not frames:
        return pl.DataFrame(schema=POOL_SCHEMA)
    return pl.concat(frames).sort(["attribute", "source_id", "set_id", "group", "id"], nulls_last=True)


def _unique_images(images: pl.DataFrame) -> pl.DataFrame:
    return images.select("content_key", "image_uri").unique(subset="content_key", keep="first", maintain_order=True)


def embed_pool_images(images: pl.DataFrame, embedder, load_image: Callable[[str], object], batch_size: int = 32) -> dict[str, np.ndarray]:
    """content_key -> normalised image embedding, each distinct image embedded (or fetched from cache) once."""
    unique = _unique_images(images)
    vectors = embedder.embed_image_uris(
        unique["image_uri"].to_list(), unique["content_key"].to_list(), load_image, batch_size=batch_size
    )
    return dict(zip(unique["content_key"].to_list(), vectors))


def predict(
    images: pl.DataFrame,
    audit: AuditSection,
    embedder,
    load_image: Callable[[str], object],
) -> pl.DataFrame:
    """Zero-shot predictions of the model under audit, one row per pool row.

    Adds ``score_<label>`` for each ``audit.labels`` entry (the probability from
    :meth:`ClipEmbedder.zero_shot` with prompt ``audit.prompt.format(label=...)``: softmax
    over the labels for CLIP, per-label sigmoid for SigLIP; a ``{person}`` in the prompt is the
    row's ``person`` word, :mod:`counterfactual_lab.evaluate.readings`), ``top1`` (the label with the
    highest score), ``caption_similarity`` = cos(image, own caption) and, per negative control
    "A | B" (``audit.negative_controls``, or the contrastive defaults), ``nc_score_<A>``: P(A) from
    the same zero-shot over the two texts as written (not through ``audit.prompt``). With other
    phrasings of ``audit.prompt`` (``audit.phrasings``), phrasing k's ``score_<label>@k`` and
    ``top1@k`` beside them (:func:`phrased_column`).
    """
    _require(images, list(POOL_SCHEMA), "the evaluation pool")
    if len(set(audit.labels)) < 2:
        raise ValueError(f"audit.labels needs at least two distinct labels to classify among, got {audit.labels}")
    phrasings = audit.phrasings_of(audit.prompt) if hasattr(audit, "phrasings_of") else [audit.prompt]
    # With {person} in audit.prompt each row's labels are read with its person word (evaluate/readings.py).
    words = (images[PERSON_COLUMN].to_list() if any(uses_person(p) for p in phrasings) and PERSON_COLUMN in images.columns
             else [None] * images.height)
    controls = [negative_control_texts(entry) for entry in resolved_negative_controls(audit, CONTRASTIVE)]
    if images.height == 0:
        return images.with_columns(
            *[pl.lit(None, dtype=pl.Float64).alias(phrased_column(score_column(label), k))
              for k in range(len(phrasings)) for label in audit.labels],
            *[pl.lit(None, dtype=pl.String).alias(phrased_column("top1", k)) for k in range(len(phrasings))],
            pl.lit(None, dtype=pl.Float64).alias("caption_similarity"),
            *[pl.lit(None, dtype=pl.Float64).alias(negative_control_column(a)) for a, _ in controls],
        ).select([*images.columns, *_ordered_columns(audit.labels, len(phrasings), controls)])
    by_key = embed_pool_images(images, embedder, load_image, audit.batch_size)
    image_emb = np.stack([by_key[k] for k in images["content_key"].to_list()])
    answers: dict[str, pl.Series] = {}
    for k, template in enumerate(phrasings):
        probabilities = np.zeros((images.height, len(audit.labels)))
        for word in dict.fromkeys(words):
            label_emb = embedder.embed_texts([fill_person(template, word).format(label=label) for label in audit.labels],
                                             batch_size=audit.batch_size)
            rows = [i for i, w in enumerate(words) if w == word]
            probabilities[rows] = embedder.zero_shot(image_emb[rows], label_emb)
        for j, label in enumerate(audit.labels):
            answers[phrased_column(score_column(label), k)] = pl.Series(probabilities[:, j], dtype=pl.Float64)
        answers[phrased_column("top1", k)] = pl.Series([audit.labels[i] for i in probabilities.argmax(axis=1)], dtype=pl.String)
    caption_emb = embedder.embed_texts(images["caption"].to_list(), batch_size=audit.batch_size)
    answers["caption_similarity"] = pl.Series(np.sum(image_emb.astype(np.float64) * caption_emb.astype(np.float64), axis=1),
                                              dtype=pl.Float64)
    for a, b in controls:
        outcome = embedder.zero_shot(image_emb, embedder.embed_texts([a, b], batch_size=audit.batch_size))[:, 0]
        answers[negative_control_column(a)] = pl.Series(outcome, dtype=pl.Float64)
    order = _ordered_columns(audit.labels, len(phrasings), controls)
    return images.with_columns(answers[name].alias(name) for name in order)


def _ordered_columns(labels: Sequence[str], phrasings: int, controls: Sequence[tuple[str, str]]) -> list[str]:
    """The columns :func:`predict` adds, in order: the first phrasing's scores and top-1, caption
    similarity, the negative controls, then each other phrasing's scores and top-1."""
    first = [score_column(label) for label in labels] + ["top1", "caption_similarity"]
    negative = [negative_control_column(a) for a, _ in controls]
    others = [phrased_column(c, k) for k in range(1, phrasings) for c in [*(score_column(x) for x in labels), "top1"]]
    return first + negative + others


def retrieval_scores(
    images: pl.DataFrame,
    queries: list[str],
    embedder,
    load_image: Callable[[str], object],
    batch_size: int = 32,
) -> pl.DataFrame:
    """cos(image, query) for every query and every distinct (id, content_key) of the pool.

    Columns: ``query, id, content_key, score``. Join back to the pool on (id, content_key)
    to rank each attribute's pool by group.
    """
    schema = {"query": pl.String, "id": pl.String, "content_key": pl.String, "score": pl.Float64}
    pool = images.select("id", "content_key", "image_uri").unique(subset=["id", "content_key"], maintain_order=True)
    if not queries or pool.height == 0:
        return pl.DataFrame(schema=schema)
    by_key = embed_pool_images(pool, embedder, load_image, batch_size)
    image_emb = np.stack([by_key[k] for k in pool["content_key"].to_list()]).astype(np.float64)
    query_emb = embedder.embed_texts(list(queries), batch_size=batch_size).astype(np.float64)
    scores = image_emb @ query_emb.T  # (n_images, n_queries)
    n = pool.height
    return pl.DataFrame(
        {
            "query": np.repeat(np.array(queries, dtype=object), n).tolist(),
            "id": pool["id"].to_list() * len(queries),
            "content_key": pool["content_key"].to_list() * len(queries),
            "score": scores.T.reshape(-1),
        },
        schema=schema,
    )
