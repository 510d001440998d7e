"""Counterfactual fairness over pairs: flip rate and probability gaps (and their controls).

For P pairs (from → to, see :mod:`counterfactual_lab.metrics.pairs`):

* ``flip_rate``       = (1/P) Σ 1[top1(to) ≠ top1(from)] — how often the answer changes;
* ``prob_gap_abs``    = (1/P) Σ |p_label(to) − p_label(from)| — how far a label's probability moves;
* ``prob_gap_signed`` = (1/P) Σ (p_label(to) − p_label(from)) — which way it moves (it cancels
  across opposite transitions, so read it per transition).

The same three over control pairs (reconstruction → control image: same source, same value,
another seed) are ``control_flip_rate``, ``control_prob_gap_abs`` and ``control_prob_gap_signed``:
how much the answer moves when nothing protected changes. Intervals: cluster bootstrap by
source, t with C − 1 degrees of freedom; the flip rate is a proportion (Wilson at the effective
sample size). Rows resting on fewer than ``audit.min_group_size`` source images keep their value
but get no interval.

The **negative controls** of a contrastive model (``audit.negative_controls``, "A | B": P(A) over
the two texts, in ``predictions.parquet`` as ``nc_score_<A>``) are measured on the same pairs:
``negative_control_gap_signed`` (label A) = (1/P) Σ (P_A(to) − P_A(from)), overall and per
transition, with ``control_negative_control_gap_signed`` beside it (:func:`negative_control_rows`).

Which of them a difference can be called on, and against what (:data:`CALLED_AGAINST_CONTROL`,
:data:`NO_EFFECT`, read by :mod:`counterfactual_lab.metrics.findings`), is defined here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.evaluate.pool import score_column
from counterfactual_lab.metrics.diagnostics import NEGATIVE_CONTROL_GAP, is_diagnostic
from counterfactual_lab.metrics.intervals import (
    IntervalSettings,
    as_proportion,
    crossed_mean_estimates,
    mean_estimates,
)
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    Estimate,
    metric_row,
)

FLIP_RATE = "flip_rate"
PROB_GAP_ABS = "prob_gap_abs"
PROB_GAP_SIGNED = "prob_gap_signed"
PAIR_METRICS = (FLIP_RATE, PROB_GAP_ABS, PROB_GAP_SIGNED)

# The metrics a difference is called on where the run has a control (the generated stratum), and
# which side of the control counts: more flips or more movement than the generator's own variation
# ("above"); a signed shift either way ("either").
CALLED_AGAINST_CONTROL = {FLIP_RATE: "above", PROB_GAP_ABS: "above", PROB_GAP_SIGNED: "either"}
# Without a control, the value that means no change, for the metrics whose interval can reach it
# under no effect. The mean |Δ| cannot: it is positive whenever anything varies (the generator's
# own noise), so without a control it is reported, not called.
NO_EFFECT = {FLIP_RATE: 0.0, PROB_GAP_SIGNED: 0.0}
# Every gap over pairs ends in one of these: the label probability's (prob_gap_abs/_signed) and a
# generative probe's value's (yes_prob_gap_abs, rating_gap_signed, …: counterfactual_lab/auditees).
GAP_ABS_SUFFIX, GAP_SIGNED_SUFFIX = "_gap_abs", "_gap_signed"
# How much a generated answer changes from the reference to the counterfactual (1 − a similarity of
# their texts, counterfactual_lab/metrics/answer_change.py): like a mean |Δ|, called above its control.
ANSWER_CHANGE = "answer_change"
# The column of a pair frame that says which phrasing of the probe the pair was answered in.
PHRASING = "phrasing"


def called_side(metric: str) -> str | None:
    """Which side of its reference a difference of ``metric`` is called on: "above" its control (the
    flip rate, any mean |Δ| ``*_gap_abs``), "either" way from 0 (any mean Δ ``*_gap_signed``);
    None: never called (descriptive rows, and the confound diagnostics, which move but are not called)."""
    if is_diagnostic(metric):
        return None
    if metric in CALLED_AGAINST_CONTROL:
        return CALLED_AGAINST_CONTROL[metric]
    if metric.endswith(GAP_ABS_SUFFIX) or metric == ANSWER_CHANGE:
        return "above"
    if metric.endswith(GAP_SIGNED_SUFFIX):
        return "either"
    return None


def no_effect_value(metric: str) -> float | None:
    """The value of ``metric`` that means no change where its interval can reach it under no effect
    (0 for the flip rate and every signed gap); None for a mean |Δ|, positive whenever anything varies."""
    if metric in NO_EFFECT:
        return NO_EFFECT[metric]
    return 0.0 if metric.endswith(GAP_SIGNED_SUFFIX) else None


def called_metrics(stratum: str) -> tuple[str, ...]:
    """The pair metrics a difference can be called on in ``stratum`` (none in the observational one)."""
    if stratum == STRATUM_OBSERVATIONAL:
        return ()
    return tuple(CALLED_AGAINST_CONTROL) if stratum == STRATUM_GENERATED else tuple(NO_EFFECT)


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


def usable_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """The pairs with a top-1 answer on both sides (the others cannot be compared)."""
    return pairs.filter(pl.col("top1_to").is_not_null() & pl.col("top1_from").is_not_null())


def pair_subsets(pairs: pl.DataFrame) -> list[tuple[str | None, pl.DataFrame]]:
    """(transition, its pairs): every pair first (transition None), then each transition in order."""
    return [(None, pairs)] + [
        (transition, pairs.filter(pl.col("transition") == transition))
        for transition in sorted(pairs["transition"].unique().to_list())
    ]


def pair_estimates(columns: np.ndarray, pairs: pl.DataFrame, settings: IntervalSettings) -> list[Estimate]:
    """The mean of each column over ``pairs`` with its interval: resampling source images, and the
    probe's phrasings too where the pairs hold several (a ``phrasing`` column; the pooled row)."""
    if PHRASING in pairs.columns and pairs[PHRASING].n_unique() > 1:
        return crossed_mean_estimates(columns, pairs["source_id"].to_numpy(), pairs[PHRASING].to_numpy(), settings)
    return mean_estimates(columns, pairs["source_id"].to_numpy(), settings)


