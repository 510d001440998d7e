"""The interval of a difference between two runs' values of one metric row (run B − run A).

* **Paired, where the runs share sources** (the counterfactual pair metrics: ``flip_rate``,
  ``prob_gap_abs``, ``prob_gap_signed`` per attribute, transition and label): each run's pairs are
  rebuilt from its ``predictions.parquet`` as its metrics were
  (:data:`~counterfactual_lab.metrics.pairs.PAIRS_BY_DESIGN`), reduced to a sum and a count per
  source image, and bootstrapped **jointly**: a source both runs saw is drawn the same number of
  times for both (the same resample), a source only one run saw is drawn within that run. Each
  replicate gives mean_B − mean_A; the interval is its percentiles. Sharing sources removes what the
  sources contribute to the variance, so a change of seed alone does not look like a change.
* **From both intervals** (every other row, or runs without shared sources): a normal
  approximation from each run's own interval, se = (high − low) / (2 z), and B − A ± z′·√(se_A² +
  se_B²), as if the runs were independent: conservative where they share sources.

Both are drawn at one level for all rows compared, Bonferroni over their number (the project's
family-wise convention). Resampling sources cannot see what a run's generator seed does to every
image at once (one seed is one draw), so a pair metric row changed only where the interval also
clears what another seed alone does (its control) and its ``min_effect`` where the table has one
(:func:`seed_allowance`); a synthetic-shift row, which has no control and whose reconstructions
another seed redraws, only beyond its measure's ``min_effect`` (:func:`shift_allowance`). Two runs
of the same audit with other seeds then show no change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.evaluate.pool import score_column
from counterfactual_lab.metrics.counterfactual_fairness import (
    FLIP_RATE,
    PROB_GAP_ABS,
    PROB_GAP_SIGNED,
    pair_deltas,
    pair_flips,
    usable_pairs,
)
from counterfactual_lab.metrics.error_control import min_effect_for
from counterfactual_lab.metrics.intervals import (
    ClusterBootstrap,
    IntervalSettings,
    percentile_interval,
    resamples_for_level,
    z_value,
)
from counterfactual_lab.metrics.pairs import PAIRS_BY_DESIGN
from counterfactual_lab.metrics.schema import missing
from counterfactual_lab.metrics.strata import comparison_stratum, normalise_predictions

PAIRED, FROM_INTERVALS = "paired", "from both intervals"
# (stratum, attribute, transition or None, metric, label or None): a pair metric row's key.
PairKey = tuple[str, str, str | None, str, str | None]


@dataclass(frozen=True)
class Difference:
    """B − A with its interval (None where it cannot be drawn) and how it was drawn."""

    value: float | None
    low: float | None
    high: float | None
    rule: str
    shared_sources: int = 0
    allowance: float = 0.0  # what another seed alone does (the rows' controls): a change must clear ±this

    @property
    def beyond(self) -> bool:
        """Whether the interval lies beyond ±allowance (beyond no change where there is no control)."""
        return self.low is not None and self.high is not None and (self.low > self.allowance or self.high < -self.allowance)


@dataclass(frozen=True)
class _SourceSums:
    """One run's pairs of one subset reduced per source: ids, value sums (sources × metrics), pair counts."""

    sources: list[str]
    sums: np.ndarray
    counts: np.ndarray


def run_labels(manifest: Mapping[str, Any], predictions: pl.DataFrame) -> list[str]:
    """The labels a run scored (the manifest's metric parameters, else the config), those with a score column."""
    labels = (manifest.get("metrics") or {}).get("labels") or ((manifest.get("config") or {}).get("audit") or {}).get("labels") or []
    return [str(label) for label in labels if score_column(str(label)) in predictions.columns]


