"""Ranking fairness of retrieval: Skew@K, MaxSkew@K, MinSkew@K, NDKL and NDKL@K (Geyik et al., KDD 2019).

A neutral query ("a photo of a doctor") ranks a pool of images by cos(image, query). A ranking
is fair when every prefix holds each group in its *desired* share D(a). Notation: the ranking
τ has N items; P_i(a) is the share of group a among its first i items.

* ``skew@K`` (per group) ``Skew_a@K = ln(P_K(a) / D(a))`` — > 0 over-represented in the top K,
  < 0 under-represented. A group absent from the top K has P_K(a) = 0 and skew −∞: it is
  reported as absent (null value, note), never smoothed into a finite number.
* ``max_skew@K = max_a Skew_a@K`` (the row's group attains it) and ``min_skew@K = min_a Skew_a@K``
  (undefined, −∞, when a group is absent from the top K).
* ``ndkl`` — NDKL over the whole ranking, as Geyik et al. define it:
  ``NDKL(τ) = (1/Z) Σ_{i=1..N} KL(P_i ‖ D) / log₂(i+1)``, ``Z = Σ_{i=1..N} 1/log₂(i+1)``,
  ``KL(P‖D) = Σ_a P(a) ln(P(a)/D(a))`` with 0·ln 0 = 0. 0 when every prefix has the desired mix.
* ``ndkl@K`` — the same sum truncated to the first K positions (its own name: it is not NDKL).

The desired distribution D and K are parameters, set by ``audit.skew_protocol``
(:mod:`~counterfactual_lab.metrics.rankings`): under ``geyik`` D is uniform over the attribute's
values for the balanced generated sets and counterfactual-set datasets, the pool's own mix for
originals, and K = ``audit.top_k``; under ``socialcounterfactuals`` D is each query's own pool's
mix and K the number of groups, and :func:`mean_skew_rows` averages MaxSkew over the queries. K
larger than the pool is capped to it. Every row says its protocol, K and D (``protocol``, ``k``,
``desired``).

Intervals: cluster bootstrap by source. A resample is a multiset of pool items (every image of a
drawn source, as many times as it was drawn), ranked by the same scores; copies of one image are
adjacent. Resamples where a statistic is undefined (a group absent from the top K) are skipped
and counted. A resample of a pool of N items in G groups holds about N·G prefix shares (NDKL reads
the group mix of every prefix), so resamples are processed in blocks of at most
``_CHUNK_CELLS / (N·G)`` (:meth:`~counterfactual_lab.metrics.intervals.ClusterBootstrap.count_blocks`):
memory stays bounded whatever the size of the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.config.skew_protocols import SKEW_PROTOCOL_GEYIK, SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS
from counterfactual_lab.metrics.intervals import (
    ClusterBootstrap,
    IntervalSettings,
    cluster_codes,
    percentile_interval,
)
from counterfactual_lab.metrics.schema import Estimate, metric_row

DESIRED_UNIFORM = "uniform"
DESIRED_POOL = "pool"


def uniform_distribution(values: Sequence[str]) -> dict[str, float]:
    """D(a) = 1/|values| for every value."""
    values = sorted(set(values))
    if not values:
        raise ValueError("a desired distribution needs at least one attribute value")
    return {v: 1.0 / len(values) for v in values}


def _encode(ranked_groups: Sequence[str], desired: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = sorted(desired)
    index = {g: i for i, g in enumerate(names)}
    unknown = sorted({g for g in ranked_groups if g not in index})
    if unknown:
        raise ValueError(f"groups {unknown} are not in the desired distribution {names}")
    if not ranked_groups:
        raise ValueError("the ranking is empty: nothing to measure skew on")
    d = np.array([desired[g] for g in names], dtype=float)
    if (d <= 0).any() or not np.isclose(d.sum(), 1.0):
        raise ValueError(f"the desired distribution must be positive and sum to 1, got {dict(desired)}")
    return names, np.array([index[g] for g in ranked_groups], dtype=np.int64), d


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")


def skew_at_k(ranked_groups: Sequence[str], k: int, desired: Mapping[str, float]) -> dict[str, float | None]:
    """``Skew_a@K`` for every group of ``desired``; None for a group absent from the top K.

    ``ranked_groups``: the group of each ranked item, best first. K is capped to the ranking.
    """
    _check_k(k)
    names, codes, d = _encode(ranked_groups, desired)
    k = min(k, len(codes))
    top = np.bincount(codes[:k], minlength=len(names)) / k
    return {g: (float(np.log(t / p)) if t > 0 else None) for g, t, p in zip(names, top, d)}


def ndkl(ranked_groups: Sequence[str], desired: Mapping[str, float], k: int | None = None) -> float:
    """NDKL of the ranking against ``desired``: over every position (``k=None``) or the first ``k``."""
    names, codes, d = _encode(ranked_groups, desired)
    if k is not None:
        _check_k(k)
    n = len(codes)
    whole, truncated = _ndkl_of_resamples(codes, np.ones((1, n), dtype=np.int64), len(names), d[None, :],
                                          np.array([min(k, n) if k is not None else n]))
    return float(truncated[0])


def _top_k_skews(codes: np.ndarray, weights: np.ndarray, n_groups: int, k: int, desired: np.ndarray | None
                 ) -> dict[str, np.ndarray]:
    """Skew@K of each resample (module doc of :func:`ranking_replicates`), with the D each was measured
    against (``d``, (b, G)) and its K (``k_b``, capped to the resample's pool). A resample with an
    empty pool has every statistic NaN."""
    w = np.asarray(weights, dtype=float)
    onehot = np.eye(n_groups)[codes]  # (n, G)
    totals = w.sum(axis=1)  # (b,)
    k_b = np.minimum(k, totals)
    before = np.cumsum(w, axis=1) - w
    take = np.clip(k_b[:, None] - before, 0.0, w)  # copies of each item inside the top K
    with np.errstate(divide="ignore", invalid="ignore"):
        top = (take @ onehot) / k_b[:, None]
        pool_mix = (w @ onehot) / totals[:, None]
        d = np.broadcast_to(desired, top.shape) if desired is not None else pool_mix
        in_scope = d > 0  # False for a group outside D (and everywhere in an empty pool: NaN)
        skew = np.where(in_scope, np.log(top / np.where(in_scope, d, 1.0)), np.nan)  # −inf where absent from the top K
    max_skew = np.where(in_scope, skew, -np.inf).max(axis=1)
    min_skew = np.where(in_scope, skew, np.inf).min(axis=1)
    return {"skew": skew, "max_skew": np.where(np.isfinite(max_skew), max_skew, np.nan),
            "min_skew": np.where(np.isfinite(min_skew), min_skew, np.nan), "d": d, "k_b": k_b}


def ranking_replicates(
    codes: np.ndarray, weights: np.ndarray, n_groups: int, k: int, desired: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Ranking statistics of each resample.

    ``codes``: the group code of each pool item in rank order (best first); ``weights``: (b, n)
    copies of each item per resample; ``desired``: the fixed D, or None for each resample's own
    pool mix. Returns arrays over the b resamples: ``skew`` (b, G) with NaN where a group is
    absent from the top K (or from the pool, for D = pool mix), ``max_skew``, ``min_skew`` (NaN
    when a group is absent from the top K), ``ndkl``, ``ndkl_k``.
    """
    w = np.asarray(weights, dtype=float)
    top = _top_k_skews(codes, w, n_groups, k, desired)
    ndkl_all, ndkl_k = _ndkl_of_resamples(codes, w.astype(np.int64), n_groups, np.array(top["d"], dtype=float), top["k_b"])
    skew = top["skew"]
    return {"skew": np.where(np.isfinite(skew), skew, np.nan), "max_skew": top["max_skew"], "min_skew": top["min_skew"],
            "ndkl": ndkl_all, "ndkl_k": ndkl_k}


def _ndkl_of_resamples(codes: np.ndarray, copies: np.ndarray, n_groups: int, desired: np.ndarray, k_b: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(NDKL over all positions, NDKL over the first k_b) of every resample at once.

    Each resample's ranking is the items in rank order, each repeated ``copies[b, i]`` times; all
    rankings are laid end to end and the prefix shares come from one running count per group,
    less the count at the start of the resample's own ranking. ``desired``: (b, G), one D per
    resample. KL(P‖D) = Σ P ln P − Σ P ln D, with 0 · ln 0 = 0 (and D = 0 only where P = 0).
    """
    b = copies.shape[0]
    lengths = copies.sum(axis=1)
    total = int(lengths.sum())
    row = np.repeat(np.arange(b, dtype=np.int32), lengths)  # int32: one of several arrays of one entry per position
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(1, total + 1, dtype=float)
    position -= starts[row]
    discount = 1.0 / np.log2(position + 1)
    log_desired = np.zeros_like(desired)
    np.log(desired, out=log_desired, where=desired > 0)
    # One D for every resample (the uniform one) only when every row is exactly the first: two pool
    # mixes a rounding error apart are two targets, and each resample keeps its own.
    one_d = bool((desired == desired[:1]).all())
    flat = np.repeat(np.tile(codes.astype(np.int32), b), copies.ravel())
    # KL(P_i ‖ D) accumulated one group at a time: memory holds a few arrays of one number per
    # position, never one of a number per (position, group).
    kl = np.zeros(total)
    share = np.empty(total)
    log_share = np.empty(total)
    for g in range(n_groups):
        np.cumsum(flat == g, out=share)
        before = np.where(starts > 0, share[np.maximum(starts - 1, 0)], 0.0)  # count before each resample's ranking
        share -= before[row]
        share /= position
        log_share.fill(0.0)
        np.log(share, out=log_share, where=share > 0)
        log_share -= log_desired[0, g] if one_d else log_desired[row, g]
        share *= log_share
        kl += share
    del flat, share, log_share
    kl *= discount
    whole = np.bincount(row, kl, minlength=b) / np.bincount(row, discount, minlength=b)
    top = position <= k_b[row]
    truncated = np.bincount(row[top], kl[top], minlength=b) / np.bincount(row[top], discount[top], minlength=b)
    return whole, truncated


def ranked_pool(pool: pl.DataFrame, retrieval: pl.DataFrame, query: str) -> pl.DataFrame:
    """``pool`` rows (id, content_key, source_id, group) with the query's score, best first.

    Retrieval is scored per evaluation chunk and an image can sit in the pool under several
    attributes, so an image may carry several identical score rows: each is ranked once.
    Ties keep a fixed order (by id).
    """
    items = pool.select("id", "content_key", "source_id", "group").unique(subset=["id", "content_key"], maintain_order=True)
    scores = retrieval.filter(pl.col("query") == query).select("id", "content_key", "score").unique(
        subset=["id", "content_key"], maintain_order=True
    )
    return items.join(scores, on=["id", "content_key"], how="inner").sort(["score", "id"], descending=[True, False])


def describe_desired(kind: str, shares: Mapping[str, float]) -> str:
    """The ``desired`` column: ``uniform: female=0.5, male=0.5`` or ``pool: female=0.25, male=0.75``."""
    return f"{kind}: " + ", ".join(f"{group}={float(share):.6g}" for group, share in sorted(shares.items()))


def retrieval_rows(
    ranked: pl.DataFrame,
    attribute: str,
    stratum: str,
    query: str,
    top_k: int,
    settings: IntervalSettings,
    desired_values: Sequence[str] | None,
    protocol: str = SKEW_PROTOCOL_GEYIK,
) -> list[dict[str, Any]]:
    """Skew@K per group, MaxSkew@K, MinSkew@K, NDKL and NDKL@K of one ranked pool.

    ``desired_values``: the attribute's values for a uniform D (every ranked group must be one
    of them), or None for D = the pool's mix (recomputed in each resample). Every row carries
    ``protocol``, its K (capped to the pool; for ``ndkl`` the whole ranking's length) and D written
    out (:func:`describe_desired`).
    """
    if ranked.height == 0:
        return []
    _check_k(top_k)
    groups = ranked["group"].to_list()
    names = sorted(set(desired_values)) if desired_values is not None else sorted(set(groups))
    desired = np.full(len(names), 1.0 / len(names)) if desired_values is not None else None
    _, codes, _ = _encode(groups, {g: 1.0 / len(names) for g in names})
    c_codes, c = cluster_codes(ranked["source_id"].to_numpy())
    n = len(codes)
    k = min(top_k, n)
    shares = desired if desired is not None else np.bincount(codes, minlength=len(names)) / n
    described = describe_desired(DESIRED_UNIFORM if desired is not None else DESIRED_POOL, dict(zip(names, shares)))
    at_k = {"protocol": protocol, "k": k, "desired": described}
    whole = {"protocol": protocol, "k": n, "desired": described}
    point = ranking_replicates(codes, np.ones((1, n)), len(names), k, desired)
    # Per-item copies in each resample = the resample's count of the item's source. Each resample
    # expands to its whole ranking (≈ n items × G shares), so blocks are sized by n·G, not by C.
    reps: dict[str, list[np.ndarray]] = {key: [] for key in point}
    for counts in ClusterBootstrap(c, settings).count_blocks(cells_per_resample=n * len(names)):
        for key, value in ranking_replicates(codes, counts[:, c_codes], len(names), k, desired).items():
            reps[key].append(value)
    boot = {key: np.concatenate(parts, axis=0) for key, parts in reps.items()}
    capped = f"K capped to the pool size {n}" if top_k > n else None
    suffix = f"@{top_k}"

    def estimate(value: float, replicates: np.ndarray, note: str | None = None, uses_k: bool = True) -> Estimate:
        cap = capped if uses_k else None
        if not np.isfinite(value):
            return Estimate.undefined(note or "undefined", n, c).with_note(cap)
        low, high, skipped = percentile_interval(replicates, settings.confidence)
        return Estimate(float(value), low, high, n, c, skipped, note).with_note(cap)

    top_counts = np.bincount(codes[:k], minlength=len(names))
    absent = [g for g, count in zip(names, top_counts) if count == 0]
    rows = []
    for j, group in enumerate(names):
        why = f"{group} is absent from the top {k} (0 of {k}): skew is −∞" if top_counts[j] == 0 else None
        rows.append(metric_row(f"skew{suffix}", stratum, attribute, estimate(point["skew"][0, j], boot["skew"][:, j], why),
                               group=group, query=query, ranking=at_k))
    skews = np.where(np.isfinite(point["skew"][0]), point["skew"][0], -np.inf)
    top_group = names[int(np.argmax(skews))]
    rows.append(metric_row(f"max_skew{suffix}", stratum, attribute, estimate(point["max_skew"][0], boot["max_skew"]),
                           group=top_group, query=query, ranking=at_k))
    if absent:
        why = f"{', '.join(absent)} absent from the top {k}: MinSkew is −∞"
        rows.append(metric_row(f"min_skew{suffix}", stratum, attribute, Estimate.undefined(why, n, c).with_note(capped),
                               group=absent[0], query=query, ranking=at_k))
    else:
        bottom_group = names[int(np.argmin(skews))]
        rows.append(metric_row(f"min_skew{suffix}", stratum, attribute, estimate(point["min_skew"][0], boot["min_skew"]),
                               group=bottom_group, query=query, ranking=at_k))
    rows.append(metric_row("ndkl", stratum, attribute, estimate(point["ndkl"][0], boot["ndkl"], uses_k=False), query=query,
                           ranking=whole))
    rows.append(metric_row(f"ndkl{suffix}", stratum, attribute, estimate(point["ndkl_k"][0], boot["ndkl_k"]), query=query,
                           ranking=at_k))
    return rows


def mean_skew_rows(
    rankings: Sequence[tuple[str, pl.DataFrame]],
    attribute: str,
    stratum: str,
    top_k: int,
    settings: IntervalSettings,
    protocol: str = SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS,
) -> list[dict[str, Any]]:
    """MaxSkew@K and MinSkew@K averaged over the queries (query null): the SocialCounterfactuals summary.

    ``rankings``: (query, its own ranked pool) for every query; each is measured against its own
    pool's mix. With Q the queries whose pool is not empty::

        mean MaxSkew@K = (1/Q) Σ_q MaxSkew_q@K

    and MinSkew@K likewise, except that a group absent from a query's top K makes that query's
    MinSkew −∞, so the mean is null (with a note counting such lists; the released code counts 0
    there). The note of the MaxSkew row counts the top-K lists where a group was absent. Intervals:
    one cluster bootstrap over the sources of every query's pool together (a resample leaving a
    query's pool empty, or, for MinSkew, a group out of a top K, is skipped and counted).
    """
    _check_k(top_k)
    ranked = [(query, frame) for query, frame in rankings if frame.height]
    without = [query for query, frame in rankings if not frame.height]
    ranking = {"protocol": protocol, "k": top_k, "desired": f"{DESIRED_POOL}: each query's own mix"}
    suffix = f"@{top_k}"
    none_own = f"no own sets for {', '.join(repr(q) for q in without)}" if without else None
    if not ranked:
        why = f"no query has its own sets in this stratum ({none_own})"
        return [metric_row(f"max_skew{suffix}", stratum, attribute, Estimate.undefined(why), ranking=ranking)]
    names = sorted({g for _, frame in ranked for g in frame["group"].to_list()})
    index = {g: i for i, g in enumerate(names)}
    codes = [np.array([index[g] for g in frame["group"].to_list()], dtype=np.int64) for _, frame in ranked]
    sources = [frame["source_id"].to_numpy() for _, frame in ranked]
    every_cluster, c = cluster_codes(np.concatenate(sources))
    clusters = np.split(every_cluster, np.cumsum([len(s) for s in sources])[:-1])
    n, q = int(sum(len(x) for x in codes)), len(ranked)

    def per_query(weights: Any) -> tuple[np.ndarray, np.ndarray]:
        """(MaxSkew, MinSkew) of every resample (rows) and query (columns); ``weights(clusters, n)``."""
        stats = [_top_k_skews(x, weights(cl, len(x)), len(names), top_k, None) for x, cl in zip(codes, clusters)]
        return np.stack([s["max_skew"] for s in stats], axis=1), np.stack([s["min_skew"] for s in stats], axis=1)

    point_max, point_min = per_query(lambda _, size: np.ones((1, size)))
    boot_max, boot_min = [], []
    for counts in ClusterBootstrap(c, settings).count_blocks(cells_per_resample=n * len(names)):
        block_max, block_min = per_query(lambda cl, _: counts[:, cl])
        boot_max.append(block_max.mean(axis=1))  # NaN (skipped) where a query's pool was left empty
        boot_min.append(block_min.mean(axis=1))
    absent = int(np.isnan(point_min[0]).sum())
    capped = [query for (query, _), x in zip(ranked, codes) if len(x) < top_k]
    lists = f"the top-{top_k} lists of {q} {'query' if q == 1 else 'queries'}"
    counted = f"a group was absent from {absent} of {q} top-{top_k} lists"
    notes = [f"mean over {lists}, each query ranking its own sets against their own mix", counted]
    notes += [none_own] if none_own else []
    notes += [f"K capped to the pool size for {', '.join(repr(x) for x in capped)}"] if capped else []

    def estimate(value: float, replicates: list[np.ndarray], note: str) -> Estimate:
        low, high, skipped = percentile_interval(np.concatenate(replicates), settings.confidence)
        return Estimate(float(value), low, high, n, c, skipped, note)

    rows = [metric_row(f"max_skew{suffix}", stratum, attribute, estimate(point_max[0].mean(), boot_max, "; ".join(notes)),
                       ranking=ranking)]
    if absent:
        why = (f"{counted}, where MinSkew is −∞: no mean (the released SocialCounterfactuals code counts such a "
               "list's MinSkew as 0)")
        rows.append(metric_row(f"min_skew{suffix}", stratum, attribute, Estimate.undefined(why, n, c), ranking=ranking))
    else:
        rows.append(metric_row(f"min_skew{suffix}", stratum, attribute,
                               estimate(point_min[0].mean(), boot_min, "; ".join(notes[:1] + notes[2:])), ranking=ranking))
    return rows
