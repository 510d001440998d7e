"""Off-target drift as metric rows: what else the generator changed along with the attribute.

The judge reads, per pair of a set (reconstruction → counterfactual; reconstruction → control
image), what changed besides the edit (``drift.parquet``, :mod:`counterfactual_lab.judge.drift`).
Per attribute, in the ``generated`` stratum, over the pairs whose images were both kept (cluster =
``source_id``, the t interval of :mod:`~counterfactual_lab.metrics.intervals`), overall (group
null) and per transition:

* ``drift_brightness``, ``drift_red``, ``drift_green``, ``drift_blue`` = (1/P) Σ Δ of the channel
  mean outside the person ([0, 1]; label ``whole image`` where no person mask exists: then
  reported only);
* ``drift_attribute`` (label ``<attribute>=<value>``) = (1/P) Σ Δ P_judge(value | image), for the
  other protected attributes;
* ``drift_outside_mask`` = (1/P) Σ mean |Δ pixel| outside the person, tested against
  ``control_drift_outside_mask``;

and every ``drift_*`` over the control pairs (``control_drift_*``, group null), the drift a seed
change alone makes, shown beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.judge.drift import MEASURE_OUTSIDE_MASK, is_attribute_measure
from counterfactual_lab.metrics.counterfactual_fairness import pair_subsets
from counterfactual_lab.metrics.diagnostics import DRIFT_ATTRIBUTE, DRIFT_OUTSIDE_MASK, DRIFT_PREFIX, WHOLE_IMAGE
from counterfactual_lab.metrics.intervals import IntervalSettings, mean_estimates
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, STRATUM_GENERATED, Estimate, metric_row

_PAIR = ["source_id", "set_id", "transition", "to_key"]


def drift_metric(measure: str) -> str:
    """The metric of a drift.parquet measure: ``blue`` → ``drift_blue``, ``age=elderly`` → ``drift_attribute``."""
    if is_attribute_measure(measure):
        return DRIFT_ATTRIBUTE
    return DRIFT_OUTSIDE_MASK if measure == MEASURE_OUTSIDE_MASK else f"{DRIFT_PREFIX}{measure}"


def _label(measure: str, masked: bool) -> str | None:
    if is_attribute_measure(measure):
        return measure
    return None if masked or measure == MEASURE_OUTSIDE_MASK else WHOLE_IMAGE


def _wide(pairs: pl.DataFrame, measures: list[str]) -> pl.DataFrame:
    """One row per pair, one column per measure (pairs missing a measure are left out of it)."""
    return pairs.pivot(on="measure", index=_PAIR, values="value", aggregate_function="first").select(_PAIR + measures)


def _estimates(wide: pl.DataFrame, measures: list[str], settings: IntervalSettings, min_sources: int,
               no_pairs: str) -> list[tuple[str, Estimate]]:
    if wide.height == 0:
        return [(m, Estimate.undefined(no_pairs)) for m in measures]
    wide = wide.drop_nulls(measures)
    if wide.height == 0:
        return [(m, Estimate.undefined(no_pairs)) for m in measures]
    estimates = mean_estimates(wide.select(measures).to_numpy().astype(float), wide["source_id"].to_numpy(), settings)
    sources = estimates[0].n_sources
    if sources < min_sources:
        note = f"fewer than min_group_size={min_sources} source images ({sources}): no interval"
        estimates = [e.without_interval().with_note(note) for e in estimates]
    return list(zip(measures, estimates))


def drift_metric_rows(drift: pl.DataFrame | None, attribute: str, settings: IntervalSettings, min_sources: int = 1
                      ) -> list[dict[str, Any]]:
    """The drift rows of one attribute (module doc); none when the run read no drift for it."""
    if drift is None or drift.is_empty():
        return []
    of_attribute = drift.filter((pl.col("attribute") == attribute) & pl.col("kept").fill_null(False))
    if of_attribute.is_empty():
        return []
    masked = bool(of_attribute["mask"].is_not_null().any())
    measures = sorted(of_attribute["measure"].unique().to_list())
    edits = of_attribute.filter(~pl.col("control"))
    controls = of_attribute.filter(pl.col("control"))
    rows = []
    subsets = pair_subsets(_wide(edits, measures)) if edits.height else [(None, pl.DataFrame())]
    for transition, subset in subsets:
        for measure, estimate in _estimates(subset, measures, settings, min_sources, "no kept pairs"):
            rows.append(metric_row(drift_metric(measure), STRATUM_GENERATED, attribute, estimate, group=transition,
                                   label=_label(measure, masked)))
    wide_controls = _wide(controls, measures) if controls.height else pl.DataFrame()
    missing = "no control pairs (no kept control image beside a kept set of the same source)"
    for measure, estimate in _estimates(wide_controls, measures, settings, min_sources, missing):
        rows.append(metric_row(CONTROL_PREFIX + drift_metric(measure), STRATUM_GENERATED, attribute, estimate,
                               label=_label(measure, masked)))
    return rows


def readings_in_grey_levels(value: float | None) -> float | None:
    """A channel mean's change on [0, 1] in grey levels of an 8-bit channel (×255)."""
    return None if value is None or not np.isfinite(value) else float(value) * 255.0
