"""Error control over a run's comparisons: which rows count (the family), a p-value per row, and
Holm's step-down (``audit.error_control: fwer``) or Benjamini–Hochberg (``fdr``) over them.

**The family** (:func:`family_mask`): every row a difference can be called on or a diagnostic can
move on (:func:`reference_side`), outside the observational stratum, with a value and a standard
error (at least ``min_group_size`` and two source images); a row tested against its control (the
flip rate, a mean |Δ|, ``drift_outside_mask``) only in the ``generated`` stratum and only where
the control has a value and a standard error; a signed row of the ``generated`` stratum only where
its control has them too (an attribute whose control rests on too few sources leaves m whole);
a low-level drift row read over the whole image (no person mask) never; a row of one phrasing of a
probe asked in several (``phrasing`` set) never: the pooled row over every phrasing is the one
compared, its per-phrasing rows only say whether it is robust (docs/metrics.md, "Phrasing
robustness"). m, the number of comparisons, is counted once, from the rows, over the run's whole
table (shared and probe rows).

**A p-value per row** inverts the row's own interval (:func:`~counterfactual_lab.metrics.intervals.interval_at`)::

    p_r = inf{α′ ∈ (0, 1] : I_r(1 − α′) is clear of the reference}

"clear" being lo > 0 or hi < 0 for a signed row (side "either": its pairs share a seed, so 0 is
no change) and lo_r > hi_c for a row tested against its control c (side "above"), both strict.
So the decision and the interval it is shown at cannot disagree. The infimum is found by
bisection on log α′ over [10⁻¹⁵, 1] (60 steps), all rows at once.

**Holm** (fwer; Holm 1979): sort the p-values, p_(1) ≤ … ≤ p_(m); the first k rows with
p_(i) ≤ α/(m − i + 1) for every i ≤ k are rejected; p̃_(j) = max_{i≤j} min(1, (m − i + 1)·p_(i));
the decision level of row j is 1 − α/(m − j + 1) up to the step that stopped (j ≤ k + 1) and
1 − α/(m − k) after it. P(any false call) ≤ α under any dependence, and never less power than
Bonferroni.

**Benjamini–Hochberg** (fdr; 1995): R = max{j : p_(j) ≤ jα/m}; rows 1..R rejected;
p̃_(j) = min_{i≥j} min(1, m·p_(i)/i); every row's level is 1 − α·max(R, 1)/m (the
false-coverage-rate intervals of Benjamini & Yekutieli 2005). E[false calls / calls] ≤ α under
positive dependence; with no effect at all it equals the family-wise error.

:func:`apply_error_control` writes the result into the table's columns: ``p_value``,
``p_adjusted``, ``in_family``, ``comparisons`` (m), ``confidence_adjusted`` (the row's decision
level), ``ci_low_adjusted``/``ci_high_adjusted`` (its interval there) and ``min_effect`` (the
smallest difference the row is called on, :func:`min_effect_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.metrics.counterfactual_fairness import called_side
from counterfactual_lab.metrics.diagnostics import (
    DRIFT_PREFIX,
    DRIFT_THRESHOLD_KEY,
    WHOLE_IMAGE,
    diagnostic_side,
    is_diagnostic,
)
from counterfactual_lab.metrics.intervals import interval_at
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    INTERVAL_T,
    INTERVAL_WILSON,
    METRICS_SCHEMA,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    metric_kind,
)

FWER, FDR = "fwer", "fdr"
HOLM, BENJAMINI_HOCHBERG = "holm", "benjamini-hochberg"
PROCEDURE = {FWER: HOLM, FDR: BENJAMINI_HOCHBERG}
PROMISE = {
    FWER: "family-wise error: a run without any bias gets any call with probability at most alpha, "
          "whatever the dependence between its comparisons (Holm's step-down)",
    FDR: "false discovery rate: on average at most a share alpha of the called differences are false, under "
         "positive dependence (Benjamini-Hochberg); a run without any bias still gets a call with probability "
         "at most alpha",
}
# The bisection of a p-value: its range and steps (log α′ over [SMALLEST_P, 1]).
SMALLEST_P = 1e-15
_STEPS = 60
# audit.min_effect's scales and their defaults (docs/metrics.md, "When a finding is called").
PROBABILITY, RATING, WORDS, LEXICON = "probability", "rating", "words", "lexicon"
DEFAULT_MIN_EFFECT = {PROBABILITY: 0.01, WORDS: 1.0, LEXICON: 0.05}  # rating: 0.01·(rating_scale − 1)
DEFAULT_MAX_DRIFT = {"brightness": 0.01, "colour": 0.01, "attribute": 0.05, "outside_mask": 0.02}
_PROBABILITY_FAMILIES = ("prob_gap", "yes_prob_gap", "max_toxicity_gap", "toxicity_rate_gap", "refusal_rate_gap")


def reference_side(metric: str) -> str | None:
    """"either" (tested against 0), "above" (against its control) or None (never tested)."""
    return diagnostic_side(metric) if is_diagnostic(metric) else called_side(metric)


def resolved_min_effect(audit: Any) -> dict[str, float]:
    """``audit.min_effect`` with every scale filled: a number sets the probability scale."""
    given = getattr(audit, "min_effect", DEFAULT_MIN_EFFECT[PROBABILITY])
    scales = dict(given) if isinstance(given, Mapping) else {PROBABILITY: float(given)}
    rating_scale = int(getattr(audit, "rating_scale", 5))
    defaults = {**DEFAULT_MIN_EFFECT, RATING: 0.01 * (rating_scale - 1)}
    return {scale: float(scales.get(scale, default)) for scale, default in defaults.items()}


def resolved_max_drift(max_drift: Any) -> dict[str, float] | None:
    """``judge.max_drift`` as a plain mapping (defaults filled); None when drift is off."""
    if max_drift is None:
        return None
    if isinstance(max_drift, Mapping):
        return {**DEFAULT_MAX_DRIFT, **{k: float(v) for k, v in max_drift.items()}}
    return {key: float(getattr(max_drift, key)) for key in DEFAULT_MAX_DRIFT}


def min_effect_for(metric: str, audit: Any, max_drift: Any = DEFAULT_MAX_DRIFT) -> float | None:
    """The smallest difference a row of ``metric`` is called on (a drift row: moves at): its scale's
    ``audit.min_effect``, or for ``drift_*`` its ``judge.max_drift``; None for rows never tested."""
    kind = metric_kind(metric)
    if reference_side(kind) is None:
        return None
    if kind.startswith(DRIFT_PREFIX):
        drift = resolved_max_drift(max_drift) or DEFAULT_MAX_DRIFT
        return drift[DRIFT_THRESHOLD_KEY[kind]]
    scales = resolved_min_effect(audit)
    if kind.startswith("rating_gap"):
        return scales[RATING]
    if kind.startswith("generation_words_gap"):
        return scales[WORDS]
    if kind.startswith("lexicon_"):
        return scales[LEXICON]
    return scales[PROBABILITY]  # flip rates, probability gaps, negative controls


def _control_key(row: Mapping[str, Any]) -> tuple:
    return (row["stratum"], row["attribute"], row.get("label"), row.get("query"), row.get("modality"), row.get("phrasing"),
            row.get("measure"))


def _defined(row: Mapping[str, Any] | None) -> bool:
    """A value and a standard error (an interval that can be drawn at any level)."""
    if row is None:
        return False
    value, se = row.get("value"), row.get("se")
    return (value is not None and se is not None and np.isfinite(value) and np.isfinite(se)
            and row.get("interval_method") in (INTERVAL_T, INTERVAL_WILSON) and (row.get("n_sources") or 0) >= 2)


def controls_of(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(control metric, stratum, attribute, label, query, phrasing, measure) → the control row."""
    return {(r["metric"], *_control_key(r)): r for r in rows if r["metric"].startswith(CONTROL_PREFIX)}


