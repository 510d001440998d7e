"""The metrics table of a generative run: the choice probe's shared rows and the probe gaps, one family.

A generative model under audit answers a multiple-choice prompt (``score_<label>``/``top1`` in
``predictions.parquet``: the shared ``flip_rate`` and ``prob_gap_*`` rows of
:func:`counterfactual_lab.metrics.compute_metrics`) and yes/no, rating and open-ended prompts (the
``<F>_gap_*`` rows of :func:`counterfactual_lab.metrics.generative.auditee_metrics`). "Any bias
finding" of the run is any of them called, so they form **one family**: the family-wise level
1 − (1 − c)/m is over m = m_shared + m_probes, the callable comparisons of both, each counted from
its pairs before any resample is drawn
(:func:`~counterfactual_lab.metrics.table.count_metric_comparisons`,
:func:`~counterfactual_lab.metrics.generative.count_auditee_comparisons`). Each side is then built
with the other's count as ``extra_comparisons``, so every callable row of the table carries the
same ``comparisons`` = m and ``confidence_adjusted``, and both draw the same number of resamples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.metrics import METRICS_SCHEMA, compute_metrics
from counterfactual_lab.metrics.generative import (
    auditee_metrics,
    count_auditee_comparisons,
)
from counterfactual_lab.metrics.table import count_metric_comparisons

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
) -> pl.DataFrame:
    """``metrics.parquet`` of a generative run (module doc): the shared rows when the config has a
    ``choice_prompt``, then the probes' rows; one m over both.

    Arguments as :func:`~counterfactual_lab.metrics.generative.auditee_metrics`; ``counterfactuals``
    is the judge's table (CITS, and why an attribute has no pairs).
    """
    probe_m = count_auditee_comparisons(predictions, probes, generations, audit, lexicon_names, attribute_values,
                                        design=design)
    shared, shared_m = pl.DataFrame(schema=METRICS_SCHEMA), 0
    if audit.choice_prompt is not None:
        shared_m = count_metric_comparisons(predictions, audit, attribute_values, design=design)
        shared = compute_metrics(predictions, pl.DataFrame(schema=_NO_RETRIEVAL), counterfactuals, audit, attribute_values,
                                 design=design, extra_comparisons=probe_m)
    probe_rows = auditee_metrics(predictions, probes, generations, audit, lexicon_names, attribute_values, design=design,
                                 counterfactuals=counterfactuals, extra_comparisons=shared_m)
    return pl.concat([shared, probe_rows], how="vertical")
