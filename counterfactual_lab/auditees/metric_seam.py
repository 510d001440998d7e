"""THE SEAM: pairs, strata and cluster-bootstrap intervals for the generative probes' metrics.

The shared metrics package (``counterfactual_lab/metrics/``, issue 9) defines which images are
compared (reconstruction → counterfactual within a set, control pairs, every ordered pair of an
evaluate-only set, original → counterfactual without reconstructions), the strata, and the
cluster bootstrap by source image. Until it is on main, this module provides the same functions
under the same names and signatures, so :mod:`counterfactual_lab.auditees.metrics` is written
against that API. Once ``counterfactual_lab.metrics`` has merged, replace the body of this module
with::

    from counterfactual_lab.metrics.intervals import IntervalSettings, mean_estimate, proportion_estimate
    from counterfactual_lab.metrics.pairs import control_pairs, member_pairs, original_pairs, reconstruction_pairs
    from counterfactual_lab.metrics.schema import (CONTROL_PREFIX, METRICS_SCHEMA, STRATUM_EVALUATE_ONLY,
        STRATUM_GENERATED, STRATUM_OBSERVATIONAL, STRATUM_REAL_VS_GENERATED, Estimate, metric_row)
    from counterfactual_lab.metrics.strata import comparison_pool, comparison_stratum, observational_pool

(and keep :data:`PAIRS`). The definitions here follow the shared contract (CONTRACTS.md, "The
evaluation pool" and "metrics.parquet"):

* pairs carry ``attribute, source_id, set_id, from_group, to_group, transition, top1_from,
  top1_to, score_<label>_from, score_<label>_to``; a probe's value travels as the label ``value``;
* the interval of a mean resamples *source images* (clusters) with replacement, B times, and
  takes the percentiles of the resampled means; a proportion at 0/n or n/n gets Wilson's score
  interval with n = the number of sources instead of a point.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl

METRICS_SCHEMA = {
    "metric": pl.String, "stratum": pl.String, "attribute": pl.String, "group": pl.String, "label": pl.String,
    "query": pl.String, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
    "n_sources": pl.Int64, "skipped_resamples": pl.Int64, "note": pl.String,
}
STRATUM_GENERATED = "generated"
STRATUM_OBSERVATIONAL = "observational"
STRATUM_REAL_VS_GENERATED = "real_vs_generated"
STRATUM_EVALUATE_ONLY = "evaluate_only"
CONTROL_PREFIX = "control_"
UNKNOWN_GROUP = "unknown"
_ORIGINAL, _RECONSTRUCTION, _COUNTERFACTUAL = "original", "reconstruction", "counterfactual"


# -- one estimate and its row ---------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A value with its interval, n (rows or pairs), n_sources, skipped resamples and a note."""

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    n_sources: int = 0
    skipped: int | None = None
    note: str | None = None

    @classmethod
    def undefined(cls, note: str, n: int = 0, n_sources: int = 0) -> "Estimate":
        return cls(None, None, None, n, n_sources, None, note)

    def with_note(self, note: str | None) -> "Estimate":
        if not note:
            return self
        return replace(self, note=note if self.note is None else f"{self.note}; {note}")


def metric_row(metric: str, stratum: str, attribute: str, estimate: Estimate, *, group: str | None = None,
               label: str | None = None, query: str | None = None) -> dict[str, Any]:
    """One row of ``metrics.parquet``; an undefined value must carry a note."""
    if estimate.value is None and not estimate.note:
        raise ValueError(f"{metric} ({stratum}, {attribute}) is undefined without a note saying why")
    value = None if estimate.value is None else float(estimate.value)
    return {
        "metric": metric, "stratum": stratum, "attribute": attribute, "group": group, "label": label, "query": query,
        "value": value, "ci_low": None if value is None or estimate.low is None else float(estimate.low),
        "ci_high": None if value is None or estimate.high is None else float(estimate.high),
        "n": int(estimate.n), "n_sources": int(estimate.n_sources),
        "skipped_resamples": None if estimate.skipped is None else int(estimate.skipped), "note": estimate.note,
    }


