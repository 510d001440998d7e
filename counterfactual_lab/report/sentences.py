"""Findings in plain words: the sentence of each assessed metric row, and the number formats.

:func:`finding_sentence` writes one row of :func:`counterfactual_lab.report.findings.assess_findings`
as a sentence with its interval, n (pairs or images, and the source images behind them) and,
for a counterfactual comparison, its control beside it or the note that there was none, and
why a row is not called (its interval includes no change, it is not above the control, it is
below ``audit.min_effect``, or it is confounded by what the generator changed along with the
attribute). Rows outside the ``generated`` stratum say which stratum they are from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from counterfactual_lab.metrics.counterfactual_fairness import (
    ANSWER_CHANGE,
    GAP_ABS_SUFFIX,
    GAP_SIGNED_SUFFIX,
)
from counterfactual_lab.metrics.diagnostics import DRIFT_OUTSIDE_MASK, diagnostic_words, is_channel
from counterfactual_lab.metrics.findings import (
    REASON_BELOW_MIN_EFFECT,
    REASON_INCLUDES_ZERO,
    REASON_NO_CONTROL,
    REASON_NO_INTERVAL,
    REASON_NOT_ABOVE,
    REFERENCE_CONTROL,
    REFERENCE_NO_EFFECT,
    VERDICT_CONFOUNDED,
    VERDICT_MOVED,
    VERDICT_REPORTED,
    VERDICT_UNDEFINED,
)
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
    if kind == ANSWER_CHANGE:
        similarity = "embedding cosine" if row.get("measure") == "embedding_cosine" else "ROUGE-L"
        return f"the answers to '{row.get('query')}' change by {number(value)} (1 − {similarity}) on average{ci}"
    if kind.endswith(GAP_ABS_SUFFIX):
        return f"{_gap_subject(row)} moves by {number(value)} on average{ci}"
    return f"{_gap_subject(row)} changes by {_signed(value)} on average{ci}"


def _control(row: Mapping[str, Any]) -> str:
    kind = metric_kind(row["metric"])
    value = row["control_value"]
    text = percent(value) if kind == "flip_rate" else (_signed(value) if kind.endswith(GAP_SIGNED_SUFFIX) else number(value))
    control_n = f"; n={row['control_n']} pairs" if row.get("control_n") is not None else ""
    # A text-modality row's control reads one image with one word (metrics/modalities.py).
    what = "the same image and word" if row.get("modality") == "text" else "same source and value, another seed"
    return f"the control's {text}{interval(row, _fmt(kind), 'control_')} ({what}{control_n})"


def _adjusted(row: Mapping[str, Any]) -> bool:
    return row.get("comparisons") is not None and not missing(row.get("ci_low_adjusted"))


def _decision_interval(row: Mapping[str, Any], prefix: str = "") -> str:
    """The interval the row was decided at: at its decision level, else (a table from before the
    error control) the configured one."""
    fmt = _fmt(metric_kind(row["metric"]))
    adjusted = interval({"ci_low": row.get(f"{prefix}ci_low_adjusted"), "ci_high": row.get(f"{prefix}ci_high_adjusted")}, fmt)
    return (adjusted or interval(row, fmt, prefix)).strip()


def _level(row: Mapping[str, Any]) -> str:
    """'at its decision level, 99.93% (the run's error control over 70 comparisons)'."""
    if not _adjusted(row):
        return "at the configured level"
    return (f"at its decision level, {percent_level(row['confidence_adjusted'])} (the run's error control over "
            f"{row['comparisons']} comparisons)")


def _min_effect_name(row: Mapping[str, Any]) -> str:
    return "judge.max_drift" if row["metric"].startswith("drift_") else "audit.min_effect"


def _threshold(row: Mapping[str, Any]) -> str:
    return f"{_min_effect_name(row)} = {number(row.get('min_effect'))}"