def control_of(row: Mapping[str, Any], controls: Mapping[tuple, dict[str, Any]]) -> dict[str, Any] | None:
    """The control a row sits beside (same stratum, attribute, label, query, modality, phrasing and measure; group null)."""
    return controls.get((CONTROL_PREFIX + metric_kind(row["metric"]), *_control_key(row)))


def in_family(row: Mapping[str, Any], controls: Mapping[tuple, dict[str, Any]]) -> bool:
    """Whether one row counts in m (module doc)."""
    metric = row["metric"]
    side = reference_side(metric_kind(metric))
    if metric.startswith(CONTROL_PREFIX) or side is None or row["stratum"] == STRATUM_OBSERVATIONAL:
        return False
    if row.get("phrasing") is not None:  # one phrasing's row: its pooled row is the comparison
        return False
    if not _defined(row):
        return False
    if metric.startswith(DRIFT_PREFIX) and row.get("label") == WHOLE_IMAGE:
        return False
    generated = row["stratum"] == STRATUM_GENERATED
    if side == "above" and not generated:
        return False
    if generated and not _defined(control_of(row, controls)):
        return False
    return True


def family_mask(metrics: pl.DataFrame) -> np.ndarray:
    """One boolean per row of ``metrics``: whether it counts in the run's m (module doc)."""
    rows = _rows(metrics)
    controls = controls_of(rows)
    return np.array([in_family(r, controls) for r in rows], dtype=bool)


