"""What the generative probes' metrics use of the shared metrics package, in one place.

The shared package (``counterfactual_lab/metrics/``, docs/metrics.md) defines which images are
compared (reconstruction → counterfactual within a set, control pairs, every ordered pair of an
evaluate-only set, original → counterfactual without reconstructions), the strata, the cluster
bootstrap by source image with Wilson's interval at 0/n and n/n, the family-wise (Bonferroni)
level and the table's columns. :mod:`counterfactual_lab.auditees.metrics` and
:mod:`counterfactual_lab.auditees.report_data` use exactly these, so a probe's gap is paired,
resampled and called as the label probability's gap is:

* pairs carry ``attribute, source_id, set_id, from_group, to_group, transition, top1_from,
  top1_to, score_<label>_from, score_<label>_to``; a probe's value travels as the label ``value``;
* :data:`PAIRS` maps a design (stratum) to the function that builds its pairs.
"""

from __future__ import annotations

from counterfactual_lab.metrics.counterfactual_fairness import pair_subsets
from counterfactual_lab.metrics.intervals import IntervalSettings, mean_estimate, mean_estimates, proportion_estimate
from counterfactual_lab.metrics.pairs import (
    PAIRS_BY_DESIGN,
    control_pairs,
    member_pairs,
    original_pairs,
    reconstruction_pairs,
)
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    METRICS_SCHEMA,
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
    Estimate,
    metric_row,
    metrics_frame,
)
from counterfactual_lab.metrics.strata import (
    check_design,
    comparison_pool,
    comparison_stratum,
    observational_pool,
    restrict_groups,
)
from counterfactual_lab.metrics.table import no_pairs_note, spelled_as_in

PAIRS = PAIRS_BY_DESIGN

__all__ = [
    "CONTROL_PREFIX",
    "METRICS_SCHEMA",
    "PAIRS",
    "STRATUM_EVALUATE_ONLY",
    "STRATUM_GENERATED",
    "STRATUM_OBSERVATIONAL",
    "STRATUM_REAL_VS_GENERATED",
    "Estimate",
    "IntervalSettings",
    "check_design",
    "comparison_pool",
    "comparison_stratum",
    "control_pairs",
    "mean_estimate",
    "mean_estimates",
    "member_pairs",
    "metric_row",
    "metrics_frame",
    "no_pairs_note",
    "observational_pool",
    "original_pairs",
    "pair_subsets",
    "proportion_estimate",
    "reconstruction_pairs",
    "restrict_groups",
    "spelled_as_in",
]
