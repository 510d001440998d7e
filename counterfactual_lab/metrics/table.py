"""``metrics.parquet``: every metric of every stratum and attribute, with intervals, n and notes.

:func:`compute_metrics` reads the frames :mod:`counterfactual_lab.evaluate.pool` produces —
``predictions`` (the pool rows with ``score_<label>`` and ``top1``), ``retrieval`` (query, id,
content_key, score) — and the judge's ``counterfactuals`` (for CITS). Per attribute, in order:

1. the comparison stratum of the run's design (:mod:`~counterfactual_lab.metrics.strata`):
   flip rate and probability gaps over its pairs, overall and per transition; in the
   ``generated`` stratum the control metrics beside them; selection rate, demographic parity
   and equalized odds over its pool; Skew@K, MaxSkew@K, MinSkew@K, NDKL and NDKL@K per query;
2. the ``observational`` stratum (originals): the group and retrieval metrics, descriptive;
3. CITS of the kept counterfactuals;
4. the confound diagnostics (:mod:`~counterfactual_lab.metrics.diagnostics`): the negative
   controls over the same pairs (a contrastive model's ``nc_score_<A>`` columns) and the judge's
   off-target drift (``drift``, :mod:`~counterfactual_lab.metrics.drift`);
5. in the ``generated`` stratum, the synthetic shift (:mod:`~counterfactual_lab.metrics.synthetic_shift`):
   original → reconstruction, how far generated images alone move the answers.

A label prompt asked in several phrasings (``audit.phrasings`` of ``audit.prompt`` or
``audit.choice_prompt``: ``score_<label>@k``, ``top1@k`` in the predictions) gets its pair metrics
pooled over the phrasings, per phrasing and their spread (:mod:`~counterfactual_lab.metrics.phrasings`);
group and retrieval metrics and the negative controls read the configured phrasing.

Every attribute of the config is covered: one whose pairs are all gone (every set dropped by the
judge) gets its pair rows undefined, with the reason, rather than no rows at all.

Then, once over the whole table, the error control
(:func:`~counterfactual_lab.metrics.error_control.apply_error_control`: Holm or
Benjamini–Hochberg over the rows of the run's family); a generative run applies it once over
its shared and probe rows together (``with_error_control=False`` here,
:mod:`counterfactual_lab.metrics.generative_table`).

Under ``audit.skew_protocol: geyik`` (the default) the desired distribution of retrieval is
uniform over the attribute's values (``attribute_values``, the config's ``attributes``; without
it, the groups present) in the ``generated`` and ``evaluate_only`` strata, and the pool's own mix
in the ``observational`` and ``real_vs_generated`` strata, whose pools the data, not the design,
balance; under ``socialcounterfactuals`` it is each query's own pool's mix
(:mod:`~counterfactual_lab.metrics.rankings`). :func:`retrieval_table` gives the rankings
themselves (``retrieval.parquet``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.config.intersections import split_stratified
from counterfactual_lab.config.skew_protocols import SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS
from counterfactual_lab.evaluate.pool import (
    NEGATIVE_CONTROL_PREFIX,
    POOL_SCHEMA,
    phrased_column,
    phrasing_view,
    score_column,
)
from counterfactual_lab.evaluate.readings import base_readings
from counterfactual_lab.metrics.cits import cits_rows
from counterfactual_lab.metrics.counterfactual_fairness import (
    control_metric_rows,
    negative_control_rows,
    pair_metric_rows,
)
from counterfactual_lab.metrics.drift import drift_metric_rows
from counterfactual_lab.metrics.error_control import DEFAULT_MAX_DRIFT, apply_error_control
from counterfactual_lab.metrics.group_fairness import group_fairness_rows
from counterfactual_lab.metrics.intersections import (
    changes_every_part,
    compared_values,
    small_cell_notes,
    with_cell_notes,
    with_cells,
)
from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.metrics.modalities import in_modality, modalities_of, reading_table, tagged
from counterfactual_lab.metrics.pairs import PAIRS_BY_DESIGN, control_pairs
from counterfactual_lab.metrics.phrasings import first_phrasing, label_phrasings, phrased_rows, stack_phrasings
from counterfactual_lab.metrics.rankings import query_rankings, ranking_frame, retrieval_frame
from counterfactual_lab.metrics.retrieval import mean_skew_rows, retrieval_rows
from counterfactual_lab.metrics.schema import (
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
    metrics_frame,
)
from counterfactual_lab.metrics.strata import (
    check_design,
    comparison_pool,
    comparison_stratum,
    normalise_predictions,
    observational_pool,
    restrict_groups,
)
from counterfactual_lab.metrics.synthetic_shift import label_shift_rows
from counterfactual_lab.plan.work_items import VARIANT_RECONSTRUCTION

# Strata whose pool is balanced by design: the desired distribution is uniform over the values.
_UNIFORM_DESIRED = (STRATUM_GENERATED, STRATUM_EVALUATE_ONLY)
# Why an attribute has no pairs, per design: (judged and all dropped, never generated, neither known).
_NO_PAIRS = {
    STRATUM_GENERATED: ("every set of this attribute was dropped by the judge",
                        "no set of this attribute was generated",
                        "no kept set of this attribute is in the evaluation pool"),
    STRATUM_REAL_VS_GENERATED: ("every counterfactual of this attribute was dropped by the judge",
                                "no counterfactual of this attribute was generated",
                                "no kept counterfactual of this attribute is in the evaluation pool"),
}
_NO_SET_PAIRS = "no counterfactual set of this attribute has two members with different values"


def _with_note(rows: list[dict[str, Any]], note: str | None) -> list[dict[str, Any]]:
    if note:
        for row in rows:
            row["note"] = note if row["note"] is None else f"{row['note']}; {note}"
    return rows


def spelled_as_in(values: Sequence[str] | None, predictions: pl.DataFrame) -> list[str] | None:
    """The configured values in the pool's spelling (the config may write ``Female`` for ``female``)."""
    if values is None:
        return None
    present = {g.casefold(): g for g in predictions["group"].drop_nulls().unique().to_list()}
    return sorted({present.get(v.casefold(), v) for v in values})


