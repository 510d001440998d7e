"""Fairness metrics of the model under audit: the ``metrics.parquet`` table and its parts.

One idea per module (docs/metrics.md has the definitions and the design):

==============================  ======================================================
:mod:`.schema`                  the table's columns, strata, variants, one estimate
:mod:`.strata`                  the run's design: which stratum, which pool
:mod:`.pairs`                   which images are compared: counterfactual and control pairs
:mod:`.counterfactual_fairness` flip rate and probability gaps (and their controls); negative controls
:mod:`.group_fairness`          selection rate, demographic parity, equalized odds
:mod:`.retrieval`               Skew@K, MaxSkew@K, MinSkew@K, NDKL, NDKL@K
:mod:`.rankings`                what each query ranks (``audit.skew_protocol``); ``retrieval.parquet``
:mod:`.cits`                    CITS, the project's own counterfactual image-text score
:mod:`.intervals`               cluster bootstrap by source: t with C − 1 df, Wilson at n_eff
:mod:`.diagnostics`             the confound diagnostics' names: negative controls, off-target drift
:mod:`.drift`                   off-target drift rows from the judge's readings
:mod:`.error_control`           the family, p-values, Holm and Benjamini–Hochberg
:mod:`.table`                   :func:`compute_metrics`: all of it as one table
:mod:`.parameters`              :func:`metric_parameters`: what the manifest records
==============================  ======================================================
"""

from counterfactual_lab.metrics.parameters import metric_parameters
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    METRICS_SCHEMA,
    STRATA,
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
)
from counterfactual_lab.metrics.strata import design_stratum
from counterfactual_lab.metrics.table import compute_metrics, retrieval_table

__all__ = [
    "CONTROL_PREFIX",
    "METRICS_SCHEMA",
    "STRATA",
    "STRATUM_EVALUATE_ONLY",
    "STRATUM_GENERATED",
    "STRATUM_OBSERVATIONAL",
    "STRATUM_REAL_VS_GENERATED",
    "compute_metrics",
    "design_stratum",
    "metric_parameters",
    "retrieval_table",
]