# -- intervals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalSettings:
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    @classmethod
    def from_audit(cls, audit: Any) -> "IntervalSettings":
        return cls(audit.bootstrap_samples, audit.confidence, getattr(audit, "bootstrap_seed", 0))


def _cluster_counts(n_clusters: int, settings: IntervalSettings) -> np.ndarray:
    """(B, C): how many times each cluster is drawn in each resample (C draws with replacement)."""
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, n_clusters, size=(settings.n_resamples, n_clusters))
    flat = (draws + n_clusters * np.arange(settings.n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=settings.n_resamples * n_clusters).reshape(settings.n_resamples, n_clusters).astype(float)


def mean_estimate(values: np.ndarray, clusters: Any, settings: IntervalSettings) -> Estimate:
    """Mean of ``values``; interval: percentile cluster bootstrap over ``clusters`` (source ids)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return Estimate.undefined("no rows to average")
    if not np.isfinite(values).all():
        raise ValueError("values to average must be finite (drop rows without a value first)")
    ids = np.asarray(clusters, dtype=object).astype(str)
    _, codes = np.unique(ids, return_inverse=True)
    c = int(codes.max()) + 1
    sums = np.bincount(codes, weights=values, minlength=c)
    counts = np.bincount(codes, minlength=c).astype(float)
    draws = _cluster_counts(c, settings)
    replicates = (draws @ sums) / (draws @ counts)
    alpha = (1.0 - settings.confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return Estimate(float(values.mean()), float(low), float(high), int(values.size), c, 0)


def proportion_estimate(successes: np.ndarray, clusters: Any, settings: IntervalSettings) -> Estimate:
    """Share of true ``successes``: cluster bootstrap, Wilson (n = sources) at 0/n and n/n."""
    estimate = mean_estimate(np.asarray(successes, dtype=bool).astype(float), clusters, settings)
    if estimate.value is None or 0.0 < estimate.value < 1.0:
        return estimate
    n, p = estimate.n_sources, estimate.value
    z = NormalDist().inv_cdf((1.0 + settings.confidence) / 2.0)
    centre, spread = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if p == 0 else max(0.0, (centre - spread) / (1 + z * z / n))
    high = 1.0 if p == 1 else min(1.0, (centre + spread) / (1 + z * z / n))
    return replace(estimate, low=float(low), high=float(high))


# -- strata ---------------------------------------------------------------------------------------


def comparison_stratum(predictions: pl.DataFrame) -> str | None:
    """generated (reconstructions present), real_vs_generated (originals + counterfactuals),
    evaluate_only (counterfactuals only); None with originals only."""
    variants = set(predictions["variant"].unique().to_list())
    if _RECONSTRUCTION in variants:
        return STRATUM_GENERATED
    if _COUNTERFACTUAL in variants:
        return STRATUM_REAL_VS_GENERATED if _ORIGINAL in variants else STRATUM_EVALUATE_ONLY
    return None


def comparison_pool(predictions: pl.DataFrame, stratum: str) -> pl.DataFrame:
    """The rows group metrics of ``stratum`` compare (controls excluded)."""
    not_control = ~pl.col("control").fill_null(False)
    if stratum == STRATUM_GENERATED:
        return predictions.filter(pl.col("variant").is_in([_RECONSTRUCTION, _COUNTERFACTUAL]) & not_control
                                  & pl.col("set_id").is_not_null())
    if stratum == STRATUM_EVALUATE_ONLY:
        return predictions.filter(pl.col("variant") == _COUNTERFACTUAL)
    if stratum == STRATUM_REAL_VS_GENERATED:
        return predictions.filter(pl.col("variant").is_in([_ORIGINAL, _COUNTERFACTUAL]) & not_control)
    raise ValueError(f"no comparison pool for stratum {stratum!r}")


def observational_pool(predictions: pl.DataFrame) -> pl.DataFrame:
    return predictions.filter(pl.col("variant") == _ORIGINAL)


# -- pairs ----------------------------------------------------------------------------------------


def _score(label: str) -> str:
    return f"score_{label}"


def _columns(labels: list[str]) -> list[str]:
    scores = [f"{_score(label)}_{side}" for label in labels for side in ("from", "to")]
    return ["attribute", "source_id", "set_id", "from_group", "to_group", "transition", "top1_from", "top1_to", *scores]


def _side(frame: pl.DataFrame, labels: list[str], side: str, keys: list[str]) -> pl.DataFrame:
    return frame.select(*keys, pl.col("group").alias(f"{side}_group"), pl.col("top1").alias(f"top1_{side}"),
                        *[pl.col(_score(label)).alias(f"{_score(label)}_{side}") for label in labels])


def _finish(pairs: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    pairs = pairs.with_columns(
        (pl.col("from_group").fill_null(UNKNOWN_GROUP) + "→" + pl.col("to_group").fill_null(UNKNOWN_GROUP)).alias("transition")
    )
    return pairs.select(_columns(labels)).sort(["attribute", "source_id", "set_id", "transition"], nulls_last=True)


def _variant(frame: pl.DataFrame, variant: str, control: bool = False) -> pl.DataFrame:
    return frame.filter((pl.col("variant") == variant) & (pl.col("control").fill_null(False) == control))


def _empty(labels: list[str]) -> pl.DataFrame:
    schema = {c: pl.String for c in _columns(labels)}
    schema.update({f"{_score(label)}_{side}": pl.Float64 for label in labels for side in ("from", "to")})
    return pl.DataFrame(schema=schema)


def reconstruction_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(reconstruction → counterfactual) within each (attribute, set_id)."""
    references = _variant(predictions, _RECONSTRUCTION).filter(pl.col("set_id").is_not_null())
    members = _variant(predictions, _COUNTERFACTUAL).filter(pl.col("set_id").is_not_null())
    if references.height == 0 or members.height == 0:
        return _empty(labels)
    keys = ["attribute", "set_id"]
    left = _side(references, labels, "from", [*keys, "source_id"]).unique(subset=keys, keep="first", maintain_order=True)
    return _finish(left.join(_side(members, labels, "to", keys), on=keys, how="inner"), labels)


def member_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """Every ordered pair of members with different known groups within each (attribute, set_id)."""
    members = _variant(predictions, _COUNTERFACTUAL).filter(pl.col("set_id").is_not_null() & pl.col("group").is_not_null())
    if members.height == 0:
        return _empty(labels)
    keys = ["attribute", "set_id"]
    pairs = _side(members, labels, "from", [*keys, "source_id"]).join(_side(members, labels, "to", keys), on=keys, how="inner")
    return _finish(pairs.filter(pl.col("from_group") != pl.col("to_group")), labels)


def original_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(original → counterfactual) on (source_id, attribute): real vs generated."""
    originals, edits = _variant(predictions, _ORIGINAL), _variant(predictions, _COUNTERFACTUAL)
    if originals.height == 0 or edits.height == 0:
        return _empty(labels)
    keys = ["attribute", "source_id"]
    left = _side(originals, labels, "from", keys).unique(subset=keys, keep="first", maintain_order=True)
    return _finish(left.join(_side(edits, labels, "to", [*keys, "set_id"]), on=keys, how="inner"), labels)


def control_pairs(predictions: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
    """(kept set's reconstruction → control image) for every kept set of the control's (source_id, attribute)."""
    controls = _variant(predictions, _RECONSTRUCTION, control=True)
    references = _variant(predictions, _RECONSTRUCTION).filter(pl.col("set_id").is_not_null())
    if controls.height == 0 or references.height == 0:
        return _empty(labels)
    keys = ["attribute", "source_id"]
    left = _side(references, labels, "from", [*keys, "set_id"]).unique(subset=["attribute", "set_id"], keep="first", maintain_order=True)
    return _finish(left.join(_side(controls, labels, "to", keys), on=keys, how="inner"), labels)


PAIRS = {
    STRATUM_GENERATED: reconstruction_pairs,
    STRATUM_EVALUATE_ONLY: member_pairs,
    STRATUM_REAL_VS_GENERATED: original_pairs,
}
