"""Counterfactual fairness over pairs: flip rate and probability gaps (and their controls).

For P pairs (from → to, see :mod:`counterfactual_lab.metrics.pairs`):

* ``flip_rate``       = (1/P) Σ 1[top1(to) ≠ top1(from)] — how often the answer changes;
* ``prob_gap_abs``    = (1/P) Σ |p_label(to) − p_label(from)| — how far a label's probability moves;
* ``prob_gap_signed`` = (1/P) Σ (p_label(to) − p_label(from)) — which way it moves (it cancels
  across opposite transitions, so read it per transition).

The same three over control pairs (reconstruction → control image: same source, same value,
another seed) are ``control_flip_rate``, ``control_prob_gap_abs`` and ``control_prob_gap_signed``:
how much the answer moves when nothing protected changes. Intervals: cluster bootstrap by
source; the flip rate is a proportion (Wilson at the number of sources when 0/P or P/P). Rows
resting on fewer than ``audit.min_group_size`` source images keep their value but get no interval.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.evaluate import score_column
from counterfactual_lab.metrics.intervals import IntervalSettings, mean_estimate, proportion_estimate
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, Estimate, metric_row

FLIP_RATE = "flip_rate"
PROB_GAP_ABS = "prob_gap_abs"
PROB_GAP_SIGNED = "prob_gap_signed"
PAIR_METRICS = (FLIP_RATE, PROB_GAP_ABS, PROB_GAP_SIGNED)


def pair_flips(pairs: pl.DataFrame) -> np.ndarray:
    """1[top1(to) ≠ top1(from)] per pair (pairs with a missing top-1 must be dropped first)."""
    return (pairs["top1_to"] != pairs["top1_from"]).to_numpy().astype(bool)


def pair_deltas(pairs: pl.DataFrame, label: str) -> np.ndarray:
    """Δ = p_label(to) − p_label(from) per pair."""
    s = score_column(label)
    return (pairs[f"{s}_to"] - pairs[f"{s}_from"]).to_numpy().astype(float)


def flip_rate(pairs: pl.DataFrame) -> float | None:
    """Point flip rate; None without pairs."""
    return float(pair_flips(pairs).mean()) if pairs.height else None


def probability_gap(pairs: pl.DataFrame, label: str) -> tuple[float | None, float | None]:
    """Point (mean |Δ|, mean Δ) for ``label``; (None, None) without pairs."""
    if pairs.height == 0:
        return None, None
    delta = pair_deltas(pairs, label)
    return float(np.abs(delta).mean()), float(delta.mean())


def _estimates(pairs: pl.DataFrame, labels: list[str], settings: IntervalSettings, min_sources: int
               ) -> list[tuple[str, str | None, Estimate]]:
    """(metric, label, estimate) for one subset of pairs.

    With fewer than ``min_sources`` source images behind the pairs the values stand without an
    interval (a bootstrap over a handful of sources has almost nothing to resample), so no
    difference can be called on them.
    """
    usable = pairs.filter(pl.col("top1_to").is_not_null() & pl.col("top1_from").is_not_null())
    if usable.height == 0:
        none = Estimate.undefined("no pairs")
        return [(FLIP_RATE, None, none)] + [(m, label, none) for label in labels for m in (PROB_GAP_ABS, PROB_GAP_SIGNED)]
    clusters = usable["source_id"].to_numpy()
    out = [(FLIP_RATE, None, proportion_estimate(pair_flips(usable), clusters, settings))]
    for label in labels:
        delta = pair_deltas(usable, label)
        out.append((PROB_GAP_ABS, label, mean_estimate(np.abs(delta), clusters, settings)))
        out.append((PROB_GAP_SIGNED, label, mean_estimate(delta, clusters, settings)))
    sources = out[0][2].n_sources
    if sources < min_sources:
        note = f"fewer than min_group_size={min_sources} source images ({sources}): no interval"
        out = [(m, label, replace(e, low=None, high=None, skipped=None).with_note(note)) for m, label, e in out]
    return out


def pair_metric_rows(
    pairs: pl.DataFrame, attribute: str, stratum: str, labels: list[str], settings: IntervalSettings, min_sources: int = 1
) -> list[dict[str, Any]]:
    """Flip rate and gaps of one attribute's pairs: overall (group null) and per transition."""
    rows = []
    subsets = [(None, pairs)] + [
        (transition, pairs.filter(pl.col("transition") == transition))
        for transition in sorted(pairs["transition"].unique().to_list())
    ]
    for transition, subset in subsets:
        for metric, label, estimate in _estimates(subset, labels, settings, min_sources):
            rows.append(metric_row(metric, stratum, attribute, estimate, group=transition, label=label))
    return rows


def control_metric_rows(
    controls: pl.DataFrame, attribute: str, stratum: str, labels: list[str], settings: IntervalSettings, min_sources: int = 1
) -> list[dict[str, Any]]:
    """``control_flip_rate`` and ``control_prob_gap_abs/_signed`` of one attribute (group null).

    Without control pairs (every control dropped, or none planned) the rows are undefined
    with a note, so a reader sees the control is missing rather than zero.
    """
    if controls.height == 0:
        missing = Estimate.undefined("no control pairs (no kept control image beside a kept set of the same source)")
        estimates = [(FLIP_RATE, None, missing)] + [(m, label, missing) for label in labels for m in (PROB_GAP_ABS, PROB_GAP_SIGNED)]
    else:
        estimates = _estimates(controls, labels, settings, min_sources)
    return [metric_row(CONTROL_PREFIX + metric, stratum, attribute, estimate, label=label) for metric, label, estimate in estimates]
