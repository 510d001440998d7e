"""The metrics table of a generative run: the choice probe's shared rows, the probe gaps and the
confound diagnostics, one family.

A generative model under audit answers a multiple-choice prompt (``score_<label>``/``top1`` in
``predictions.parquet``: the shared ``flip_rate`` and ``prob_gap_*`` rows of
:func:`counterfactual_lab.metrics.compute_metrics`) and yes/no, rating and open-ended prompts (the
``<F>_gap_*`` rows of :func:`counterfactual_lab.metrics.generative.auditee_metrics`, with the
negative-control questions' ``negative_control_gap_signed``); the judge's off-target drift rows
come with the shared ones. "Any bias finding" of the run is any of them called, so they form
**one family**: both tables are built without error control, concatenated, and the error control
(:func:`~counterfactual_lab.metrics.error_control.apply_error_control`) runs once over the whole,
so every family row carries the same ``comparisons`` = m.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.metrics import METRICS_SCHEMA, compute_metrics
from counterfactual_lab.metrics.drift import drift_metric_rows
from counterfactual_lab.metrics.error_control import DEFAULT_MAX_DRIFT, apply_error_control
from counterfactual_lab.metrics.generative import auditee_metrics
from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.metrics.schema import metrics_frame

# The generative path has no retrieval probe: an empty frame of retrieval's columns.
_NO_RETRIEVAL = {"query": pl.String, "id": pl.String, "content_key": pl.String, "score": pl.Float64}


def generative_run_metrics(
    predictions: pl.DataFrame,
    probes: pl.DataFrame | None,
    generations: pl.DataFrame | None,
    counterfactuals: pl.DataFrame | None,
    audit: Any,
    lexicon_names: Sequence[str] = (),
    attribute_values: Mapping[str, Sequence[str]] | None = None,
    *,
    design: str | None = None,
    drift: pl.DataFrame | None = None,
    max_drift: Any = DEFAULT_MAX_DRIFT,
    intersections: Sequence[Sequence[str]] = (),
) -> pl.DataFrame:
    """``metrics.parquet`` of a generative run (module doc): the shared rows when the config has a
    ``choice_prompt`` (the drift rows with them, or alone without one), then the probes' rows; one
    error control over all of it.

    Arguments as :func:`~counterfactual_lab.metrics.generative.auditee_metrics`; ``counterfactuals``
    is the judge's table (CITS, and why an attribute has no pairs); ``drift``/``max_drift`` as
    :func:`~counterfactual_lab.metrics.compute_metrics` takes them, and ``intersections``
    (``attributes.intersections``).
    """
    shared = pl.DataFrame(schema=METRICS_SCHEMA)
    if audit.choice_prompt is not None:
        shared = compute_metrics(predictions, pl.DataFrame(schema=_NO_RETRIEVAL), counterfactuals, audit, attribute_values,
                                 design=design, drift=drift, with_error_control=False, intersections=intersections)
    elif drift is not None and not drift.is_empty():  # drift exists only where sets have a reconstruction
        settings = IntervalSettings.from_audit(audit)
        attributes = sorted(set(attribute_values or {}) | set(drift["attribute"].unique().to_list()))
        shared = metrics_frame([r for a in attributes for r in drift_metric_rows(drift, a, settings, audit.min_group_size)])
    probe_rows = auditee_metrics(predictions, probes, generations, audit, lexicon_names, attribute_values, design=design,
                                 counterfactuals=counterfactuals, with_error_control=False, intersections=intersections)
    return apply_error_control(pl.concat([shared, probe_rows], how="vertical"), audit, max_drift)