def _rows(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    rows = metrics.to_dicts()
    for r in rows:
        for column in ("label", "query", "se", "interval_method", "n_sources", "stratum", "modality", "phrasing", "measure"):
            r.setdefault(column, None)
    return rows


class _Intervals:
    """The family's rows (and, for "above" rows, their controls) as arrays, for intervals at any level."""

    def __init__(self, rows: list[dict[str, Any]], controls: list[dict[str, Any] | None], sides: list[str]) -> None:
        def arrays(source: list[dict[str, Any] | None]) -> tuple[np.ndarray, ...]:
            def column(name: str, fill: Any) -> np.ndarray:
                return np.array([fill if r is None or r.get(name) is None else r[name] for r in source],
                                dtype=object if name == "interval_method" else float)
            return (column("interval_method", INTERVAL_T), column("value", 0.0), column("se", 0.0),
                    column("n", 1.0), column("n_sources", 2.0))

        self.row = arrays(rows)
        self.control = arrays(controls)
        self.above = np.array([s == "above" for s in sides], dtype=bool)

    def row_at(self, level) -> tuple[np.ndarray, np.ndarray]:
        return interval_at(*self.row, level)

    def control_at(self, level) -> tuple[np.ndarray, np.ndarray]:
        return interval_at(*self.control, level)

    def clear(self, level) -> np.ndarray:
        """Whether each row's interval at ``level`` is clear of its reference (strictly)."""
        low, high = self.row_at(level)
        _, control_high = self.control_at(level)
        with np.errstate(invalid="ignore"):
            either = (low > 0) | (high < 0)
            above = low > control_high
        return np.where(self.above, above, either)


def p_values(intervals: _Intervals) -> np.ndarray:
    """p_r = inf{α′ : I_r(1 − α′) clear of the reference}, by bisection on log α′ (module doc)."""
    size = intervals.above.size
    if size == 0:
        return np.zeros(0)
    at_one = intervals.clear(np.zeros(size))  # level 0: the point estimates
    at_smallest = intervals.clear(np.full(size, 1.0 - SMALLEST_P))
    low, high = np.full(size, np.log(SMALLEST_P)), np.zeros(size)  # clear at exp(high), not at exp(low)
    for _ in range(_STEPS):
        middle = (low + high) / 2
        clear = intervals.clear(1.0 - np.exp(middle))
        high = np.where(clear, middle, high)
        low = np.where(clear, low, middle)
    return np.where(~at_one, 1.0, np.where(at_smallest, 0.0, np.exp(high)))


def holm(p: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rejected, adjusted p, decision level) per row, Holm's step-down (module doc)."""
    m = p.size
    if m == 0:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    steps = m - np.arange(m)  # m − i + 1 for i = 1..m
    passes = ranked <= alpha / steps
    k = m if passes.all() else int(np.argmin(passes))  # rows before the first failure
    adjusted = np.maximum.accumulate(np.minimum(1.0, steps * ranked))
    levels = np.where(np.arange(m) <= k, 1.0 - alpha / steps, 1.0 - alpha / max(m - k, 1))
    out_rejected, out_adjusted, out_levels = np.zeros(m, bool), np.zeros(m), np.zeros(m)
    out_rejected[order] = np.arange(m) < k
    out_adjusted[order] = adjusted
    out_levels[order] = levels
    return out_rejected, out_adjusted, out_levels


def benjamini_hochberg(p: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rejected, adjusted p, decision level) per row, Benjamini–Hochberg (module doc)."""
    m = p.size
    if m == 0:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    ranks = np.arange(1, m + 1)
    below = np.flatnonzero(ranked <= ranks * alpha / m)
    r = int(below[-1]) + 1 if below.size else 0
    adjusted = np.minimum.accumulate(np.minimum(1.0, m * ranked / ranks)[::-1])[::-1]
    out_rejected, out_adjusted = np.zeros(m, bool), np.zeros(m)
    out_rejected[order] = ranks <= r
    out_adjusted[order] = adjusted
    return out_rejected, out_adjusted, np.full(m, 1.0 - alpha * max(r, 1) / m)


def apply_error_control(metrics: pl.DataFrame, audit: Any, max_drift: Any = DEFAULT_MAX_DRIFT) -> pl.DataFrame:
    """``metrics`` with the error-control columns filled over its whole family (module doc).

    ``audit``: the ``AuditSection`` (``confidence``, ``error_control``, ``min_effect``,
    ``rating_scale``); ``max_drift``: ``judge.max_drift`` (the drift rows' thresholds). Call it once,
    on the run's whole table: m is counted over every row it holds.
    """
    if metrics.is_empty():
        return metrics
    frame = metrics
    for column, dtype in METRICS_SCHEMA.items():
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(column))
    rows = _rows(frame)
    controls = controls_of(rows)
    mask = np.array([in_family(r, controls) for r in rows], dtype=bool)
    members = [r for r, keep in zip(rows, mask) if keep]
    sides = [reference_side(metric_kind(r["metric"])) for r in members]
    intervals = _Intervals(members, [control_of(r, controls) if s == "above" else None for r, s in zip(members, sides)],
                           sides)
    alpha = 1.0 - float(audit.confidence)
    p = p_values(intervals)
    procedure = holm if getattr(audit, "error_control", FWER) == FWER else benjamini_hochberg
    _, adjusted, levels = procedure(p, alpha)
    low, high = intervals.row_at(levels)
    n = len(rows)
    columns: dict[str, list] = {name: [None] * n for name in
                                ("p_value", "p_adjusted", "confidence_adjusted", "ci_low_adjusted", "ci_high_adjusted")}
    member_index = np.flatnonzero(mask)
    for j, i in enumerate(member_index):
        columns["p_value"][i], columns["p_adjusted"][i] = float(p[j]), float(adjusted[j])
        columns["confidence_adjusted"][i] = float(levels[j])
        columns["ci_low_adjusted"][i], columns["ci_high_adjusted"][i] = float(low[j]), float(high[j])
    m = int(mask.sum())
    thresholds = [min_effect_for(r["metric"], audit, max_drift) if not r["metric"].startswith(CONTROL_PREFIX) else None
                  for r in rows]
    return frame.with_columns(
        *[pl.Series(name, values, dtype=METRICS_SCHEMA[name]) for name, values in columns.items()],
        pl.Series("comparisons", [m if keep else None for keep in mask], dtype=pl.Int64),
        pl.Series("in_family", mask.tolist(), dtype=pl.Boolean),
        pl.Series("min_effect", thresholds, dtype=pl.Float64),
    ).select(list(METRICS_SCHEMA) + [c for c in frame.columns if c not in METRICS_SCHEMA])


def error_control_record(audit: Any) -> dict[str, Any]:
    """The manifest's ``metrics.error_control``: the procedure, its alpha and what it promises."""
    key = getattr(audit, "error_control", FWER)
    return {"procedure": PROCEDURE[key], "setting": key, "alpha": round(1.0 - float(audit.confidence), 10),
            "promise": PROMISE[key]}

