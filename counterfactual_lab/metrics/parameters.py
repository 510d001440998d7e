"""Every parameter that changes a number in ``metrics.parquet``, for the run manifest.

:func:`metric_parameters` is what a reader needs, besides the data and the model, to recompute
the metrics table bit for bit: the bootstrap seed and resample count, the confidence level,
K, the smallest group compared, how intervals (and the family-wise ones a call is decided on)
are chosen, the skew protocol with its desired retrieval distribution and K, and which CITS definition was used. The
number of comparisons m of a run is in its table (``comparisons``); the resamples an interval
at a Bonferroni level was drawn with follow from the rule recorded under ``resamples``.
"""

from __future__ import annotations

from typing import Any

from counterfactual_lab.config.skew_protocols import SKEW_PROTOCOL_GEYIK
from counterfactual_lab.metrics.group_fairness import (
    METHOD_PAIRWISE_LOG_RATIO,
    METHOD_PAIRWISE_SPREAD,
)
from counterfactual_lab.metrics.intervals import (
    MAX_RESAMPLES,
    METHOD_CLUSTER_PERCENTILE,
    METHOD_FAMILY_WISE,
    METHOD_WILSON_AT_SOURCES,
    TAIL_REPLICATES,
    IntervalSettings,
)

CITS_DEFINITION = "harmonic mean of max(0, cos(I1,T1)), max(0, cos(I1-I0,T1-T0)), max(0, cos(I0,I1))"


def metric_parameters(audit_config: Any) -> dict[str, Any]:
    """JSON-safe metric parameters of an :class:`~counterfactual_lab.config.audit_config.AuditSection`."""
    settings = IntervalSettings.from_audit(audit_config)
    protocol = getattr(audit_config, "skew_protocol", SKEW_PROTOCOL_GEYIK)
    return {
        "bootstrap_seed": settings.seed,
        "bootstrap_samples": settings.n_resamples,
        "confidence": settings.confidence,
        "top_k": int(audit_config.top_k),
        "min_group_size": int(audit_config.min_group_size),
        "resampling_unit": "source image (source_id): cluster bootstrap",
        "interval_methods": {
            "means, gaps, skew, NDKL, CITS": METHOD_CLUSTER_PERCENTILE,
            "proportions at 0/n or n/n (flip rate, selection rate)": METHOD_WILSON_AT_SOURCES,
            "demographic parity difference, equalized odds difference": METHOD_PAIRWISE_SPREAD,
            "demographic parity ratio": METHOD_PAIRWISE_LOG_RATIO,
        },
        "family_wise_adjustment": METHOD_FAMILY_WISE,
        "resamples": (
            f"bootstrap_samples, raised for an interval at a Bonferroni level l (family-wise, pairwise) to "
            f"ceil({2 * TAIL_REPLICATES} / (1 - l)) = ceil({2 * TAIL_REPLICATES} m / (1 - confidence)), "
            f"at most {MAX_RESAMPLES}: {TAIL_REPLICATES} replicates in each tail"
        ),
        "undefined_resamples": "skipped and counted in skipped_resamples",
        "skew_protocol": protocol,
        "retrieval_desired_distribution": {
            "generated": "uniform over the attribute's configured values",
            "evaluate_only": "uniform over the attribute's configured values",
            "observational": "the pool's own mix",
            "real_vs_generated": "the pool's own mix",
        } if protocol == SKEW_PROTOCOL_GEYIK else {
            "every stratum": "the mix of the query's own pool (the sets of the label it names)",
        },
        "retrieval_k": ("top_k" if protocol == SKEW_PROTOCOL_GEYIK
                        else "the number of the attribute's groups in the stratum's pool"),
        "cits": CITS_DEFINITION,
    }
