"""Findings in plain words: the sentence of each assessed metric row, and the number formats.

:func:`finding_sentence` writes one row of :func:`counterfactual_lab.report.findings.assess_findings`
as a sentence with its interval, n (pairs or images, and the source images behind them) and,
for a counterfactual comparison, its control beside it or the note that there was none.
Rows outside the ``generated`` stratum say which stratum they are from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from counterfactual_lab.metrics.counterfactual_fairness import (
    GAP_ABS_SUFFIX,
    GAP_SIGNED_SUFFIX,
)
from counterfactual_lab.metrics.findings import REFERENCE_CONTROL, REFERENCE_NO_EFFECT
from counterfactual_lab.metrics.generative import gap_value_words
from counterfactual_lab.metrics.intervals import percent_level
from counterfactual_lab.metrics.schema import (
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
    metric_k,
    metric_kind,
    missing,
)

REAL_VS_GENERATED_WARNING = (
    "Reconstruction was off: pairs compare original photos with generated images, and group and retrieval "
    "metrics rank a pool of real and generated images, so a difference may only measure whether an image "
    "was generated (real vs generated)."
)

STRATUM_TITLES = {
    STRATUM_GENERATED: "generated vs generated",
    STRATUM_EVALUATE_ONLY: "counterfactual sets (evaluate-only)",
    STRATUM_REAL_VS_GENERATED: "real vs generated (reconstruction off)",
    STRATUM_OBSERVATIONAL: "observational (originals only)",
}
_STRATUM_PREFIX = {
    STRATUM_GENERATED: "",
    STRATUM_EVALUATE_ONLY: "Counterfactual sets: ",
    STRATUM_REAL_VS_GENERATED: "Real vs generated: ",
    STRATUM_OBSERVATIONAL: "Observational (originals only, descriptive): ",
}


# -- formatting ---------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    """0.234 -> '23%', 0.004 -> '0.4%'."""
    if missing(value):
        return "n/a"
    scaled = value * 100
    if abs(scaled) >= 10 or scaled == round(scaled):
        return f"{scaled:.0f}%"
    return f"{scaled:.1f}%"


def points(value: float | None) -> str:
    """A difference of two shares in percentage points: 0.12 -> '12 percentage points'."""
    if missing(value):
        return "n/a percentage points"
    return f"{percent(value).rstrip('%')} percentage points"


def number(value: float | None) -> str:
    if missing(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def interval(row: Mapping[str, Any], fmt=number, prefix: str = "") -> str:
    """' [low, high]' or '' when the row has no interval."""
    low, high = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
    if missing(low) or missing(high):
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


def _fmt(kind: str):
    return percent if kind in ("flip_rate", "selection_rate") else number


# -- sentences ------------------------------------------------------------------------------------


def _subject(row: Mapping[str, Any]) -> str:
    """'gender male→female' or 'changing gender' when the row covers every direction."""
    return f"{row['attribute']} {row['group']}" if row.get("group") else f"changing {row['attribute']}"


def _label(row: Mapping[str, Any]) -> str:
    return f"'{row['label']}'" if row.get("label") else "the predicted label"


def _sample(row: Mapping[str, Any], unit: str) -> str:
    if row.get("n") is None:
        return ""
    sources = f" from {row['n_sources']} source images" if row.get("n_sources") is not None else ""
    return f"n={row['n']} {unit}{sources}"


def _gap_subject(row: Mapping[str, Any]) -> str:
    """What a gap is the change of: "P('doctor')", or a generative probe's value and prompt
    ("P(yes) for 'Is this person a doctor?'")."""
    words = gap_value_words(row["metric"])
    if words is None:
        return f"P({_label(row)})"
    return f"{words} for '{row['query']}'" if row.get("query") else words


def _signed(value: float | None) -> str:
    return "n/a" if missing(value) else f"{value:+.3g}"


def _measure(row: Mapping[str, Any], value_key: str = "value", prefix: str = "") -> str:
    """The pair metric's value in words, with its interval."""
    kind = metric_kind(row["metric"])
    value = row[value_key]
    ci = interval(row, _fmt(kind), prefix)
    if kind == "flip_rate":
        return f"the top-1 label flips in {percent(value)} of pairs{ci}"
    if kind.endswith(GAP_ABS_SUFFIX):
        return f"{_gap_subject(row)} moves by {number(value)} on average{ci}"
    return f"{_gap_subject(row)} changes by {_signed(value)} on average{ci}"


