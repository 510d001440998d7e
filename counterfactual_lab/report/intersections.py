"""The report's view of ``attributes.intersections``: joint transitions, cells and small cells.

:func:`intersection_lines`: per intersection, its joint transitions (attribute ``a+b``) and its
cells (attribute ``a | b=value``; :mod:`counterfactual_lab.metrics.intersections`), and the cells
too small for an interval (``audit.min_group_size``). The HTML report (the lines rendered by
``templates/_intersections.html.j2``) and ``cflab report`` (:func:`intersections_text`) both read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.config.intersections import is_joint, split_stratified
from counterfactual_lab.config.methods import METHODS


def intersection_lines(metrics: pl.DataFrame, manifest: Mapping[str, Any] | None = None) -> list[str]:
    """Per intersection: its joint transitions compared and called, its cells, and the cells too small
    for an interval (``audit.min_group_size``); a method that cannot carry a joint edit is named."""
    if metrics.is_empty():
        return []
    attributes = [a for a in metrics["attribute"].drop_nulls().unique(maintain_order=True).to_list()]
    joint = [a for a in attributes if is_joint(a) and not split_stratified(a)[1]]
    cells: dict[str, list[str]] = {}
    for attribute in attributes:
        base, fixed = split_stratified(attribute)
        if fixed:
            cells.setdefault(base, []).append(attribute)
    lines = []
    for name in joint:
        compared = metrics.filter((pl.col("attribute") == name) & pl.col("group").is_not_null() & pl.col("in_family"))
        transitions = compared["group"].n_unique()
        lines.append(f"{name}: joint edits changing every attribute at once, {transitions} transition(s) in the family.")
    for base, names in cells.items():
        small = metrics.filter(pl.col("attribute").is_in(names) & pl.col("note").str.contains("intersection cell"))
        too_small = sorted(set(small["attribute"].to_list()))
        where = [", ".join(f"{k}={v}" for k, v in split_stratified(n)[1].items()) for n in sorted(names)]
        lines.append(f"{base}: {len(names)} cell(s) ({'; '.join(where)})"
                     + (f"; too few source images for an interval in {', '.join(too_small)} "
                        "(audit.min_group_size)" if too_small else "") + ".")
    method = (((manifest or {}).get("config") or {}).get("generation") or {}).get("method")
    intersections = ((((manifest or {}).get("config") or {}).get("attributes") or {}).get("intersections")) or []
    if intersections and method in METHODS and not METHODS[method].joint_edits and METHODS[method].reads_source:
        lines.append(f"generation.method {method} cannot carry two changes in one prompt: intersections are "
                     "stratified, not edited jointly.")
    return lines


def intersections_text(metrics: pl.DataFrame, manifest: Mapping[str, Any] | None = None) -> list[str]:
    """The terminal's lines (``cflab report``; none for a run without intersections)."""
    lines = intersection_lines(metrics, manifest)
    return ["", "Intersections:"] + [f"  - {line}" for line in lines] if lines else []

