"""Intersections of attributes (``attributes.intersections: [[race, gender], …]``): their names,
their joint values and the cells their metrics are stratified into.

An intersection is measured two ways (docs/metrics.md, "Intersections"):

* **stratified**: every metric of one attribute of the intersection, among the sources whose value
  of the other attributes in it is fixed: the gender flip rate among sources labelled Black is the
  attribute ``gender | race=Black`` (:func:`stratified_name`), a *cell*;
* **joint**: edits that change every attribute of the intersection at once, where the method's
  prompt can carry both (the method's ``joint_edits`` fact, :mod:`counterfactual_lab.config.methods`): the attribute
  ``race+gender`` (:func:`joint_name`), whose values are the combinations of the attributes'
  values written with a space (``White female``; :func:`joint_value`) and whose transitions read
  ``White female→Black male``.

Plain strings, so every table, control and family that keys on ``attribute`` keys on these too.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

# The joint attribute's name joins its attributes with this (as text2image-sets members do).
JOINT_SEPARATOR = "+"
# A joint value joins the attributes' values with this: "White female".
VALUE_SEPARATOR = " "
# A stratified attribute: "<attribute> | <other>=<value>[, <other>=<value>]".
STRATUM_SEPARATOR = " | "


def joint_name(attributes: Sequence[str]) -> str:
    """``race+gender``: the joint attribute of an intersection (in the config's order)."""
    return JOINT_SEPARATOR.join(attributes)


def joint_value(values: Sequence[str]) -> str:
    """``White female``: one combination of values, in the intersection's order."""
    return VALUE_SEPARATOR.join(values)


def joint_values(attributes: Sequence[str], values: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """joint value → its values, for every combination of ``values`` of ``attributes`` (in order)."""
    combinations = itertools.product(*[list(values.get(a, ())) for a in attributes])
    return {joint_value(combination): tuple(combination) for combination in combinations}


def joint_targets(source: Sequence[str], values: Mapping[str, Sequence[str]], attributes: Sequence[str]) -> list[tuple[str, ...]]:
    """The combinations that change *every* attribute of the intersection from ``source`` (config order):
    a joint edit changes them all at once; a change of one alone is that attribute's own comparison."""
    return [combination for combination in itertools.product(*[list(values.get(a, ())) for a in attributes])
            if all(t.casefold() != s.casefold() for t, s in zip(combination, source))]


def stratified_name(attribute: str, fixed: Mapping[str, str]) -> str:
    """``gender | race=Black``: ``attribute`` among the sources whose other values are ``fixed``."""
    return attribute + STRATUM_SEPARATOR + ", ".join(f"{a}={v}" for a, v in fixed.items())


def split_stratified(name: str) -> tuple[str, dict[str, str]]:
    """(the attribute, the fixed values) of a name :func:`stratified_name` made; a plain name: (name, {})."""
    attribute, separator, rest = name.partition(STRATUM_SEPARATOR)
    if not separator:
        return name, {}
    fixed = {}
    for part in rest.split(", "):
        key, _, value = part.partition("=")
        fixed[key] = value
    return attribute, fixed


def is_joint(name: str) -> bool:
    """Whether ``name`` is a joint attribute (``race+gender``)."""
    return JOINT_SEPARATOR in split_stratified(name)[0]


def check_intersections(intersections: Sequence[Sequence[str]], attributes: Sequence[str]) -> list[list[str]]:
    """``attributes.intersections``: each at least two distinct attributes of ``attributes``, no
    intersection twice; ValueError naming the entry otherwise."""
    seen: set[frozenset[str]] = set()
    out = []
    for index, entry in enumerate(intersections):
        where = f"attributes.intersections[{index}]"
        if isinstance(entry, str) or not isinstance(entry, Sequence) or len(entry) < 2:
            raise ValueError(f"{where} must list two or more attributes, e.g. [race, gender]; got {entry!r}")
        names = [str(a) for a in entry]
        if len(set(names)) != len(names):
            raise ValueError(f"{where} {names} lists an attribute twice")
        unknown = [a for a in names if a not in attributes]
        if unknown:
            raise ValueError(f"{where}: {unknown[0]!r} is not an audited attribute; list it in 'attributes' "
                             f"(which has {list(attributes)})")
        if frozenset(names) in seen:
            raise ValueError(f"{where} {names} is listed twice")
        seen.add(frozenset(names))
        out.append(names)
    return out