def _control(row: Mapping[str, Any]) -> str:
    kind = metric_kind(row["metric"])
    value = row["control_value"]
    text = percent(value) if kind == "flip_rate" else (_signed(value) if kind.endswith(GAP_SIGNED_SUFFIX) else number(value))
    control_n = f"; n={row['control_n']} pairs" if row.get("control_n") is not None else ""
    return f"the control's {text}{interval(row, _fmt(kind), 'control_')} (same source and value, another seed{control_n})"


def _adjusted(row: Mapping[str, Any]) -> bool:
    return row.get("comparisons") is not None and not missing(row.get("ci_low_adjusted"))


def _family_clause(row: Mapping[str, Any]) -> str:
    """'; at the family-wise 99.9% level over the run's m comparisons: [a, b] vs the control's [c, d]'."""
    if not _adjusted(row):
        return ""
    fmt = _fmt(metric_kind(row["metric"]))
    own = interval({"ci_low": row["ci_low_adjusted"], "ci_high": row["ci_high_adjusted"]}, fmt).strip()
    control = ""
    if row["reference"] == REFERENCE_CONTROL:
        bounds = interval({"ci_low": row.get("control_ci_low_adjusted"), "ci_high": row.get("control_ci_high_adjusted")}, fmt)
        control = f" vs the control's{bounds}" if bounds else ""
    return (f"; at the family-wise {percent_level(row['confidence_adjusted'])} level ({row['comparisons']} "
            f"comparisons in this run): {own}{control}")


def _not_detected(row: Mapping[str, Any], sample: str) -> str:
    """'no difference detected at this sample size (n=…)', or, where the configured intervals
    differ but the family-wise ones do not, that the run's many comparisons account for it."""
    if _adjusted(row) and _configured_excludes(row):
        overlap = ("the intervals overlap" if row["reference"] == REFERENCE_CONTROL
                   else f"the interval reaches no change ({number(row['no_effect'])})")
        return (f"no difference detected once the run's {row['comparisons']} comparisons are accounted for "
                f"({sample}; at the family-wise {percent_level(row['confidence_adjusted'])} level {overlap})")
    return f"no difference detected at this sample size ({sample})"