def pair_metric_estimates(pairs: pl.DataFrame, labels: list[str], settings: IntervalSettings, min_sources: int,
               no_pairs: str = "no pairs") -> list[tuple[str, str | None, Estimate]]:
    """(metric, label, estimate) for one subset of pairs; ``no_pairs`` says why when there are none.

    With fewer than ``min_sources`` source images behind the pairs the values stand without an
    interval (a bootstrap over a handful of sources has almost nothing to resample), so no
    difference can be called on them. Every metric of the subset shares one set of resamples.
    """
    usable = usable_pairs(pairs)
    keys = [(FLIP_RATE, None)] + [(m, label) for label in labels for m in (PROB_GAP_ABS, PROB_GAP_SIGNED)]
    if usable.height == 0:
        none = Estimate.undefined(no_pairs)
        return [(m, label, none) for m, label in keys]
    columns = [pair_flips(usable).astype(float)]
    for label in labels:
        delta = pair_deltas(usable, label)
        columns += [np.abs(delta), delta]
    estimates = pair_estimates(np.column_stack(columns), usable, settings)
    estimates[0] = as_proportion(estimates[0], settings)  # the flip rate is a proportion
    out = [(m, label, e) for (m, label), e in zip(keys, estimates)]
    sources = estimates[0].n_sources
    if sources < min_sources:
        note = f"fewer than min_group_size={min_sources} source images ({sources}): no interval"
        out = [(m, label, e.without_interval().with_note(note)) for m, label, e in out]
    return out


def pair_metric_rows(
    pairs: pl.DataFrame, attribute: str, stratum: str, labels: list[str], settings: IntervalSettings, min_sources: int = 1,
    no_pairs: str = "no pairs",
) -> list[dict[str, Any]]:
    """Flip rate and gaps of one attribute's pairs: overall (group null) and per transition.

    Without any pair the overall rows are undefined with ``no_pairs`` as the note (why there are
    none).
    """
    rows = []
    for transition, subset in pair_subsets(pairs):
        for metric, label, estimate in pair_metric_estimates(subset, labels, settings, min_sources, no_pairs):
            rows.append(metric_row(metric, stratum, attribute, estimate, group=transition, label=label))
    return rows


def control_metric_rows(
    controls: pl.DataFrame, attribute: str, stratum: str, labels: list[str], settings: IntervalSettings, min_sources: int = 1
) -> list[dict[str, Any]]:
    """``control_flip_rate`` and ``control_prob_gap_abs/_signed`` of one attribute (group null).

    Without control pairs (every control dropped, or none planned) the rows are undefined
    with a note, so a reader sees the control is missing rather than zero.
    """
    missing = "no control pairs (no kept control image beside a kept set of the same source)"
    estimates = pair_metric_estimates(controls, labels, settings, min_sources, no_pairs=missing)
    return [metric_row(CONTROL_PREFIX + metric, stratum, attribute, estimate, label=label) for metric, label, estimate in estimates]


def _signed_estimates(pairs: pl.DataFrame, labels: list[str], settings: IntervalSettings, min_sources: int,
                      no_pairs: str) -> list[tuple[str, Estimate]]:
    """(label, mean Δ) per label of one subset of pairs, one set of resamples; no interval below ``min_sources``."""
    if pairs.height == 0:
        return [(label, Estimate.undefined(no_pairs)) for label in labels]
    columns = np.column_stack([pair_deltas(pairs, label) for label in labels])
    estimates = pair_estimates(columns, pairs, settings)
    sources = estimates[0].n_sources
    if sources < min_sources:
        note = f"fewer than min_group_size={min_sources} source images ({sources}): no interval"
        estimates = [e.without_interval().with_note(note) for e in estimates]
    return list(zip(labels, estimates))


def negative_control_rows(
    pairs: pl.DataFrame, controls: pl.DataFrame | None, attribute: str, stratum: str, negative_controls: list[str],
    settings: IntervalSettings, min_sources: int = 1, no_pairs: str = "no pairs",
) -> list[dict[str, Any]]:
    """``negative_control_gap_signed`` (label = the negative control) of one attribute's pairs,
    overall and per transition, and in the generated stratum its control over ``controls`` (module doc).

    The pairs carry each negative control's probability as the label's score columns (the caller
    renames ``nc_score_<A>`` to ``score_<A>`` before pairing).
    """
    if not negative_controls:
        return []
    rows = []
    for transition, subset in pair_subsets(usable_pairs(pairs)):
        for label, estimate in _signed_estimates(subset, negative_controls, settings, min_sources, no_pairs):
            rows.append(metric_row(NEGATIVE_CONTROL_GAP, stratum, attribute, estimate, group=transition, label=label))
    if controls is not None:
        missing = "no control pairs (no kept control image beside a kept set of the same source)"
        for label, estimate in _signed_estimates(usable_pairs(controls), negative_controls, settings, min_sources, missing):
            rows.append(metric_row(CONTROL_PREFIX + NEGATIVE_CONTROL_GAP, stratum, attribute, estimate, label=label))
    return rows
