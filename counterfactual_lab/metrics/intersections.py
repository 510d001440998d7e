"""Intersections in the metrics (``attributes.intersections``): cells, joint transitions, small cells.

For an intersection such as ``[race, gender]`` (:mod:`counterfactual_lab.config.intersections`):

* **stratified** (:func:`with_cells`): the pool rows of each attribute of the intersection again,
  under the attribute ``gender | race=Black`` for the sources whose race is Black (in an
  evaluate-only run, the members whose own race is: a comparison group holds it fixed). Every
  metric of the attribute follows on those rows — pairs, controls, negative controls, group and
  observational rows — so the gender flip rate among sources labelled Black sits beside its own
  control, in the run's family;
* **joint**: the attribute ``race+gender`` of the joint edits (the pool has it where the method's
  prompt carries both, or where the dataset's sets vary both); a pair counts only where *every*
  attribute of the intersection changes (:func:`changes_every_part`), e.g. ``White female→Black male``;
* **small cells** (:func:`small_cell_notes`): a cell resting on fewer than ``audit.min_group_size``
  source images keeps its values without intervals (as any row on too few sources) and every row
  of it says so.

Everything is keyed by the ``attribute`` string, so the error control counts each cell's and each
joint row in the run's family like any other (:mod:`counterfactual_lab.metrics.error_control`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.config.intersections import (
    joint_name,
    joint_values,
    split_stratified,
    stratified_name,
)
from counterfactual_lab.metrics.schema import STRATUM_EVALUATE_ONLY
from counterfactual_lab.plan.work_items import VARIANT_ORIGINAL


def _values_of(base: pl.DataFrame, other: str, by_source: bool) -> pl.DataFrame:
    """Each row's (``by_source``: its source's) value of ``other``: ``key, <other>``."""
    rows = base.filter(pl.col("attribute") == other)
    if by_source:
        return (rows.filter(pl.col("variant") == VARIANT_ORIGINAL).group_by("source_id")
                .agg(pl.col("group").drop_nulls().first().alias(other)).rename({"source_id": "_key"}))
    return rows.group_by("id").agg(pl.col("group").drop_nulls().first().alias(other)).rename({"id": "_key"})


def with_cells(predictions: pl.DataFrame, base: pl.DataFrame, intersections: Sequence[Sequence[str]],
               design: str | None) -> pl.DataFrame:
    """``predictions`` plus every attribute's rows again under its cells' names (module doc).

    ``base``: one row per pool row (the base readings, :func:`~counterfactual_lab.evaluate.readings.base_readings`),
    where the other attributes' values are read. A row whose other value is unknown is in no cell.
    """
    if not intersections or predictions.height == 0:
        return predictions
    by_source = design != STRATUM_EVALUATE_ONLY
    key = "source_id" if by_source else "id"
    cells = []
    for names in intersections:
        for attribute in names:
            others = [n for n in names if n != attribute]
            rows = predictions.filter(pl.col("attribute") == attribute).with_columns(pl.col(key).alias("_key"))
            for other in others:
                rows = rows.join(_values_of(base, other, by_source), on="_key", how="left", maintain_order="left")
            rows = rows.filter(pl.all_horizontal(pl.col(o).is_not_null() for o in others))
            if rows.height == 0:
                continue
            names_of = [stratified_name(attribute, dict(zip(others, values)))
                        for values in rows.select(others).iter_rows()]
            cells.append(rows.with_columns(pl.Series("attribute", names_of, dtype=pl.String)).drop("_key", *others))
    return pl.concat([predictions, *cells], how="diagonal_relaxed") if cells else predictions


def compared_values(attribute_values: Mapping[str, Sequence[str]] | None, intersections: Sequence[Sequence[str]],
                    attributes: Sequence[str]) -> dict[str, list[str]] | None:
    """``attribute_values`` (the config's ``attributes``) with an entry for every cell (its attribute's
    values) and joint attribute (the combinations) among ``attributes``."""
    if attribute_values is None:
        return None
    out = {a: list(v) for a, v in attribute_values.items()}
    for names in intersections:
        out.setdefault(joint_name(names), list(joint_values(names, attribute_values)))
    for attribute in attributes:
        base, fixed = split_stratified(attribute)
        if fixed and base in out:
            out.setdefault(attribute, out[base])
    return out


def changes_every_part(pairs: pl.DataFrame, attribute: str, intersections: Sequence[Sequence[str]],
                       attribute_values: Mapping[str, Sequence[str]] | None) -> pl.DataFrame:
    """The pairs of a joint ``attribute`` whose transition changes every attribute of its intersection
    (others are that attribute's own comparisons, among its cells); other attributes' pairs as they are.
    A value the config does not list is kept (its parts are not known)."""
    names = next((list(n) for n in intersections if joint_name(n) == attribute), None)
    if names is None or pairs.height == 0:
        return pairs
    parts = {value.casefold(): combination for value, combination in joint_values(names, attribute_values or {}).items()}

    def every_part_changes(before: str | None, after: str | None) -> bool:
        a, b = parts.get((before or "").casefold()), parts.get((after or "").casefold())
        if a is None or b is None:
            return True
        return all(x.casefold() != y.casefold() for x, y in zip(a, b))

    keep = [every_part_changes(a, b) for a, b in pairs.select("from_group", "to_group").iter_rows()]
    return pairs.filter(pl.Series(keep, dtype=pl.Boolean))


def small_cell_notes(base: pl.DataFrame, min_sources: int) -> dict[str, str]:
    """cell attribute → its note, for every cell of ``base`` resting on fewer than ``min_sources``
    source images (the cell's rows keep their values, without intervals)."""
    notes = {}
    for attribute in base["attribute"].unique().to_list() if base.height else []:
        name, fixed = split_stratified(attribute)
        if not fixed:
            continue
        sources = base.filter(pl.col("attribute") == attribute)["source_id"].n_unique()
        if sources < min_sources:
            where = ", ".join(f"{a}={v}" for a, v in fixed.items())
            notes[attribute] = (f"intersection cell {where}: {sources} source image(s), fewer than "
                                f"audit.min_group_size={min_sources}")
    return notes


def with_cell_notes(rows: list[dict[str, Any]], notes: Mapping[str, str]) -> list[dict[str, Any]]:
    """``rows`` with each small cell's note (:func:`small_cell_notes`) on every row of the cell."""
    for row in rows:
        note = notes.get(row["attribute"])
        if note:
            row["note"] = note if row["note"] is None else f"{row['note']}; {note}"
    return rows
