"""The confound diagnostics' metric rows: their names, which side of what they are tested on, and
what each measures in words.

Two kinds of row tell the model's bias from the generator's (docs/metrics.md, "Confound
diagnostics"); both are tested like the bias rows, in the same family, and are never *called*:
they *move*, and a bias row on the same transition is then ``confounded``.

* ``negative_control_gap_signed`` (label: the negative control, or query: its question): the mean
  change, over the audit's own pairs, of an outcome that must not depend on the attribute
  (``audit.negative_controls``: "an outdoor photo | an indoor photo", "Is this photo blurry?", …);
* ``drift_<measure>``: what else the generator changed between reconstruction and counterfactual,
  read by the judge (:mod:`counterfactual_lab.judge.drift`): ``drift_brightness``, ``drift_red``,
  ``drift_green``, ``drift_blue`` (mean signed change of the channel means outside the person, on
  [0, 1]), ``drift_attribute`` (label ``<attribute>=<value>``: the mean change of the judge's
  zero-shot probability of another protected attribute's value) and ``drift_outside_mask`` (the
  mean absolute pixel change outside the person, compared with its control's).
"""

from __future__ import annotations

from counterfactual_lab.metrics.schema import CONTROL_PREFIX

NEGATIVE_CONTROL_GAP = "negative_control_gap_signed"
DRIFT_PREFIX = "drift_"
# drift metric → its measure in drift.parquet → its judge.max_drift key.
DRIFT_CHANNELS = ("brightness", "red", "green", "blue")
DRIFT_ATTRIBUTE = "drift_attribute"
DRIFT_OUTSIDE_MASK = "drift_outside_mask"
DRIFT_THRESHOLD_KEY = {
    "drift_brightness": "brightness", "drift_red": "colour", "drift_green": "colour", "drift_blue": "colour",
    DRIFT_ATTRIBUTE: "attribute", DRIFT_OUTSIDE_MASK: "outside_mask",
}
# The label of a low-level drift row read over the whole image (no person mask): reported, never
# tested, since the edit itself changes the pixels it covers.
WHOLE_IMAGE = "whole image"

_WORDS = {
    "drift_brightness": "the mean brightness outside the person",
    "drift_red": "the mean red outside the person",
    "drift_green": "the mean green outside the person",
    "drift_blue": "the mean blue outside the person",
    DRIFT_OUTSIDE_MASK: "the mean absolute pixel change outside the person",
}


def is_diagnostic(metric: str) -> bool:
    """Whether ``metric`` (a control's included) is a confound diagnostic (module doc)."""
    name = metric.removeprefix(CONTROL_PREFIX)
    return name == NEGATIVE_CONTROL_GAP or name.startswith(DRIFT_PREFIX)


def diagnostic_side(metric: str) -> str | None:
    """How a diagnostic moves: "above" its control (``drift_outside_mask``, a mean absolute change) or
    "either" way from 0 (the signed ones); None for any other metric."""
    if not is_diagnostic(metric) or metric.startswith(CONTROL_PREFIX):
        return None
    return "above" if metric == DRIFT_OUTSIDE_MASK else "either"


def is_channel(metric: str) -> bool:
    """Whether ``metric`` is a channel mean (brightness, red, green, blue) on [0, 1]."""
    return metric.removeprefix(CONTROL_PREFIX).removeprefix(DRIFT_PREFIX) in DRIFT_CHANNELS


def diagnostic_words(metric: str, label: str | None = None, query: str | None = None) -> str:
    """What a diagnostic row measures, in words ("the mean blue outside the person",
    "P('an outdoor photo')", "the judge's P(age=elderly)")."""
    name = metric.removeprefix(CONTROL_PREFIX)
    if name == NEGATIVE_CONTROL_GAP:
        return f"P(yes) for '{query}'" if query else f"P('{label}')"
    if name == DRIFT_ATTRIBUTE:
        return f"the judge's P({label})"
    words = _WORDS.get(name, name)
    return words.replace(" outside the person", " of the whole image") if label == WHOLE_IMAGE else words
