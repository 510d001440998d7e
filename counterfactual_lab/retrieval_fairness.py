"""Ranking fairness of retrieval: Skew@K, MaxSkew@K, MinSkew@K and NDKL (Geyik et al. 2019).

A neutral query ("a photo of a doctor") ranks the pool of originals and kept
counterfactuals by similarity. If the model were indifferent to the protected
attribute, every prefix of the ranking would hold each group in its pool share.

Notation: the pool has N items; ``p_pool(a)`` is the share of group ``a`` in the pool and
``p_topK(a)`` its share among the K best-ranked items.

* ``Skew_a@K = ln[(p_topK(a) + ε) / (p_pool(a) + ε)]`` — positive: group ``a`` is
  over-represented in the top K; negative: under-represented. ``ε`` (default 1e-4, as in
  common implementations) keeps a group absent from the top K finite; ``ε = 0`` gives the
  exact formula of the paper.
* ``MaxSkew@K = max_a Skew_a@K`` and ``MinSkew@K = min_a Skew_a@K``.
* ``NDKL = (1/Z) Σ_{i=1..K} KL(D_top-i ‖ D_pool) / log₂(i+1)`` with
  ``Z = Σ_{i=1..K} 1/log₂(i+1)`` and ``KL(P‖Q) = Σ_a P(a) ln(P(a)/Q(a))`` (0 ln 0 = 0):
  0 when every prefix matches the pool, larger when the top of the ranking is skewed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_EPSILON = 1e-4


def _encode(ranked_groups: Sequence[str]) -> tuple[list[str], np.ndarray]:
    groups = sorted(set(ranked_groups))
    if not groups:
        raise ValueError("the ranked pool is empty: nothing to measure skew on")
    index = {g: i for i, g in enumerate(groups)}
    return groups, np.array([index[g] for g in ranked_groups], dtype=np.int64)


def _check_k(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    return min(k, n)


def skew_at_k(ranked_groups: Sequence[str], k: int, *, epsilon: float = DEFAULT_EPSILON) -> dict[str, float]:
    """``Skew_a@K`` for every group ``a`` of the pool.

    ``ranked_groups`` holds the group of every pool item, best-ranked first; the pool
    distribution is taken over the whole list. K larger than the pool is capped to it.
    """
    groups, codes = _encode(ranked_groups)
    k = _check_k(k, len(codes))
    pool = np.bincount(codes, minlength=len(groups)) / len(codes)
    top = np.bincount(codes[:k], minlength=len(groups)) / k
    skews = np.log((top + epsilon) / (pool + epsilon))
    return {g: float(s) for g, s in zip(groups, skews)}


def max_min_skew_at_k(
    ranked_groups: Sequence[str], k: int, *, epsilon: float = DEFAULT_EPSILON
) -> tuple[float, float]:
    """``(MaxSkew@K, MinSkew@K)``: the largest and smallest ``Skew_a@K`` over groups."""
    skews = list(skew_at_k(ranked_groups, k, epsilon=epsilon).values())
    return max(skews), min(skews)


def ndkl(ranked_groups: Sequence[str], k: int) -> float:
    """Normalised discounted KL divergence of the top-``i`` prefixes from the pool, i = 1..K."""
    groups, codes = _encode(ranked_groups)
    k = _check_k(k, len(codes))
    pool = np.bincount(codes, minlength=len(groups)) / len(codes)
    one_hot = np.eye(len(groups))[codes[:k]]  # (K, G)
    prefix = np.cumsum(one_hot, axis=0) / np.arange(1, k + 1)[:, None]  # D_top-i for i = 1..K
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(prefix > 0, prefix * np.log(prefix / pool), 0.0)
    kl = terms.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(1, k + 1) + 1)
    return float((kl * discounts).sum() / discounts.sum())


def rank_groups(scores: np.ndarray, groups: Sequence[str]) -> list[str]:
    """The groups ordered by descending score; ties keep their input order (stable)."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return [groups[i] for i in order]
