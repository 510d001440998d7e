"""Run the model under audit on originals and kept counterfactuals.

The evaluation pool (:func:`build_evaluation_pool`, or :func:`pool_from_counterfactual_sets`
for a dataset that already holds counterfactual sets) has one row per image *per
attribute*: an original appears once under every audited attribute, with ``group`` = its
value of that attribute, so per-attribute metrics are plain group-bys. Columns:

``id, source_id, variant ("original" | "counterfactual"), attribute, group, caption,
image_uri, content_key, label``

Two probes run on it:

* :func:`predict` — zero-shot classification over ``audit.labels`` with ``audit.prompt``:
  one ``score_<label>`` column per label, ``top1`` and ``caption_similarity``
  (cos(image, own caption));
* :func:`retrieval_scores` — cos(image, query) for each neutral ``audit.queries`` entry,
  one row per (query, pool image): ``query, id, content_key, score``. Retrieval fairness
  ranks these per attribute (see :mod:`counterfactual_lab.retrieval_fairness`).

Each distinct image (by ``content_key``) is embedded once, whatever number of rows or
probes use it, and the embedder's cache shares it with the judge when they use one model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from counterfactual_lab.config import AuditModelConfig

VARIANT_ORIGINAL = "original"
VARIANT_COUNTERFACTUAL = "counterfactual"

POOL_SCHEMA = {
    "id": pl.String,
    "source_id": pl.String,
    "variant": pl.String,
    "attribute": pl.String,
    "group": pl.String,
    "caption": pl.String,
    "image_uri": pl.String,
    "content_key": pl.String,
    "label": pl.String,
}


def score_column(label: str) -> str:
    """The predictions column holding the probability of ``label``."""
    return f"score_{label}"


def _require(frame: pl.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (has {frame.columns})")


def _label_column(valid: pl.DataFrame) -> pl.Expr:
    return pl.col("label").cast(pl.String) if "label" in valid.columns else pl.lit(None, dtype=pl.String)


def build_evaluation_pool(valid: pl.DataFrame, counterfactuals: pl.DataFrame, attributes: list[str]) -> pl.DataFrame:
    """The images the model under audit sees: every valid row under every attribute, plus kept counterfactuals.

    ``valid``: id, content_key, caption, image_uri, optional label, one column per
    attribute (null when unknown). ``counterfactuals``: the judge's output (source_id,
    attribute, source_value, target_value, counterfactual_caption, image_uri, content_key,
    kept). An original whose attribute value is unknown takes the source value its
    counterfactuals were planned from, when they agree on one. A counterfactual inherits
    its source's ground-truth label (the change must not change the answer) and has
    ``id`` = its content key.
    """
    _require(valid, ["id", "content_key", "caption", "image_uri"], "the valid rows")
    frames = []
    kept = pl.DataFrame(schema={"source_id": pl.String, "attribute": pl.String, "source_value": pl.String})
    if counterfactuals.height:
        _require(
            counterfactuals,
            ["source_id", "attribute", "source_value", "target_value", "counterfactual_caption", "image_uri", "content_key", "kept"],
            "the counterfactuals",
        )
        kept = counterfactuals.filter(pl.col("kept").fill_null(False) & pl.col("image_uri").is_not_null())
    labels = valid.select(pl.col("id").cast(pl.String).alias("source_id"), _label_column(valid).alias("label"))
    for attribute in attributes:
        known = pl.col(attribute).cast(pl.String) if attribute in valid.columns else pl.lit(None, dtype=pl.String)
        planned = (
            kept.filter(pl.col("attribute") == attribute)
            .group_by("source_id")
            .agg(pl.col("source_value").drop_nulls().unique().alias("values"))
            .filter(pl.col("values").list.len() == 1)
            .select("source_id", pl.col("values").list.first().cast(pl.String).alias("planned"))
        )
        originals = (
            valid.select(
                pl.col("id").cast(pl.String),
                pl.col("id").cast(pl.String).alias("source_id"),
                pl.lit(VARIANT_ORIGINAL).alias("variant"),
                pl.lit(attribute).alias("attribute"),
                known.alias("group"),
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
        edits = kept.filter(pl.col("attribute") == attribute)
        if edits.height:
            frames.append(
                edits.select(
                    pl.col("content_key").cast(pl.String).alias("id"),
                    pl.col("source_id").cast(pl.String),
                    pl.lit(VARIANT_COUNTERFACTUAL).alias("variant"),
                    pl.lit(attribute).alias("attribute"),
                    pl.col("target_value").cast(pl.String).alias("group"),
                    pl.col("counterfactual_caption").cast(pl.String).alias("caption"),
                    pl.col("image_uri").cast(pl.String),
                    pl.col("content_key").cast(pl.String),
                )
                .join(labels, on="source_id", how="left")
            )
    if not frames:
        return pl.DataFrame(schema=POOL_SCHEMA)
    return pl.concat([f.select([pl.col(c).cast(t) for c, t in POOL_SCHEMA.items()]) for f in frames])


def pool_from_counterfactual_sets(valid: pl.DataFrame, attributes: list[str], set_column: str = "counterfactual_set") -> pl.DataFrame:
    """The evaluation pool of a dataset that already holds counterfactual sets (evaluate-only mode).

    In the SocialCounterfactuals layout, images of one set show the same scene and differ
    in protected attributes only. For each attribute, rows of a set that agree on every
    other attribute form a comparison group that differs in that attribute alone; its
    reference (the row whose value sorts first, then the lowest id) becomes the
    ``original`` and every other row a ``counterfactual`` of it (``source_id`` = the
    reference's id). A row whose comparison group has one member stays an original with no
    pair. Every row appears once per attribute, so parity and retrieval see the whole pool.
    """
    _require(valid, ["id", "content_key", "caption", "image_uri", set_column], "an evaluate-only dataset")
    missing = [a for a in attributes if a not in valid.columns]
    if missing:
        raise ValueError(f"an evaluate-only dataset needs one column per attribute; missing {missing}")
    frames = []
    base = valid.with_columns(pl.col("id").cast(pl.String), pl.col(set_column).cast(pl.String))
    for attribute in attributes:
        others = [a for a in attributes if a != attribute]
        keys = [set_column, *[pl.col(o).cast(pl.String).fill_null("") for o in others]]
        ordered = base.with_columns(pl.col(attribute).cast(pl.String).alias("group")).sort(
            ["group", "id"], nulls_last=True
        )
        reference = pl.col("id").first().over(keys)
        members = pl.len().over(keys)
        rows = ordered.with_columns(
            reference.alias("source_id"),
            pl.when((pl.col("id") == reference) | (members == 1))
            .then(pl.lit(VARIANT_ORIGINAL))
            .otherwise(pl.lit(VARIANT_COUNTERFACTUAL))
            .alias("variant"),
        ).with_columns(
            pl.when(pl.col("variant") == VARIANT_ORIGINAL).then(pl.col("id")).otherwise(pl.col("source_id")).alias("source_id"),
            pl.lit(attribute).alias("attribute"),
            _label_column(valid).alias("label"),
        )
        frames.append(rows.select([pl.col(c).cast(t) for c, t in POOL_SCHEMA.items()]))
    if not frames:
        return pl.DataFrame(schema=POOL_SCHEMA)
    return pl.concat(frames).sort(["attribute", "source_id", "variant", "id"], descending=[False, False, True, False])


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
    audit: AuditModelConfig,
    embedder,
    load_image: Callable[[str], object],
) -> pl.DataFrame:
    """Zero-shot predictions of the model under audit, one row per pool row.

    Adds ``score_<label>`` for each ``audit.labels`` entry (the probability from
    :meth:`ClipEmbedder.zero_shot` with prompt ``audit.prompt.format(label=...)``: softmax
    over the labels for CLIP, per-label sigmoid for SigLIP), ``top1`` (the label with the
    highest score) and ``caption_similarity`` = cos(image, own caption).
    """
    _require(images, list(POOL_SCHEMA), "the evaluation pool")
    if len(set(audit.labels)) < 2:
        raise ValueError(f"audit.labels needs at least two distinct labels to classify among, got {audit.labels}")
    prompts = [audit.prompt.format(label=label) for label in audit.labels]
    label_emb = embedder.embed_texts(prompts, batch_size=audit.batch_size)
    if images.height == 0:
        return images.with_columns(
            *[pl.lit(None, dtype=pl.Float64).alias(score_column(label)) for label in audit.labels],
            pl.lit(None, dtype=pl.String).alias("top1"),
            pl.lit(None, dtype=pl.Float64).alias("caption_similarity"),
        )
    by_key = embed_pool_images(images, embedder, load_image, audit.batch_size)
    image_emb = np.stack([by_key[k] for k in images["content_key"].to_list()])
    probabilities = embedder.zero_shot(image_emb, label_emb)
    caption_emb = embedder.embed_texts(images["caption"].to_list(), batch_size=audit.batch_size)
    caption_similarity = np.sum(image_emb.astype(np.float64) * caption_emb.astype(np.float64), axis=1)
    top1 = [audit.labels[i] for i in probabilities.argmax(axis=1)]
    return images.with_columns(
        *[pl.Series(score_column(label), probabilities[:, j], dtype=pl.Float64) for j, label in enumerate(audit.labels)],
        pl.Series("top1", top1, dtype=pl.String),
        pl.Series("caption_similarity", caption_similarity, dtype=pl.Float64),
    )


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