def _stratum_pool(
    pool: pl.DataFrame, stratum: str, values: Sequence[str] | None
) -> tuple[pl.DataFrame, list[str] | None, str | None]:
    """(the rows group and retrieval metrics of ``stratum`` use, the values of a uniform desired
    distribution or None for the pool's mix, a note on the rows left out)."""
    uniform = stratum in _UNIFORM_DESIRED
    pool, left_out = restrict_groups(pool, values if uniform else None)
    desired = (sorted(values) if values is not None else sorted(pool["group"].unique().to_list())) if uniform else None
    return pool, desired, left_out


def _pool_rows(
    pool: pl.DataFrame,
    retrieval: pl.DataFrame,
    attribute: str,
    stratum: str,
    audit: Any,
    settings: IntervalSettings,
    values: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """Group fairness and retrieval rows of one stratum's pool of one attribute."""
    pool, desired, left_out = _stratum_pool(pool, stratum, values)
    if pool.height == 0:
        return []
    rows = group_fairness_rows(pool, attribute, stratum, list(audit.labels), settings, audit.min_group_size)
    if retrieval.height:
        rankings = query_rankings(pool, retrieval, stratum, audit, desired)
        for r in rankings:
            rows += retrieval_rows(r.ranked, attribute, stratum, r.query, r.k, settings, r.desired_values, r.protocol)
        if rankings and rankings[0].protocol == SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS:
            rows += mean_skew_rows([(r.query, r.ranked) for r in rankings], attribute, stratum, rankings[0].k, settings)
    return _with_note(rows, left_out)


def no_pairs_note(design: str, attribute: str, counterfactuals: pl.DataFrame) -> str:
    """Why ``attribute`` has no pairs in a ``design`` run, from the judge's output where it tells."""
    if design == STRATUM_EVALUATE_ONLY:
        return f"no pairs: {_NO_SET_PAIRS}"
    dropped, never, unknown = _NO_PAIRS[design]
    if not {"attribute", "kept"} <= set(counterfactuals.columns):
        return f"no pairs: {unknown}"
    judged = counterfactuals.filter(pl.col("attribute") == attribute)
    if "control" in judged.columns:
        judged = judged.filter(~pl.col("control").fill_null(False))
    if judged.height == 0:
        return f"no pairs: {never}"
    return f"no pairs: {dropped if not judged['kept'].fill_null(False).any() else unknown}"


def _empty_predictions(labels: Sequence[str]) -> pl.DataFrame:
    """A predictions frame without rows (nothing was evaluated), with every column the metrics read."""

    return pl.DataFrame(schema={**POOL_SCHEMA, **{score_column(label): pl.Float64 for label in labels}, "top1": pl.String})


def negative_control_labels(predictions: pl.DataFrame, labels: Sequence[str]) -> list[str]:
    """The negative controls a contrastive run measured (``nc_score_<A>`` columns), less any that is also a label."""
    return [c.removeprefix(NEGATIVE_CONTROL_PREFIX) for c in predictions.columns
            if c.startswith(NEGATIVE_CONTROL_PREFIX) and c.removeprefix(NEGATIVE_CONTROL_PREFIX) not in set(labels)]


def _with_negative_controls(predictions: pl.DataFrame, controls: Sequence[str]) -> pl.DataFrame:
    """The predictions with each negative control's probability as a label's score column, for pairing."""
    return predictions.with_columns([pl.col(NEGATIVE_CONTROL_PREFIX + c).alias(score_column(c)) for c in controls])


@dataclass(frozen=True)
class _Comparisons:
    """What a run compares: its design, each attribute's rows (its base readings), and per (attribute,
    modality) its pairs and control pairs (the pairs carry the negative controls' scores too; with
    several phrasings of the label prompt, every phrasing's pairs stacked with a ``phrasing`` column);
    the modalities, the attributes' values (cells and joint attributes included), the small cells'
    notes and the label prompt's phrasings answered."""

    predictions: pl.DataFrame
    design: str | None
    rows_by: dict[str, pl.DataFrame]
    pairs_by: dict[tuple[str, str], pl.DataFrame]
    controls_by: dict[tuple[str, str], pl.DataFrame]
    negative_controls: list[str]
    modalities: list[str]
    values: dict[str, list[str]] | None
    cell_notes: dict[str, str]
    phrasings: list[str]


def _answered_phrasings(predictions: pl.DataFrame, audit: Any) -> list[str]:
    """The phrasings of the label prompt whose answers the predictions hold (the configured one first)."""
    prompt = audit.choice_prompt if getattr(audit, "choice_prompt", None) is not None else getattr(audit, "prompt", None)
    texts = label_phrasings(audit, prompt) or [prompt]
    return [text for k, text in enumerate(texts) if phrased_column("top1", k) in predictions.columns]


def _comparisons(
    predictions: pl.DataFrame | None, audit: Any, attribute_values: Mapping[str, Sequence[str]] | None, design: str | None,
    with_pairs: bool = True, intersections: Sequence[Sequence[str]] = (),
) -> _Comparisons | None:
    """The run's comparisons (:class:`_Comparisons`); None for a run with nothing to compare or describe.
    ``with_pairs=False``: the design and each attribute's rows only (no pairs)."""
    labels = list(audit.labels)
    empty = predictions is None or predictions.height == 0
    if empty and design is None:
        return None
    predictions = normalise_predictions(_empty_predictions(labels) if empty else predictions, labels)
    if design is not None:
        check_design(predictions, design)
    comparison = design if design is not None else comparison_stratum(predictions)
    negative = negative_control_labels(predictions, labels)
    # Each intersection's cells: the rows again under "gender | race=Black" (metrics/intersections.py).
    predictions = with_cells(predictions, base_readings(predictions), intersections, comparison)
    base = base_readings(predictions)
    paired = _with_negative_controls(base, negative)
    phrasings = _answered_phrasings(predictions, audit)
    attributes = sorted(set(attribute_values or {}) | set(base["attribute"].drop_nulls().unique().to_list()))
    values = compared_values(attribute_values, intersections, attributes)
    rows_by = {attribute: base.filter(pl.col("attribute") == attribute) for attribute in attributes}
    modalities = modalities_of(audit)
    columns = ["top1", *[score_column(label) for label in labels + negative]]
    with_controls = _with_negative_controls(predictions, negative)
    # Each phrasing's readings: its answers under the plain column names (evaluate/pool.py, phrasing_view).
    readings = [reading_table(phrasing_view(with_controls, k, columns), columns) for k in range(len(phrasings))]
    pairs_by, controls_by = {}, {}
    if comparison is not None and with_pairs:
        for attribute in attributes:
            rows_of = paired.filter(pl.col("attribute") == attribute)
            each = [phrasing_view(rows_of, k, columns) for k in range(len(phrasings))]
            pairs = [changes_every_part(PAIRS_BY_DESIGN[comparison](view, labels + negative), attribute, intersections,
                                        attribute_values) for view in each]
            controls = [control_pairs(view, labels + negative) for view in each] if comparison == STRATUM_GENERATED else None
            for modality in modalities:
                pairs_by[(attribute, modality)] = _in_each_phrasing(pairs, readings, attribute, columns, modality, phrasings)
                if controls is not None:
                    controls_by[(attribute, modality)] = _in_each_phrasing(controls, readings, attribute, columns, modality,
                                                                           phrasings)
    return _Comparisons(predictions, comparison, rows_by, pairs_by, controls_by, negative, modalities, values,
                        small_cell_notes(base, audit.min_group_size), phrasings)


def _in_each_phrasing(pairs: list[pl.DataFrame], readings: list[pl.DataFrame | None], attribute: str,
                      columns: list[str], modality: str, phrasings: list[str]) -> pl.DataFrame:
    """Each phrasing's ``pairs`` read in ``modality`` from that phrasing's readings, stacked (module doc)."""
    def of_attribute(table: pl.DataFrame | None) -> pl.DataFrame | None:
        return None if table is None else table.filter(pl.col("attribute") == attribute)

    return stack_phrasings([(text, in_modality(pairs[k], of_attribute(readings[k]), columns, modality))
                            for k, text in enumerate(phrasings)])


def compute_metrics(
    predictions: pl.DataFrame,
    retrieval: pl.DataFrame,
    counterfactuals: pl.DataFrame,
    audit: Any,
    attribute_values: Mapping[str, Sequence[str]] | None = None,
    *,
    design: str | None = None,
    drift: pl.DataFrame | None = None,
    max_drift: Any = DEFAULT_MAX_DRIFT,
    with_error_control: bool = True,
    intersections: Sequence[Sequence[str]] = (),
) -> pl.DataFrame:
    """The metrics table (:data:`~counterfactual_lab.metrics.schema.METRICS_SCHEMA`) of one run.

    ``audit`` is the :class:`~counterfactual_lab.config.audit_config.AuditSection` (labels, queries,
    top_k, min_group_size, bootstrap settings, confidence, error_control, min_effect, modalities);
    ``attribute_values`` maps each attribute to the values the config lists for it (the uniform
    desired distribution of retrieval, and the groups of the balanced generated sets); every
    attribute in it gets its comparison rows. ``design`` is the stratum of the run's comparisons as
    the config sets it (:func:`~counterfactual_lab.metrics.strata.design_stratum`); None reads it
    from the pool, which cannot tell a run whose judge dropped every set from one that generated
    nothing. ``drift``: the judge's off-target drift readings (``drift.parquet``), ``max_drift``:
    ``judge.max_drift`` (their thresholds). ``with_error_control``: apply the error control over this table
    (False: the caller applies it over a larger table, :mod:`counterfactual_lab.metrics.generative_table`).
    ``intersections``: ``attributes.intersections`` (their cells and joint rows,
    :mod:`counterfactual_lab.metrics.intersections`).

    The pair rows (flip rate, gaps, their controls, negative controls) come once per modality of
    ``audit.modalities`` (:mod:`counterfactual_lab.metrics.modalities`), each with its ``modality``; every
    other row is the images' own (``modality`` image).
    """
    labels = list(audit.labels)
    settings = IntervalSettings.from_audit(audit)
    plan = _comparisons(predictions, audit, attribute_values, design, intersections=intersections)
    if plan is None:
        return metrics_frame([])
    predictions, comparison = plan.predictions, plan.design
    retrieval = retrieval if retrieval is not None else pl.DataFrame()
    counterfactuals = counterfactuals if counterfactuals is not None else pl.DataFrame()
    generated = comparison == STRATUM_GENERATED or (
        "variant" in counterfactuals.columns and (counterfactuals["variant"] == VARIANT_RECONSTRUCTION).any()
    )
    floor = audit.min_group_size
    rows: list[dict[str, Any]] = []
    for attribute, rows_of in plan.rows_by.items():
        values = spelled_as_in(plan.values.get(attribute) if plan.values else None, rows_of)
        if comparison is not None:
            no_pairs = no_pairs_note(comparison, split_stratified(attribute)[0], counterfactuals)
            for modality in plan.modalities:
                pairs, controls = plan.pairs_by[(attribute, modality)], plan.controls_by.get((attribute, modality))
                compared = phrased_rows(
                    lambda p: pair_metric_rows(p, attribute, comparison, labels, settings, floor, no_pairs), pairs)
                if comparison == STRATUM_GENERATED:
                    compared += phrased_rows(lambda p: control_metric_rows(p, attribute, comparison, labels, settings, floor),
                                             controls, with_spread=False)
                compared += negative_control_rows(first_phrasing(pairs), None if controls is None else first_phrasing(controls),
                                                  attribute, comparison, plan.negative_controls, settings, floor, no_pairs)
                rows += tagged(compared, modality)
            rows += _pool_rows(comparison_pool(rows_of, comparison), retrieval, attribute, comparison, audit, settings, values)
        rows += _pool_rows(observational_pool(rows_of), retrieval, attribute, STRATUM_OBSERVATIONAL, audit, settings, values)
        cits_stratum = STRATUM_GENERATED if generated else STRATUM_REAL_VS_GENERATED
        rows += cits_rows(counterfactuals, attribute, cits_stratum, settings)
        if comparison == STRATUM_GENERATED:
            rows += drift_metric_rows(drift, attribute, settings, floor)
            rows += label_shift_rows(rows_of, attribute, labels, plan.phrasings, settings, floor)
    table = metrics_frame(with_cell_notes(rows, plan.cell_notes))
    return apply_error_control(table, audit, max_drift) if with_error_control else table


def retrieval_table(
    predictions: pl.DataFrame,
    retrieval: pl.DataFrame,
    audit: Any,
    attribute_values: Mapping[str, Sequence[str]] | None = None,
    *,
    design: str | None = None,
    intersections: Sequence[Sequence[str]] = (),
) -> pl.DataFrame:
    """``retrieval.parquet``: every ranking :func:`compute_metrics` measures skew and NDKL on (the same
    arguments), one row per query, stratum, attribute and ranked image
    (:data:`~counterfactual_lab.metrics.rankings.RETRIEVAL_TABLE_SCHEMA`)."""
    plan = _comparisons(predictions, audit, attribute_values, design, with_pairs=False, intersections=intersections)
    if plan is None or retrieval is None or retrieval.height == 0:
        return retrieval_frame([])
    frames = []
    for attribute, rows_of in plan.rows_by.items():
        values = spelled_as_in(plan.values.get(attribute) if plan.values else None, rows_of)
        strata = [(comparison_pool(rows_of, plan.design), plan.design)] if plan.design is not None else []
        for rows, stratum in [*strata, (observational_pool(rows_of), STRATUM_OBSERVATIONAL)]:
            pool, desired, _ = _stratum_pool(rows, stratum, values)
            if pool.height:
                frames += [ranking_frame(r, stratum, attribute) for r in query_rankings(pool, retrieval, stratum, audit, desired)]
    return retrieval_frame(frames)
