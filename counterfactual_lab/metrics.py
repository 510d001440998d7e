"""Fairness metrics of the model under audit, each with a seeded bootstrap interval and n.

Inputs are the frames :mod:`counterfactual_lab.evaluate` produces: ``predictions`` (one row
per pool image per attribute, with ``score_<label>`` and ``top1``), ``retrieval``
(query, id, content_key, score) and the judge's ``counterfactuals``. The output of
:func:`compute_metrics` is the long ``metrics.parquet`` table::

    metric, attribute, group, label, query, value, ci_low, ci_high, n

Metric names (docs/metrics.md explains each for readers of a report):

==============================  ======================================================
``flip_rate``                   share of (original, counterfactual) pairs whose top-1 differs
``prob_gap_abs`` / ``_signed``  mean |Δp| / mean Δp of a label's probability, Δp = p(cf) − p(orig)
``selection_rate``              share of a group's images whose top-1 is the label (fairlearn)
``demographic_parity_difference`` / ``_ratio``  fairlearn, one-vs-rest per label
``equalized_odds_difference``   fairlearn, one-vs-rest per label, when ground truth exists
``skew@K`` ``max_skew@K`` ``min_skew@K`` ``ndkl@K``  retrieval fairness (Geyik et al. 2019)
``cits``                        the project's counterfactual image-text score (:mod:`cits`)
==============================  ======================================================

Intervals: percentile bootstrap (:mod:`counterfactual_lab.bootstrap`) over the unit each
metric averages: pairs for flip rate and gaps, pool rows for parity, equalized odds and
retrieval, kept counterfactuals for CITS. Point estimates of parity and equalized odds come
from fairlearn; their bootstrap replicates use the same formulas vectorised (one fairlearn
``MetricFrame`` per resample costs ~50 ms, a minute per metric at 1,000 resamples), and the
tests check those replicates equal fairlearn's on resampled data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.bootstrap import DEFAULT_SEED, bootstrap_ci, percentile_interval, resample_indices
from counterfactual_lab.cits import cits_score
from counterfactual_lab.config import AuditModelConfig
from counterfactual_lab.evaluate import VARIANT_COUNTERFACTUAL, VARIANT_ORIGINAL, score_column
from counterfactual_lab.retrieval_fairness import DEFAULT_EPSILON, ndkl, skew_at_k

METRICS_SCHEMA = {
    "metric": pl.String,
    "attribute": pl.String,
    "group": pl.String,
    "label": pl.String,
    "query": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n": pl.Int64,
}
UNKNOWN_GROUP = "unknown"


def _row(metric: str, attribute: str, value: float | None, ci: tuple[float | None, float | None], n: int,
         group: str | None = None, label: str | None = None, query: str | None = None) -> dict[str, Any]:
    return {
        "metric": metric, "attribute": attribute, "group": group, "label": label, "query": query,
        "value": None if value is None else float(value), "ci_low": ci[0], "ci_high": ci[1], "n": int(n),
    }


# -- counterfactual pairs --------------------------------------------------------------------


def counterfactual_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """Each counterfactual joined to its original by (source_id, attribute).

    Columns: source_id, attribute, transition ("source→target"), top1_original,
    top1_counterfactual, and ``score_<label>_original`` / ``_counterfactual`` per label.
    An original of unknown group reads as ``unknown`` in the transition.
    """
    scores = [score_column(label) for label in labels]
    originals = predictions.filter(pl.col("variant") == VARIANT_ORIGINAL).select(
        "source_id", "attribute", pl.col("group").alias("source_group"), pl.col("top1").alias("top1_original"),
        *[pl.col(s).alias(f"{s}_original") for s in scores],
    ).unique(subset=["source_id", "attribute"], keep="first", maintain_order=True)
    edits = predictions.filter(pl.col("variant") == VARIANT_COUNTERFACTUAL).select(
        "source_id", "attribute", pl.col("group").alias("target_group"), pl.col("top1").alias("top1_counterfactual"),
        *[pl.col(s).alias(f"{s}_counterfactual") for s in scores],
    )
    pairs = edits.join(originals, on=["source_id", "attribute"], how="inner")
    return pairs.with_columns(
        (pl.col("source_group").fill_null(UNKNOWN_GROUP) + "→" + pl.col("target_group").fill_null(UNKNOWN_GROUP)).alias("transition")
    )


def counterfactual_flip_rate(pairs: pl.DataFrame) -> float | None:
    """Flip rate = (1/P) Σ_pairs 1[top1(original) ≠ top1(counterfactual)]; None without pairs."""
    if pairs.height == 0:
        return None
    return float((pairs["top1_original"] != pairs["top1_counterfactual"]).mean())


def probability_gap(pairs: pl.DataFrame, label: str) -> tuple[float | None, float | None]:
    """(mean |Δ|, mean Δ) with Δ = p_label(counterfactual) − p_label(original) over the pairs.

    The absolute gap measures how much the change moves the label's probability in any
    direction; the signed gap whether it raises (> 0) or lowers (< 0) it.
    """
    if pairs.height == 0:
        return None, None
    delta = _deltas(pairs, label)
    return float(np.abs(delta).mean()), float(delta.mean())


def _deltas(pairs: pl.DataFrame, label: str) -> np.ndarray:
    s = score_column(label)
    return (pairs[f"{s}_counterfactual"] - pairs[f"{s}_original"]).to_numpy().astype(float)


# -- group fairness through fairlearn ----------------------------------------------------------


def demographic_parity(predictions: pl.DataFrame, label: str) -> dict[str, Any]:
    """Demographic parity of predicting ``label`` (one-vs-rest: top1 == label) across ``group``.

    selection_rate(g) = P(top1 = label | group = g); difference = max_g − min_g;
    ratio = min_g / max_g. Computed by fairlearn's ``MetricFrame`` (``selection_rate``,
    ``difference()`` / ``ratio()`` between groups). Rows with a null group are left out;
    with fewer than two groups parity is undefined and the values are None. Returns {"difference", "ratio", "by_group": {group: rate}, "n"}.
    """
    from fairlearn.metrics import MetricFrame, selection_rate

    rows = predictions.filter(pl.col("group").is_not_null())
    if rows["group"].n_unique() < 2:
        return {"difference": None, "ratio": None, "by_group": {}, "n": rows.height}
    y_pred = (rows["top1"] == label).fill_null(False).to_numpy()
    groups = rows["group"].to_numpy()
    frame = MetricFrame(metrics=selection_rate, y_true=y_pred, y_pred=y_pred, sensitive_features=groups)
    return {
        "difference": float(frame.difference(method="between_groups")),
        "ratio": float(frame.ratio(method="between_groups")),
        "by_group": {str(g): float(v) for g, v in frame.by_group.items()},
        "n": rows.height,
    }


def equalized_odds(predictions: pl.DataFrame, label: str) -> dict[str, Any]:
    """Equalized odds difference of predicting ``label`` (one-vs-rest) across ``group``.

    With y = 1[label_true = label] and ŷ = 1[top1 = label]: the larger of the between-group
    differences of the true positive rate P(ŷ=1 | y=1, g) and the false positive rate
    P(ŷ=1 | y=0, g), computed by ``fairlearn.metrics.equalized_odds_difference``. Rows
    without ground truth or group are left out; fewer than two groups give None. Returns {"difference", "n"}.
    """
    from fairlearn.metrics import equalized_odds_difference

    rows = predictions.filter(pl.col("group").is_not_null() & pl.col("label").is_not_null())
    if rows["group"].n_unique() < 2:
        return {"difference": None, "n": rows.height}
    y_true = (rows["label"] == label).to_numpy()
    y_pred = (rows["top1"] == label).fill_null(False).to_numpy()
    value = equalized_odds_difference(
        y_true, y_pred, sensitive_features=rows["group"].to_numpy(), method="between_groups", agg="worst_case"
    )
    return {"difference": float(value), "n": rows.height}


def _group_means(values: np.ndarray, codes: np.ndarray, n_groups: int, indices: np.ndarray, empty: float) -> np.ndarray:
    """(B, G) mean of ``values`` per group in each resample; NaN where a group is absent,
    ``empty`` where it is present but ``values`` is masked out (NaN) for all its rows."""
    b = indices.shape[0]
    flat_codes = (codes[indices] + n_groups * np.arange(b)[:, None]).ravel()
    v = values[indices].ravel()
    present = np.bincount(flat_codes, minlength=b * n_groups).reshape(b, n_groups)
    valid = ~np.isnan(v)
    count = np.bincount(flat_codes[valid], minlength=b * n_groups).reshape(b, n_groups)
    total = np.bincount(flat_codes[valid], weights=v[valid], minlength=b * n_groups).reshape(b, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), empty)
    return np.where(present > 0, means, np.nan)


def _spread(rates: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmax(rates, axis=1) - np.nanmin(rates, axis=1)


def _ratio(rates: np.ndarray) -> np.ndarray:
    high, low = np.nanmax(rates, axis=1), np.nanmin(rates, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(high > 0, low / np.where(high > 0, high, 1), np.nan)


def parity_replicates(y_pred: np.ndarray, groups: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates (difference, ratio) of demographic parity, one per row of ``indices``."""
    _, codes = np.unique(groups, return_inverse=True)
    rates = _group_means(y_pred.astype(float), codes, codes.max() + 1, indices, empty=0.0)
    return _spread(rates), _ratio(rates)


