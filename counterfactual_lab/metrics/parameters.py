"""Every parameter that changes a number in ``metrics.parquet``, for the run manifest.

:func:`metric_parameters` is what a reader needs, besides the data and the model, to recompute
the metrics table bit for bit: the bootstrap seed and resample count, the confidence level,
K, the smallest group compared, how intervals are drawn, the error control and the smallest
effects a call needs, the drift thresholds, the skew protocol with its desired retrieval
distribution and K, and which CITS definition was used. The number of comparisons m of a run is
in its table (``comparisons``).
"""

from __future__ import annotations

from typing import Any

from counterfactual_lab.config.skew_protocols import SKEW_PROTOCOL_GEYIK
from counterfactual_lab.metrics.error_control import (
    DEFAULT_MAX_DRIFT,
    error_control_record,
    resolved_max_drift,
    resolved_min_effect,
)
from counterfactual_lab.metrics.group_fairness import (
    METHOD_PAIRWISE_LOG_RATIO,
    METHOD_PAIRWISE_SPREAD,
)
from counterfactual_lab.metrics.intervals import (
    MAX_RESAMPLES,
    METHOD_CLUSTER_PERCENTILE,
    METHOD_CLUSTER_T,
    METHOD_CROSSED_T,
    METHOD_WILSON_EFFECTIVE,
    TAIL_REPLICATES,
    IntervalSettings,
)

DRIFT_SET_RULE = (
    "a counterfactual is dropped (off_target_drift) when for some measure its own drift exceeds the 95th "
    "percentile of |drift| over its attribute's control pairs (their largest below 20 pairs) by more than max_drift"
)

CITS_DEFINITION = "harmonic mean of max(0, cos(I1,T1)), max(0, cos(I1-I0,T1-T0)), max(0, cos(I0,I1))"
ANSWER_CHANGE_DEFINITION = (
    "1 - the mean over every (sample, sample) of the pair's two answers of their similarity: rouge_l, ROUGE-L F1 "
    "(rouge-score) on lowercased words; embedding_cosine, the cosine of the text embedder's mean-pooled unit embeddings"
)


def metric_parameters(audit_config: Any, judge: Any = None, drift_attributes: list[str] | None = None) -> dict[str, Any]:
    """JSON-safe metric parameters of an :class:`~counterfactual_lab.config.audit_config.AuditSection`
    (and of the judge's drift: ``judge.max_drift``, the attributes whose drift it reads)."""
    settings = IntervalSettings.from_audit(audit_config)
    protocol = getattr(audit_config, "skew_protocol", SKEW_PROTOCOL_GEYIK)
    max_drift = resolved_max_drift(judge.max_drift if judge is not None else DEFAULT_MAX_DRIFT)
    return {
        "bootstrap_seed": settings.seed,
        "bootstrap_samples": settings.n_resamples,
        "confidence": settings.confidence,
        "top_k": int(audit_config.top_k),
        "min_group_size": int(audit_config.min_group_size),
        "resampling_unit": "source image (source_id): cluster bootstrap",
        "interval_methods": {
            "means: pair and probe gaps, negative controls, drift, group means, CITS (interval_method t)": METHOD_CLUSTER_T,
            "proportions: flip rate, selection rate, rates of generations (interval_method wilson)": METHOD_WILSON_EFFECTIVE,
            "skew, NDKL (interval_method percentile)": METHOD_CLUSTER_PERCENTILE,
            "demographic parity difference, equalized odds difference": METHOD_PAIRWISE_SPREAD,
            "demographic parity ratio": METHOD_PAIRWISE_LOG_RATIO,
            "rows pooled over the phrasings of a prompt (phrasing null, audit.phrasings)": METHOD_CROSSED_T,
        },
        "error_control": error_control_record(audit_config),
        "min_effect": resolved_min_effect(audit_config),
        "drift": None if max_drift is None else {
            "max_drift": max_drift, "drift_attributes": drift_attributes,
            "mask": "the inpainting mask (inpaint), else the method's declared edit region, else the whole image "
                    "(then reported, never tested)",
            "set_rule": DRIFT_SET_RULE,
        },
        "resamples": (
            f"bootstrap_samples; the pairwise intervals behind the parity and equalized-odds spreads (at a "
            f"Bonferroni level l) are drawn with ceil({2 * TAIL_REPLICATES} / (1 - l)) resamples, at most "
            f"{MAX_RESAMPLES}: {TAIL_REPLICATES} replicates in each tail"
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
        "answer_change": ANSWER_CHANGE_DEFINITION,
    }