def _pair_sums(predictions: pl.DataFrame, labels: Sequence[str]) -> tuple[str | None, dict[tuple[str, str | None], _SourceSums], list[tuple[str, str | None]]]:
    """(the run's comparison stratum, per (attribute, transition or None) its per-source sums, the
    metrics of the sums' columns as (metric, label))."""
    columns = [(FLIP_RATE, None)] + [(m, label) for label in labels for m in (PROB_GAP_ABS, PROB_GAP_SIGNED)]
    if predictions is None or predictions.is_empty() or "variant" not in predictions.columns:
        return None, {}, columns
    try:
        predictions = normalise_predictions(predictions, labels)
    except ValueError:  # a table this code cannot pair (an older or foreign layout): no paired intervals
        return None, {}, columns
    stratum = comparison_stratum(predictions)
    if stratum is None:
        return None, {}, columns
    pairs = usable_pairs(PAIRS_BY_DESIGN[stratum](predictions, list(labels)))
    out: dict[tuple[str, str | None], _SourceSums] = {}
    if pairs.is_empty():
        return stratum, out, columns
    values = [pair_flips(pairs).astype(float)]
    for label in labels:
        delta = pair_deltas(pairs, label)
        values += [np.abs(delta), delta]
    frame = pairs.select("attribute", "transition", "source_id").with_columns(
        [pl.Series(f"v{i}", v) for i, v in enumerate(values)])
    value_columns = [f"v{i}" for i in range(len(values))]
    for subset_by in (["attribute", "source_id"], ["attribute", "transition", "source_id"]):
        grouped = frame.group_by(subset_by).agg([pl.col(c).sum() for c in value_columns] + [pl.len().alias("_n")])
        keys = ["attribute"] if len(subset_by) == 2 else ["attribute", "transition"]
        for key, part in grouped.sort(subset_by).group_by(keys, maintain_order=True):
            attribute, transition = (key[0], None) if len(keys) == 1 else (key[0], key[1])
            out[(str(attribute), transition)] = _SourceSums(
                [str(s) for s in part["source_id"].to_list()], part.select(value_columns).to_numpy().astype(float),
                part["_n"].to_numpy().astype(float))
    return stratum, out, columns


