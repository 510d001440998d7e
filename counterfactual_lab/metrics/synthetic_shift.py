"""The synthetic shift: how far generated images alone move the model under audit.

The findings compare generated with generated (reconstruction → counterfactual), so the
generator's look is in both images of every pair. Where the originals are evaluated (the
``generated`` design: every source's original photo is in the pool beside its reconstructions),
the audit also measures what generating the image does by itself (SB-Bench 2025 keeps a real
control for this): over the pairs original → reconstruction of each kept set (same source, same
value, the caption unchanged; :func:`~counterfactual_lab.metrics.pairs.synthetic_pairs`), every
pair metric of the findings, as ``synthetic_shift`` rows with ``measure`` = that metric:

* the label probe's: ``flip_rate`` (label null), ``prob_gap_abs`` and ``prob_gap_signed`` (per label);
* each generative probe family's ``<F>_gap_abs`` and ``<F>_gap_signed`` (query = the prompt);

overall (group null) and per value (group ``"v→v"``), with the cluster-bootstrap interval by
source (pooled over the phrasings of a probe asked in several). They are **descriptive**: reported
with their intervals, never called, outside the family (they answer "how different are generated
images", not "is the model biased"), and the report shows them apart from the findings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.evaluate.pool import phrasing_view, score_column
from counterfactual_lab.metrics.counterfactual_fairness import pair_estimates, pair_metric_estimates, pair_subsets
from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.metrics.pairs import synthetic_pairs
from counterfactual_lab.metrics.phrasings import stack_phrasings
from counterfactual_lab.metrics.schema import STRATUM_GENERATED, Estimate, metric_row

SYNTHETIC_SHIFT = "synthetic_shift"
NO_SYNTHETIC_PAIRS = "no synthetic pairs (no original beside a kept set's reconstruction of the same source)"
_FLOOR_NOTE = "fewer than min_group_size={} source images ({}): no interval"


def _floored(estimate: Estimate, min_sources: int) -> Estimate:
    if estimate.value is None or estimate.n_sources >= min_sources:
        return estimate
    return estimate.without_interval().with_note(_FLOOR_NOTE.format(min_sources, estimate.n_sources))


def label_shift_rows(predictions: pl.DataFrame, attribute: str, labels: list[str], phrasings: list[str],
                     settings: IntervalSettings, min_sources: int = 1) -> list[dict[str, Any]]:
    """``synthetic_shift`` rows of the label probe (flip rate, probability gaps) for one attribute's
    prediction rows; none where the run has no original beside a reconstruction."""
    columns = [score_column(label) for label in labels] + ["top1"]
    pairs = stack_phrasings([(text, synthetic_pairs(phrasing_view(predictions, k, columns), labels))
                             for k, text in enumerate(phrasings or [None])])
    if pairs.height == 0:
        return []
    rows = []
    for transition, subset in pair_subsets(pairs):
        for metric, label, estimate in pair_metric_estimates(subset, labels, settings, min_sources, NO_SYNTHETIC_PAIRS):
            rows.append(metric_row(SYNTHETIC_SHIFT, STRATUM_GENERATED, attribute, estimate, group=transition, label=label,
                                   measure=metric))
    return rows


def value_shift_rows(pairs: pl.DataFrame, attribute: str, family: str, query: str, settings: IntervalSettings,
                     min_sources: int = 1) -> list[dict[str, Any]]:
    """``synthetic_shift`` rows of one generative probe family and prompt: its ``<F>_gap_abs`` and
    ``<F>_gap_signed`` over ``pairs`` (synthetic pairs carrying the value as ``score_value_from/_to``)."""
    if pairs.height == 0:
        return []
    rows = []
    for transition, subset in pair_subsets(pairs):
        delta = (subset["score_value_to"] - subset["score_value_from"]).to_numpy().astype(float)
        absolute, signed = pair_estimates(np.column_stack([np.abs(delta), delta]), subset, settings)
        for kind, estimate in (("abs", absolute), ("signed", signed)):
            rows.append(metric_row(SYNTHETIC_SHIFT, STRATUM_GENERATED, attribute, _floored(estimate, min_sources),
                                   group=transition, query=query, measure=f"{family}_gap_{kind}"))
    return rows
