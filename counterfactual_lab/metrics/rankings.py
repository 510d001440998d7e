"""What each retrieval query ranks, against which desired distribution D and which K — the two
``audit.skew_protocol`` s — and ``retrieval.parquet``, the rankings themselves.

* ``geyik``: every query ranks the whole stratum's pool of the attribute; D is uniform over the
  attribute's values where the pool is balanced by design (``desired_values`` given), else the
  pool's own mix; K = ``audit.top_k``.
* ``socialcounterfactuals``: every query ranks only its own sets, those of its *subject* (the one
  audit label it names, :func:`~counterfactual_lab.config.skew_protocols.query_subject`): in a
  dataset of counterfactual sets (``evaluate_only``), the sets whose label is the subject or one of
  whose members' captions names it (a set template's caption holds its subject); for edited images
  (every other stratum), the sources whose label is the subject, with every image made from them.
  D is that pool's own mix and K = G, the number of the attribute's groups in the stratum's pool
  (the released code's K when no ``--topk`` is given).

:func:`ranking_frame` writes a ranking as rows of :data:`RETRIEVAL_TABLE_SCHEMA`: per query,
stratum, attribute and image its score, rank (1 = best), group, cluster, the K of the ranking's
top-K rows and D of the image's group — enough to recompute every ranking metric (skew, MaxSkew,
MinSkew, NDKL, NDKL@K, their bootstrap by ``source_id``) without the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.config.skew_protocols import (
    SKEW_PROTOCOL_GEYIK,
    SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS,
    names_word,
    query_subject,
)
from counterfactual_lab.metrics.retrieval import ranked_pool
from counterfactual_lab.metrics.schema import STRATUM_EVALUATE_ONLY

RETRIEVAL_TABLE_SCHEMA = {
    "query": pl.String,
    "stratum": pl.String,
    "attribute": pl.String,
    "protocol": pl.String,  # audit.skew_protocol
    "id": pl.String,  # the image's pool id (id and content_key identify a pool image)
    "content_key": pl.String,
    "source_id": pl.String,  # the cluster intervals resample
    "group": pl.String,  # the image's value of the attribute
    "score": pl.Float64,  # cos(image, query)
    "rank": pl.Int64,  # 1 = best; ties by id
    "k": pl.Int64,  # the K of this ranking's top-K rows (capped to the ranking)
    "desired_share": pl.Float64,  # D(group) this ranking is measured against
}


@dataclass(frozen=True)
class Ranking:
    """One query's ranked pool of one stratum and attribute, and what its skew is measured against.

    ``ranked``: id, content_key, source_id, group, score, best first (empty: the query has no own
    sets); ``k``: the K asked for; ``desired_values``: D uniform over these, or None for the pool's mix.
    """

    query: str
    protocol: str
    ranked: pl.DataFrame
    k: int
    desired_values: tuple[str, ...] | None


def own_sets(pool: pl.DataFrame, subject: str, stratum: str) -> pl.DataFrame:
    """The rows of ``pool`` a query about ``subject`` ranks under the socialcounterfactuals protocol
    (module doc): whole clusters (``source_id``: a source image, or a counterfactual set)."""
    is_subject = pl.col("label").cast(pl.String).str.to_lowercase() == subject.lower()
    if stratum == STRATUM_EVALUATE_ONLY:
        named = [c for c in pool["caption"].drop_nulls().unique().to_list() if names_word(c, subject)]
        is_subject = is_subject.fill_null(False) | pl.col("caption").is_in(named).fill_null(False)
    own = pool.filter(is_subject.fill_null(False))["source_id"].unique()
    return pool.filter(pl.col("source_id").is_in(own.implode()))


def query_rankings(
    pool: pl.DataFrame, retrieval: pl.DataFrame, stratum: str, audit: Any, desired_values: Sequence[str] | None
) -> list[Ranking]:
    """Every ``audit.queries`` entry's ranking of ``pool`` (one stratum, one attribute) under
    ``audit.skew_protocol``; ``desired_values``: the values of a uniform D under ``geyik``, or None
    for the pool's mix (under ``socialcounterfactuals`` D is always the query's own pool's mix)."""
    protocol = getattr(audit, "skew_protocol", SKEW_PROTOCOL_GEYIK)
    if protocol == SKEW_PROTOCOL_GEYIK:
        values = tuple(desired_values) if desired_values is not None else None
        return [Ranking(query, protocol, ranked_pool(pool, retrieval, query), audit.top_k, values)
                for query in audit.queries]
    if protocol != SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS:
        raise ValueError(f"audit.skew_protocol must be {SKEW_PROTOCOL_GEYIK} or {SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS}, "
                         f"got {protocol!r}")
    groups = max(1, pool["group"].n_unique())
    rankings = []
    for query in audit.queries:
        subject = query_subject(query, audit.labels)
        if subject is None:  # the config refuses this; a hand-built audit section may not
            raise ValueError(f"query {query!r} names no single one of audit.labels {list(audit.labels)}: the "
                             f"{SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS} protocol cannot find its own sets")
        rankings.append(Ranking(query, protocol, ranked_pool(own_sets(pool, subject, stratum), retrieval, query), groups,
                                None))
    return rankings


def ranking_frame(ranking: Ranking, stratum: str, attribute: str) -> pl.DataFrame:
    """``ranking`` as rows of :data:`RETRIEVAL_TABLE_SCHEMA`."""
    ranked = ranking.ranked
    n = ranked.height
    if n == 0:
        return pl.DataFrame(schema=RETRIEVAL_TABLE_SCHEMA)
    if ranking.desired_values is not None:
        share = pl.lit(1.0 / len(set(ranking.desired_values)))
    else:
        share = pl.len().over("group").cast(pl.Float64) / n
    return ranked.select(
        pl.lit(ranking.query).alias("query"),
        pl.lit(stratum).alias("stratum"),
        pl.lit(attribute).alias("attribute"),
        pl.lit(ranking.protocol).alias("protocol"),
        "id", "content_key", "source_id", "group", "score",
        pl.int_range(1, n + 1, dtype=pl.Int64).alias("rank"),
        pl.lit(min(ranking.k, n), dtype=pl.Int64).alias("k"),
        share.alias("desired_share"),
    ).cast(RETRIEVAL_TABLE_SCHEMA)  # type: ignore[arg-type]


def retrieval_frame(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The rankings as one table (the empty table keeps its columns)."""
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=RETRIEVAL_TABLE_SCHEMA)