def _bootstrap_sums(per_cluster: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Resampled totals of ``per_cluster`` (clusters × columns): (resamples × columns); zeros without clusters."""
    if per_cluster.shape[0] == 0:
        return np.zeros((n_resamples, per_cluster.shape[1]))
    settings = IntervalSettings(n_resamples, 0.5, seed)
    return ClusterBootstrap(per_cluster.shape[0], settings).sums(per_cluster)


def _paired(a: _SourceSums, b: _SourceSums, level: float, seed: int) -> tuple[list[tuple[float | None, float | None]], int]:
    """(the interval of mean_B − mean_A for every value column, how many sources the runs share)."""
    index_a = {s: i for i, s in enumerate(a.sources)}
    index_b = {s: i for i, s in enumerate(b.sources)}
    shared = [s for s in a.sources if s in index_b]
    only_a = [index_a[s] for s in a.sources if s not in index_b]
    only_b = [index_b[s] for s in b.sources if s not in index_a]
    sa, sb = [index_a[s] for s in shared], [index_b[s] for s in shared]
    k = a.sums.shape[1]
    n = resamples_for_level(level)
    joint = _bootstrap_sums(np.column_stack([a.sums[sa], a.counts[sa], b.sums[sb], b.counts[sb]]), n, seed)
    alone_a = _bootstrap_sums(np.column_stack([a.sums[only_a], a.counts[only_a]]), n, seed + 1)
    alone_b = _bootstrap_sums(np.column_stack([b.sums[only_b], b.counts[only_b]]), n, seed + 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = (joint[:, :k] + alone_a[:, :k]) / (joint[:, k:k + 1] + alone_a[:, k:k + 1])
        mean_b = (joint[:, k + 1:2 * k + 1] + alone_b[:, :k]) / (joint[:, 2 * k + 1:] + alone_b[:, k:k + 1])
    replicates = mean_b - mean_a
    intervals = []
    for j in range(k):
        low, high, _ = percentile_interval(replicates[:, j], level)
        intervals.append((low, high))
    return intervals, len(shared)


class PairedDifferences:
    """Paired intervals of B − A for every pair metric row both runs can rebuild (module doc)."""

    def __init__(self, manifest_a: Mapping[str, Any], predictions_a: pl.DataFrame, manifest_b: Mapping[str, Any],
                 predictions_b: pl.DataFrame, level: float, seed: int = 0) -> None:
        labels = [label for label in run_labels(manifest_a, predictions_a) if label in run_labels(manifest_b, predictions_b)]
        self.stratum_a, self._a, self._columns = _pair_sums(predictions_a, labels)
        self.stratum_b, self._b, _ = _pair_sums(predictions_b, labels)
        self._level, self._seed = level, seed
        self._done: dict[tuple[str, str | None], tuple[list[tuple[float | None, float | None]], int]] = {}

    def interval(self, key: PairKey) -> tuple[float | None, float | None, int] | None:
        """(low, high, shared sources) of B − A for ``key``; None when the runs cannot pair it."""
        stratum, attribute, transition, metric, label = key
        if stratum != self.stratum_a or stratum != self.stratum_b or (metric, label) not in self._columns:
            return None
        subset = (attribute, transition)
        if subset not in self._a or subset not in self._b:
            return None
        if subset not in self._done:
            self._done[subset] = _paired(self._a[subset], self._b[subset], self._level, self._seed)
        intervals, shared = self._done[subset]
        if shared == 0:
            return None
        low, high = intervals[self._columns.index((metric, label))]
        return low, high, shared


def from_intervals(a: Mapping[str, Any], b: Mapping[str, Any], confidence: float, level: float) -> Difference:
    """B − A from each row's value and interval (module doc); no interval where either row lacks one."""
    if missing(a.get("value")) or missing(b.get("value")):
        return Difference(None, None, None, FROM_INTERVALS)
    value = float(b["value"]) - float(a["value"])
    ends = [a.get("ci_low"), a.get("ci_high"), b.get("ci_low"), b.get("ci_high")]
    if any(missing(v) for v in ends):
        return Difference(value, None, None, FROM_INTERVALS)
    z = z_value(confidence)
    se = np.hypot((a["ci_high"] - a["ci_low"]) / (2 * z), (b["ci_high"] - b["ci_low"]) / (2 * z))
    spread = z_value(level) * float(se)
    return Difference(value, value - spread, value + spread, FROM_INTERVALS)


def seed_allowance(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """How far a pair metric row may move between two runs without its change meaning anything, from
    the two runs' assessed rows: what another generator seed alone does (a signed gap's control band,
    the largest change its control shows either way, else its control's interval's farthest end; a
    flip rate's or a mean |Δ|'s control interval's upper end), and not less than the row's
    ``min_effect`` where the table has one (the smallest difference the audit calls a finding); the
    larger of the two runs'. 0 without either."""
    out = 0.0
    for row in (a, b):
        if not missing(row.get("min_effect")):
            out = max(out, float(row["min_effect"]))
        band = row.get("control_band")
        if not missing(band):
            out = max(out, float(band))
            continue
        low, high = row.get("control_ci_low"), row.get("control_ci_high")
        if str(row.get("metric", "")).endswith("_signed"):
            out = max(out, *(abs(float(v)) for v in (low, high) if not missing(v)), 0.0)
        elif not missing(high):
            out = max(out, float(high))
    return out


def shift_allowance(a: Mapping[str, Any], b: Mapping[str, Any], manifest_a: Mapping[str, Any],
                    manifest_b: Mapping[str, Any]) -> float:
    """How far a ``synthetic_shift`` row may move between two runs without its change meaning anything:
    the ``min_effect`` of its measure's scale (``metrics.min_effect`` in each run's manifest), the
    larger of the two runs'. 0 for a measure never tested (its scale has none)."""
    out = 0.0
    for row, manifest in ((a, manifest_a), (b, manifest_b)):
        measure = row.get("measure")
        setting = (manifest.get("metrics") or {}).get("min_effect")
        if not measure or setting is None:
            continue
        threshold = min_effect_for(str(measure), SimpleNamespace(min_effect=setting))
        out = max(out, threshold or 0.0)
    return out