def equalized_odds_replicates(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of the equalized odds difference (fairlearn's worst case).

    As in fairlearn (through scikit-learn's normalised confusion matrix), a group without
    positives has TPR 0 and one without negatives FPR 0.
    """
    _, codes = np.unique(groups, return_inverse=True)
    g = codes.max() + 1
    pred = y_pred.astype(float)
    tpr = _group_means(np.where(y_true, pred, np.nan), codes, g, indices, empty=0.0)
    fpr = _group_means(np.where(~y_true, pred, np.nan), codes, g, indices, empty=0.0)
    return np.maximum(_spread(tpr), _spread(fpr))


# -- retrieval ----------------------------------------------------------------------------------


def ranked_pool(predictions: pl.DataFrame, retrieval: pl.DataFrame, attribute: str, query: str) -> pl.DataFrame:
    """The attribute's pool (rows with a known group) with the query's scores, best first."""
    pool = predictions.filter((pl.col("attribute") == attribute) & pl.col("group").is_not_null()).select(
        "id", "content_key", "group"
    ).unique(subset=["id", "content_key"], maintain_order=True)
    # Retrieval is scored per evaluation chunk, and an original sits in the pool once per
    # attribute, so one image can carry several identical score rows: rank each image once.
    scores = retrieval.filter(pl.col("query") == query).select("id", "content_key", "score").unique(
        subset=["id", "content_key"], maintain_order=True
    )
    scored = pool.join(scores, on=["id", "content_key"], how="inner")
    return scored.sort(["score", "id"], descending=[True, False])


def _retrieval_rows(scored: pl.DataFrame, attribute: str, query: str, k: int, audit: AuditModelConfig,
                    epsilon: float) -> list[dict[str, Any]]:
    groups = scored["group"].to_list()
    n = len(groups)
    k_eff = min(k, n)
    skews = skew_at_k(groups, k_eff, epsilon=epsilon)
    point_ndkl = ndkl(groups, k_eff)
    names = sorted(skews)
    # Bootstrap: resample pool images, re-rank the resample by score.
    scores = scored["score"].to_numpy()
    group_arr = np.array(groups, dtype=object)
    replicates = {name: [] for name in names}
    max_r, min_r, ndkl_r = [], [], []
    for row in resample_indices(n, audit.bootstrap_samples, DEFAULT_SEED):
        order = row[np.argsort(-scores[row], kind="stable")]
        ranked = group_arr[order].tolist()
        s = skew_at_k(ranked, k_eff, epsilon=epsilon)
        for name in names:
            # A group missing from the resampled pool has no defined skew in that replicate.
            replicates[name].append(s.get(name, np.nan))
        values = list(s.values())
        max_r.append(max(values))
        min_r.append(min(values))
        ndkl_r.append(ndkl(ranked, k_eff))
    suffix = f"@{k}"
    conf = audit.confidence
    top_group = max(names, key=lambda g: skews[g])
    bottom_group = min(names, key=lambda g: skews[g])
    out = [_row(f"skew{suffix}", attribute, skews[g], percentile_interval(np.array(replicates[g]), conf), n, group=g, query=query) for g in names]
    out.append(_row(f"max_skew{suffix}", attribute, skews[top_group], percentile_interval(np.array(max_r), conf), n, group=top_group, query=query))
    out.append(_row(f"min_skew{suffix}", attribute, skews[bottom_group], percentile_interval(np.array(min_r), conf), n, group=bottom_group, query=query))
    out.append(_row(f"ndkl{suffix}", attribute, point_ndkl, percentile_interval(np.array(ndkl_r), conf), n, query=query))
    return out


# -- CITS -------------------------------------------------------------------------------------


def cits(counterfactuals: pl.DataFrame) -> np.ndarray:
    """Per-candidate CITS (see :mod:`counterfactual_lab.cits`) from the judge's three similarities."""
    return cits_score(
        counterfactuals["text_similarity"].to_numpy().astype(float),
        counterfactuals["direction_similarity"].to_numpy().astype(float),
        counterfactuals["image_similarity"].to_numpy().astype(float),
    )


# -- the table --------------------------------------------------------------------------------


def compute_metrics(
    predictions: pl.DataFrame,
    retrieval: pl.DataFrame,
    counterfactuals: pl.DataFrame,
    audit: AuditModelConfig,
    *,
    skew_epsilon: float = DEFAULT_EPSILON,
) -> pl.DataFrame:
    """Every metric for every attribute in ``predictions`` as the long metrics table (see module doc).

    Per attribute: flip rate and probability gaps overall (group null) and per transition
    (group "source→target"); selection rate per group and demographic parity per label;
    equalized odds per label when ground-truth labels exist; skew@K per group, MaxSkew@K,
    MinSkew@K (group = the group attaining it) and NDKL@K per query with K = ``audit.top_k``
    (capped to the pool); CITS over kept counterfactuals, overall and per transition.
    """
    boot = {"n_resamples": audit.bootstrap_samples, "confidence": audit.confidence, "seed": DEFAULT_SEED}
    rows: list[dict[str, Any]] = []
    attributes = sorted(predictions["attribute"].unique().drop_nulls().to_list()) if predictions.height else []
    pairs_all = counterfactual_pairs(predictions, audit.labels) if predictions.height else None
    has_truth = "label" in predictions.columns and predictions["label"].is_not_null().any()

    for attribute in attributes:
        # Counterfactual fairness: pairs.
        pairs = pairs_all.filter(pl.col("attribute") == attribute)
        subsets = [(None, pairs)] + [(t, pairs.filter(pl.col("transition") == t)) for t in sorted(pairs["transition"].unique().to_list())]
        for transition, subset in subsets:
            if subset.height == 0:
                continue
            flips = (subset["top1_original"] != subset["top1_counterfactual"]).to_numpy().astype(float)
            rows.append(_row("flip_rate", attribute, flips.mean(), bootstrap_ci(flips, **boot), subset.height, group=transition))
            for label in audit.labels:
                delta = _deltas(subset, label)
                rows.append(_row("prob_gap_abs", attribute, np.abs(delta).mean(), bootstrap_ci(np.abs(delta), **boot), subset.height, group=transition, label=label))
                rows.append(_row("prob_gap_signed", attribute, delta.mean(), bootstrap_ci(delta, **boot), subset.height, group=transition, label=label))

        # Group fairness of the predicted labels over the pool.
        pool = predictions.filter((pl.col("attribute") == attribute) & pl.col("group").is_not_null())
        if pool["group"].n_unique() >= 2:  # parity compares groups: one group has none to compare
            groups = pool["group"].to_numpy()
            indices = resample_indices(pool.height, audit.bootstrap_samples, DEFAULT_SEED)
            for label in audit.labels:
                parity = demographic_parity(pool, label)
                y_pred = (pool["top1"] == label).fill_null(False).to_numpy()
                diff_r, ratio_r = parity_replicates(y_pred, groups, indices)
                for group, rate in sorted(parity["by_group"].items()):
                    member = groups == group
                    rows.append(_row("selection_rate", attribute, rate, bootstrap_ci(y_pred[member].astype(float), **boot), int(member.sum()), group=group, label=label))
                rows.append(_row("demographic_parity_difference", attribute, parity["difference"], percentile_interval(diff_r, audit.confidence), pool.height, label=label))
                rows.append(_row("demographic_parity_ratio", attribute, parity["ratio"], percentile_interval(ratio_r, audit.confidence), pool.height, label=label))
            if has_truth:
                truth = pool.filter(pl.col("label").is_not_null())
                if truth["group"].n_unique() >= 2:
                    t_groups = truth["group"].to_numpy()
                    t_indices = resample_indices(truth.height, audit.bootstrap_samples, DEFAULT_SEED)
                    for label in audit.labels:
                        odds = equalized_odds(truth, label)
                        y_true = (truth["label"] == label).to_numpy()
                        y_pred = (truth["top1"] == label).fill_null(False).to_numpy()
                        reps = equalized_odds_replicates(y_true, y_pred, t_groups, t_indices)
                        rows.append(_row("equalized_odds_difference", attribute, odds["difference"], percentile_interval(reps, audit.confidence), truth.height, label=label))

        # Retrieval fairness per neutral query.
        for query in audit.queries:
            scored = ranked_pool(predictions, retrieval, attribute, query) if retrieval.height else pl.DataFrame()
            if scored.height:
                rows.extend(_retrieval_rows(scored, attribute, query, audit.top_k, audit, skew_epsilon))

        # Counterfactual quality.
        if counterfactuals.height and "kept" in counterfactuals.columns:
            kept = counterfactuals.filter(
                (pl.col("attribute") == attribute) & pl.col("kept").fill_null(False) & pl.col("direction_similarity").is_not_null()
            )
            if kept.height:
                kept = kept.with_columns(
                    (pl.col("source_value").cast(pl.String).fill_null(UNKNOWN_GROUP) + "→" + pl.col("target_value").cast(pl.String)).alias("transition")
                )
                for transition in [None, *sorted(kept["transition"].unique().to_list())]:
                    subset = kept if transition is None else kept.filter(pl.col("transition") == transition)
                    values = cits(subset)
                    rows.append(_row("cits", attribute, values.mean(), bootstrap_ci(values, **boot), subset.height, group=transition))

    return pl.DataFrame(rows, schema=METRICS_SCHEMA) if rows else pl.DataFrame(schema=METRICS_SCHEMA)