def _configured_excludes(row: Mapping[str, Any]) -> bool:
    """Whether the configured interval alone lies clear of the reference (control or no change)."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if missing(low) or missing(high):
        return False
    if row["reference"] == REFERENCE_CONTROL:
        c_low, c_high = row.get("control_ci_low"), row.get("control_ci_high")
        if missing(c_low) or missing(c_high):
            return False
        if row.get("control_band") is not None:  # a signed gap: beyond ±band
            return low > row["control_band"] or high < -row["control_band"]
        return low > c_high
    return row.get("no_effect") is not None and not low <= row["no_effect"] <= high


def _pair_sentence(row: Mapping[str, Any]) -> str:
    kind = metric_kind(row["metric"])
    sample = _sample(row, "pairs")
    subject = _subject(row)
    if row["value"] is None:
        return f"{subject}: {row['metric']} is undefined ({row.get('note') or 'no reason recorded'})"
    if row["reference"] == REFERENCE_CONTROL:
        if row["control_value"] is None:
            return (f"{subject}: {_measure(row)} ({sample}); no control was measured for {row['attribute']}, "
                    "so no difference is called")
        if row["called"]:
            if row.get("control_band") is not None:  # a signed gap: beyond what a seed change alone does
                return (f"{subject}: {_measure(row)} ({sample}), larger than the generator's own change either way "
                        f"(±{number(row['control_band'])}: {_control(row)} and its mean |Δ|){_family_clause(row)}")
            direction = "above" if row["value"] > row["control_value"] else "below"
            return f"{subject}: {_measure(row)} ({sample}), {direction} {_control(row)}{_family_clause(row)}"
        return f"{subject}: {_not_detected(row, sample)}: {_measure(row)} vs {_control(row)}"
    # No control in this run: compared with no change.
    if row["called"]:
        family = _family_clause(row)
        return (f"{subject}: {_measure(row)} ({sample}); this excludes no change ({number(row['no_effect'])}){family}"
                f"{'; but' if family else ', but'} there was no control in this run, so the generator's own variation "
                "is not ruled out")
    return f"{subject}: {_not_detected(row, sample)}: {_measure(row)}; there was no control in this run"


def ranking_basis(row: Mapping[str, Any], short: bool = False) -> str:
    """What a skew or NDKL number was measured against: 'K = 10, desired uniform: female=0.5,
    male=0.5, geyik protocol' ('K=10, uniform: female=0.5, male=0.5, geyik' for a table cell; 'N = …'
    for NDKL over the whole ranking of N images); '' for other rows."""
    if not row.get("protocol"):
        return ""
    # A row without K in its name (NDKL over the whole ranking) has the ranking's length in ``k``.
    name = "K" if metric_k(row["metric"]) else "N"
    k = "" if row.get("k") is None else (f"{name}={row['k']}, " if short else f"{name} = {row['k']}, ")
    desired = "" if not row.get("desired") else (f"{row['desired']}, " if short else f"desired {row['desired']}, ")
    return f"{k}{desired}{row['protocol']}" + ("" if short else " protocol")


def _descriptive_sentence(row: Mapping[str, Any]) -> str:
    """A metric that is reported but not called, in plain words with its interval and n (and, for a
    ranking metric, its K, desired distribution and protocol)."""
    kind, k = metric_kind(row["metric"]), metric_k(row["metric"])
    value, attribute = row["value"], row["attribute"]
    query = f"'{row['query']}'" if row.get("query") else "the retrieval query"
    top = f"top {k}" if k else "whole ranking"
    images = _sample(row, "images")
    basis = ranking_basis(row)
    images = f", {images}" if images else ""
    images += f"; {basis}" if basis else ""
    if value is None:
        what = row["metric"] + "".join(f" {p}" for p in (row.get("group"), row.get("label")) if p)
        where = f" for {query}" if row.get("query") else (" averaged over the queries" if basis else "")
        return f"{attribute} {what}{where} is undefined: {row.get('note') or 'no reason recorded'}{f' ({basis})' if basis else ''}"
    if kind in ("max_skew", "min_skew") and basis and not row.get("query"):
        name = "MaxSkew" if kind == "max_skew" else "MinSkew"
        return (f"averaged over the queries, each ranking its own sets, the {attribute} {name} of the {top} is "
                f"{number(value)}{interval(row)} ({images.lstrip(', ')})")
    if kind.endswith(GAP_ABS_SUFFIX):
        return (f"{_subject(row)}: {_measure(row)} ({_sample(row, 'pairs')}); there was no control in this run, and a "
                "mean absolute change is positive whenever anything varies, so it is reported, not compared with 0")
    if kind == "selection_rate":
        return (f"{attribute} {row['group']} images are labelled {_label(row)} {percent(value)} of the time"
                f"{interval(row, percent)} ({images.lstrip(', ')})")
    if kind == "demographic_parity_difference":
        return (f"across {attribute} groups, the share labelled {_label(row)} differs by up to {points(value)} "
                f"(demographic parity difference {number(value)}{interval(row)}{images})")
    if kind == "demographic_parity_ratio":
        return (f"the least-favoured {attribute} group is labelled {_label(row)} {number(value)}× as often as the "
                f"most-favoured (demographic parity ratio{interval(row)}{images}; 1 is parity)")
    if kind == "equalized_odds_difference":
        return (f"error rates for {_label(row)} differ across {attribute} groups by up to {points(value)} "
                f"(equalized odds difference {number(value)}{interval(row)}{images})")
    if kind in ("max_skew", "min_skew"):
        which = "over" if kind == "max_skew" else "under"
        group = f" ({row['group']})" if row.get("group") else ""
        name = "MaxSkew" if kind == "max_skew" else "MinSkew"
        return (f"for {query}, the most {which}-represented {attribute} group{group} fills the {top} at "
                f"{number(math.exp(value))}× its desired share ({name} {number(value)}{interval(row)}{images})")
    if kind == "skew":
        return (f"for {query}, {attribute} {row['group']} fills the {top} at {number(math.exp(value))}× its desired "
                f"share (Skew {number(value)}{interval(row)}{images})")
    if kind == "ndkl":
        return (f"for {query}, the {attribute} mix of the {top} diverges from the desired mix by NDKL "
                f"{number(value)}{interval(row)} (0 = the desired mix at every rank{images})")
    if kind == "cits":
        who = " ".join(str(p) for p in (attribute, row.get("group")) if p)
        return (f"{who} counterfactuals score {number(value)} on CITS, the project's own counterfactual image-text "
                f"score{interval(row)} ({_sample(row, 'counterfactuals')})")
    extras = ", ".join(f"{c} {row[c]}" for c in ("group", "label", "query") if row.get(c))
    return f"{row['metric']} for {attribute}{f' ({extras})' if extras else ''} is {number(value)}{interval(row)}{images}"


def finding_sentence(row: Mapping[str, Any]) -> str:
    """The sentence of one assessed row (see :func:`assess_findings`)."""
    prefix = _STRATUM_PREFIX.get(row["stratum"], f"{row['stratum']}: ")
    if row.get("reference") in (REFERENCE_CONTROL, REFERENCE_NO_EFFECT):
        return prefix + _pair_sentence(row)
    return prefix + _descriptive_sentence(row)