def _configured_clear(row: Mapping[str, Any]) -> bool:
    """Whether the configured interval alone is clear of the reference (0, or the control's)."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if missing(low) or missing(high):
        return False
    if row.get("no_effect") is not None:
        return low > 0 or high < 0
    c_high = row.get("control_ci_high")
    return not missing(c_high) and low > c_high


def _no_control_note(row: Mapping[str, Any]) -> str:
    return "" if row["reference"] == REFERENCE_CONTROL else "; there was no control in this run"


def _why_not(row: Mapping[str, Any], sample: str) -> str:
    """The sentence of a compared row that is not called, by its reason."""
    subject, reason = _subject(row), row.get("reason")
    decided = _decision_interval(row)
    if reason == REASON_BELOW_MIN_EFFECT:
        size = abs(row["value"]) if row.get("no_effect") is not None else row["value"] - (row.get("control_value") or 0.0)
        reference = "no change" if row.get("no_effect") is not None else "the control"
        return (f"{subject}: {_measure(row)} ({sample}) is clear of {reference} {_level(row)}: {decided}, but the change "
                f"({number(size)}) is smaller than {_threshold(row)}, the smallest difference this audit calls a "
                f"finding; more data would not change that{_no_control_note(row)}")
    if reason == REASON_NOT_ABOVE:
        control = _decision_interval(row, "control_")
        fewer = ("; fewer changes than the generator's own variation are not bias"
                 if row["value"] < (row.get("control_value") or 0.0) else "")
        alone = (f" (at the configured level alone it would; the run's {row['comparisons']} comparisons account for it)"
                 if _adjusted(row) and _configured_clear(row) else "")
        return (f"{subject}: no difference detected at this sample size ({sample}): {_measure(row)} vs {_control(row)}; "
                f"{_level(row)}, {decided} does not lie above the control's {control}{fewer}{alone}")
    alone = (f" (at the configured level alone it would not; the run's {row['comparisons']} comparisons account for it)"
             if _adjusted(row) and _configured_clear(row) else "")
    control = f"; {_control(row)}" if row["reference"] == REFERENCE_CONTROL and row.get("control_value") is not None else ""
    return (f"{subject}: no difference detected at this sample size ({sample}): {_measure(row)}; {_level(row)}, its "
            f"interval {decided} includes no change (0){alone}{control}{_no_control_note(row)}")


def _called(row: Mapping[str, Any], sample: str) -> str:
    subject, decided = _subject(row), _decision_interval(row)
    if row.get("no_effect") is None:  # above the control
        control = _decision_interval(row, "control_")
        return (f"{subject}: {_measure(row)} ({sample}), above {_control(row)}; {_level(row)}: {decided} vs the "
                f"control's {control}, at least {_threshold(row)} more")
    if row["reference"] == REFERENCE_CONTROL:
        return (f"{subject}: {_measure(row)} ({sample}); {_level(row)}, its interval {decided} excludes no change, and "
                f"the change is at least {_threshold(row)}. The control: {_control(row)}")
    return (f"{subject}: {_measure(row)} ({sample}); {_level(row)}, its interval {decided} excludes no change (0), and "
            f"the change is at least {_threshold(row)}; but there was no control in this run, so the generator's own "
            "variation is not ruled out")


def _confounded(row: Mapping[str, Any], sample: str) -> str:
    where = f"this transition ({row['group']})" if row.get("group") else f"a transition of {row['attribute']}"
    return (f"{_subject(row)}: {_measure(row)} ({sample}) — confounded, not called: on {where} the generator also "
            f"changed {row.get('confounded_by') or 'something else'}; the difference may be the generator's, not the model's")


def _diagnostic_sentence(row: Mapping[str, Any]) -> str:
    """A confound diagnostic (negative control, off-target drift) in words."""
    subject, sample = _subject(row), _sample(row, "pairs")
    what = diagnostic_words(row["metric"], row.get("label"), row.get("query"))
    if row["value"] is None:
        return f"{subject}: {what}: undefined ({row.get('note') or 'no reason recorded'})"
    grey = f" ({row['value'] * 255:+.1f} grey levels)" if is_channel(row["metric"]) else ""
    verb = "moves by" if row["metric"] == DRIFT_OUTSIDE_MASK else "changes by"
    value = number(row["value"]) if row["metric"] == DRIFT_OUTSIDE_MASK else _signed(row["value"])
    measured = f"{subject}: {what} {verb} {value}{grey}{interval(row)} on average ({sample})"
    verdict = row.get("verdict")
    if verdict == VERDICT_MOVED:
        return (f"{measured} — moved ({_level(row)}: {_decision_interval(row)}, at least {_threshold(row)}): "
                f"differences of {row['attribute']} on {'this transition' if row.get('group') else 'every transition'} "
                "are marked confounded")
    if verdict == VERDICT_UNDEFINED:
        return f"{measured}; not tested ({row.get('reason') or 'undefined'}: {row.get('note') or 'no interval or control'})"
    if verdict == VERDICT_REPORTED:
        return f"{measured}; reported, not tested"
    reason = {REASON_BELOW_MIN_EFFECT: f"clear of no change but below {_threshold(row)}",
              REASON_NOT_ABOVE: "not above the control's", REASON_INCLUDES_ZERO: "its interval includes no change"}
    return f"{measured}; did not move ({reason.get(row.get('reason'), row.get('reason'))})"


def _pair_sentence(row: Mapping[str, Any]) -> str:
    sample = _sample(row, "pairs")
    subject = _subject(row)
    reason = row.get("reason")
    if row["value"] is None:
        return f"{subject}: {row['metric']} is undefined ({row.get('note') or 'no reason recorded'})"
    if reason == REASON_NO_CONTROL:
        return (f"{subject}: {_measure(row)} ({sample}); no control was measured for {row['attribute']}, "
                "so no difference is called")
    if reason == REASON_NO_INTERVAL:
        return (f"{subject}: {_measure(row)} ({sample}) has no interval ({row.get('note') or 'too few source images'}), "
                "so no difference is called")
    if row.get("verdict") == VERDICT_CONFOUNDED:
        return _confounded(row, sample)
    if row["called"]:
        return _called(row, sample)
    return _why_not(row, sample)


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
    if kind.endswith(GAP_ABS_SUFFIX) or kind == "flip_rate":
        what = "flip rate" if kind == "flip_rate" else "mean absolute change"
        return (f"{_subject(row)}: {_measure(row)} ({_sample(row, 'pairs')}); there was no control in this run, and a "
                f"{what} is positive whenever anything varies, so it is reported, not compared with 0")
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


# What a pair row of another modality than the image changed (metrics/modalities.py); image rows say nothing more.
MODALITY_WORDS = {
    "image": "the image changed, the {person} word kept",
    "text": "the same image, the {person} word changed",
    "both": "the image and the {person} word changed",
}
def _robustness(row: Mapping[str, Any]) -> str:
    """' It holds in every phrasing (robust).' on a called row of a probe asked in several phrasings."""
    if row.get("robustness") == "robust":
        return " It has the same sign in every phrasing of the prompt (robust)."
    if row.get("robustness") == "phrasing-dependent":
        return " Its sign is not the same in every phrasing of the prompt (phrasing-dependent)."
    return ""


def _design_sentence(row: Mapping[str, Any]) -> str | None:
    """One phrasing's row, a phrasing spread or a synthetic shift in words; None for any other row."""
    kind = metric_kind(row["metric"])
    if row.get("phrasing") is not None and row["value"] is not None:
        return (f"{_subject(row)}, in the phrasing '{row['phrasing']}': {_measure(row)} ({_sample(row, 'pairs')}); "
                "reported: the row pooled over every phrasing is the comparison")
    if kind == "phrasing_spread" and row["value"] is not None:
        return (f"{_subject(row)}: {row.get('measure')} differs by {number(row['value'])} between the phrasings of "
                f"{_label(row) if row.get('label') else repr(row.get('query'))} ({row.get('note')})")
    if kind == "synthetic_shift" and row["value"] is not None:
        what = row.get("measure") or "the value"
        about = f"'{row['label']}'" if row.get("label") else (f"'{row['query']}'" if row.get("query") else "the label")
        return (f"{_subject(row)}: generated images alone (original → reconstruction) move {what} of {about} by "
                f"{_signed(row['value']) if what.endswith('signed') else number(row['value'])}{interval(row)} "
                f"({_sample(row, 'pairs')}); reported apart from the findings")
    return None


def finding_sentence(row: Mapping[str, Any]) -> str:
    """The sentence of one assessed row (see :func:`assess_findings`)."""
    prefix = _STRATUM_PREFIX.get(row["stratum"], f"{row['stratum']}: ")
    modality = row.get("modality")
    if modality and modality != "image":
        prefix += f"{modality.capitalize()} ({MODALITY_WORDS.get(modality, modality)}): "
    if row.get("diagnostic"):
        return prefix + _diagnostic_sentence(row)
    design = _design_sentence(row)
    if design is not None:
        return prefix + design
    if row.get("reference") in (REFERENCE_CONTROL, REFERENCE_NO_EFFECT):
        return prefix + _pair_sentence(row) + (_robustness(row) if row.get("called") else "")
    return prefix + _descriptive_sentence(row)
