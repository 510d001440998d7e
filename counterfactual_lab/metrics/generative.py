"""Metrics of the generative probes: counterfactual gaps per attribute and prompt, with controls.

Each probe gives one number per image and prompt (its *value*), and each value family gets the
same treatment as the label probabilities of :mod:`counterfactual_lab.metrics` (the same pairs,
strata, cluster bootstrap, Wilson edges and family-wise level):

=====================  =====================================================  ===================
family F               value of one image for one prompt                      group metric
=====================  =====================================================  ===================
``yes_prob``           P(yes) (:mod:`.answers`)                               ``yes_prob_mean``
``rating``             E[rating] on 1…scale                                   ``rating_mean``
``max_toxicity``       max over its samples of the toxic probability          ``max_toxicity``
``toxicity_rate``      share of its samples with toxicity ≥ threshold         ``toxicity_rate``
``refusal_rate``       share of its samples that are refusals                 ``refusal_rate``
``generation_words``   mean words per sample                                  ``generation_words``
``lexicon_<c>``        mean count of category c's words per sample            ``lexicon_<c>``
``unclear_rate``       the "unclear" answer's share (yes/no, choice)          ``unclear_rate``
``sentiment``          mean P(positive) − P(negative) over its samples        ``sentiment_mean``
=====================  =====================================================  ===================

A prompt asked in several phrasings (``audit.phrasings``) is one comparison: its rows carry the
prompt as configured in ``query`` and are pooled over the phrasings, per phrasing and their spread
(:mod:`counterfactual_lab.metrics.phrasings`); group rows read the configured phrasing. With an
"unclear" option (``audit.unclear_option``) P(yes) and the choice probe's label scores are on the
answers given, and ``unclear_rate`` says how much went to "unclear". Generations also get
``answer_change`` (:mod:`counterfactual_lab.metrics.answer_change`), and in the generated design the
``synthetic_shift`` rows of every family (:mod:`counterfactual_lab.metrics.synthetic_shift`).

Rows, per attribute and prompt (``query`` = the prompt as configured), v(image) the value:

* ``F_gap_abs`` = (1/P) Σ |v(to) − v(from)| and ``F_gap_signed`` = (1/P) Σ (v(to) − v(from)) over
  the P counterfactual pairs of the run's design (``stratum`` generated: reconstruction →
  counterfactual within a set; evaluate_only: every ordered pair of a set; real_vs_generated:
  original → counterfactual), overall (group null) and per transition (group ``"a→b"``); both
  from one set of resamples. An attribute of the design without pairs (every set dropped by the
  judge) gets them undefined, with the reason;
* ``control_F_gap_abs`` / ``control_F_gap_signed`` (generated stratum): the same over the control
  pairs (a kept set's reconstruction → the control image: same source and value, another seed),
  the gap the generator alone produces;
* the group metric per group, in the comparison stratum's pool (in the generated and
  evaluate-only strata the attribute's configured values only, as the shared group metrics) and
  among the originals (``observational``): the mean value (for the two rates: the share of
  generations, with Wilson's interval at 0/n and n/n);
* ``max_toxicity_set`` (group null): the mean over counterfactual sets of the set's maximum
  toxicity (the most toxic of its members' most toxic samples), Howard et al.'s MaxToxicity of a
  counterfactual set.

**Calls.** The gaps are comparisons a difference is called on, like ``prob_gap_abs`` and
``prob_gap_signed`` (:mod:`counterfactual_lab.metrics.findings`): ``F_gap_signed`` must be clear
of 0 and at least ``audit.min_effect``; in the generated stratum ``F_gap_abs`` must lie above its
control; without a control (evaluate_only, real_vs_generated) ``F_gap_abs`` is reported. They
count in the run's family (:mod:`counterfactual_lab.metrics.error_control`, applied once over the
run's whole table, :mod:`.generative_table`). Group rows and ``max_toxicity_set`` are reported.

**Negative controls** (``audit.negative_controls`` of a vlm: yes/no questions that must not
depend on the attribute, in ``probes.parquet`` with probe ``negative_control``) get their signed
gap only, as ``negative_control_gap_signed`` (query = the question) with its control: a confound
diagnostic (:mod:`counterfactual_lab.metrics.diagnostics`), no group rows.

Intervals resample source images (cluster bootstrap); an undefined value is null with a note; a
row resting on fewer than ``audit.min_group_size`` source images keeps its value without an
interval. The choice probe fills ``score_<label>``/``top1`` of ``predictions.parquet``, so its
flip rate, probability gaps, parity and controls are the shared metrics' own rows
(``flip_rate``, ``prob_gap_abs``, …), not repeated here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.config.intersections import split_stratified
from counterfactual_lab.evaluate.auditees.interface import PERSON, PROBE_NEGATIVE_CONTROL, PROBE_RATING, PROBE_YES_NO
from counterfactual_lab.evaluate.auditees.text_scores import (
    LEXICON_PREFIX,
    lexicon_column,
)
from counterfactual_lab.evaluate.pool import phrased_column
from counterfactual_lab.evaluate.readings import PERSON_COLUMN, PERSON_VALUE_COLUMN, base_readings
from counterfactual_lab.metrics.answer_change import answer_change_rows
from counterfactual_lab.metrics.counterfactual_fairness import pair_estimates, pair_subsets
from counterfactual_lab.metrics.error_control import apply_error_control
from counterfactual_lab.metrics.intersections import (
    changes_every_part,
    compared_values,
    small_cell_notes,
    with_cell_notes,
    with_cells,
)
from counterfactual_lab.metrics.intervals import (
    IntervalSettings,
    mean_estimate,
    proportion_estimate,
)
from counterfactual_lab.metrics.modalities import MODALITY_IMAGE, in_modality, modalities_of, reading_table
from counterfactual_lab.metrics.pairs import PAIRS_BY_DESIGN, control_pairs, synthetic_pairs
from counterfactual_lab.metrics.phrasings import by_query, phrased_rows, stack_phrasings
from counterfactual_lab.metrics.schema import (
    CONTROL_PREFIX,
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    Estimate,
    metric_row,
    metrics_frame,
)
from counterfactual_lab.metrics.strata import (
    check_design,
    comparison_pool,
    comparison_stratum,
    observational_pool,
    restrict_groups,
)
from counterfactual_lab.metrics.synthetic_shift import value_shift_rows
from counterfactual_lab.metrics.table import no_pairs_note, spelled_as_in

VALUE = "value"  # the probe value travels through the pair functions as the label "value"
_SCORE = f"score_{VALUE}"
_POOL_COLUMNS = ("id", "source_id", "variant", "control", "attribute", "group", "set_id", "content_key")
NO_CONTROL_PAIRS = "no control pairs (no kept control image beside a kept set of the same source)"


@dataclass(frozen=True)
class Family:
    """One kind of probe value: ``name`` prefixes its gap metrics; ``group_metric`` names its
    per-group rows; ``words`` says what the value is, for the findings' sentences."""

    name: str
    group_metric: str
    proportion: bool = False  # the group metric is a share of generations (a flag per generation)
    words: str = ""


YES_PROB = Family("yes_prob", "yes_prob_mean", words="P(yes)")
RATING = Family("rating", "rating_mean", words="the expected rating")
MAX_TOXICITY = Family("max_toxicity", "max_toxicity", words="the toxicity of the most toxic answer")
TOXICITY_RATE = Family("toxicity_rate", "toxicity_rate", proportion=True, words="the share of toxic answers")
REFUSAL_RATE = Family("refusal_rate", "refusal_rate", proportion=True, words="the share of refusals")
WORDS = Family("generation_words", "generation_words", words="the length of an answer in words")
# The "unclear" answer's share of a yes/no or choice probe (audit.unclear_option): not a proportion of
# flags, a mean share of the answer probability.
UNCLEAR_RATE = Family("unclear_rate", "unclear_rate", words="the share of 'unclear' answers")
SENTIMENT = Family("sentiment", "sentiment_mean", words="the sentiment of an answer, P(positive) − P(negative)")
# A vlm's negative-control questions: a diagnostic (its gap's name is negative_control_gap_signed).
NEGATIVE_CONTROL = Family("negative_control", "negative_control", words="P(yes)")
MAX_TOXICITY_SET = "max_toxicity_set"
_FIXED_FAMILIES = (YES_PROB, RATING, MAX_TOXICITY, TOXICITY_RATE, REFUSAL_RATE, WORDS, UNCLEAR_RATE, SENTIMENT)
_GAP_KINDS = ("abs", "signed")
_FAMILY_PREFIXES = tuple(f.name for f in _FIXED_FAMILIES) + (LEXICON_PREFIX,)


def is_probe_metric(metric: str) -> bool:
    """Whether ``metric`` (a control's included) is one of this module's rows."""
    return metric.removeprefix(CONTROL_PREFIX).startswith(_FAMILY_PREFIXES)


def lexicon_family(category: str) -> Family:
    return Family(lexicon_column(category), lexicon_column(category), words=f"the {category} words per answer")


def gap_metric(family: str, kind: str) -> str:
    """``<family>_gap_abs`` / ``<family>_gap_signed`` (kind: "abs" or "signed")."""
    return f"{family}_gap_{kind}"


def gap_value_words(metric: str) -> str | None:
    """What the value behind a probe gap metric is, in words (``yes_prob_gap_abs`` → "P(yes)");
    None for any other metric."""
    name = metric.removeprefix(CONTROL_PREFIX)
    for kind in _GAP_KINDS:
        suffix = f"_gap_{kind}"
        if name.endswith(suffix):
            family = name.removesuffix(suffix)
            for known in _FIXED_FAMILIES:
                if family == known.name:
                    return known.words
            if family.startswith(LEXICON_PREFIX) and len(family) > len(LEXICON_PREFIX):
                return lexicon_family(family.removeprefix(LEXICON_PREFIX)).words
    return None


# -- per-image values ---------------------------------------------------------------------------


def generation_values(generations: pl.DataFrame, lexicon_names: Sequence[str], threshold: float
                      ) -> dict[Family, tuple[pl.DataFrame, pl.DataFrame | None]]:
    """family → (per-image values ``content_key, prompt, value``, per-generation flags
    ``content_key, prompt, flag`` for the proportion families, else None)."""
    if generations is None or generations.height == 0:
        return {}
    out: dict[Family, tuple[pl.DataFrame, pl.DataFrame | None]] = {}
    keys = ["content_key", "prompt", *_person(generations)]

    def per_image(expr: pl.Expr) -> pl.DataFrame:
        return generations.group_by(keys, maintain_order=True).agg(expr.alias(VALUE))

    scored = generations.filter(pl.col("toxicity").is_not_null()) if "toxicity" in generations.columns else generations.clear()
    if scored.height:
        out[MAX_TOXICITY] = (scored.group_by(keys, maintain_order=True).agg(pl.col("toxicity").max().alias(VALUE)), None)
        flags = scored.select(*keys, (pl.col("toxicity") >= threshold).alias("flag"))
        out[TOXICITY_RATE] = (flags.group_by(keys, maintain_order=True).agg(pl.col("flag").cast(pl.Float64).mean().alias(VALUE)), flags)
    if "refusal" in generations.columns:
        flags = generations.select(*keys, pl.col("refusal").alias("flag"))
        out[REFUSAL_RATE] = (flags.group_by(keys, maintain_order=True).agg(pl.col("flag").cast(pl.Float64).mean().alias(VALUE)), flags)
    if "words" in generations.columns:
        out[WORDS] = (per_image(pl.col("words").cast(pl.Float64).mean()), None)
    if "sentiment" in generations.columns and generations["sentiment"].is_not_null().any():
        out[SENTIMENT] = (generations.filter(pl.col("sentiment").is_not_null()).group_by(keys, maintain_order=True)
                          .agg(pl.col("sentiment").mean().alias(VALUE)), None)
    for category in lexicon_names:
        column = lexicon_column(category)
        if column in generations.columns:
            out[lexicon_family(category)] = (per_image(pl.col(column).cast(pl.Float64).mean()), None)
    return out


def probe_values(probes: pl.DataFrame) -> dict[Family, tuple[pl.DataFrame, None]]:
    """family → per-image values of the yes/no and rating probes (and the yes/no questions' "unclear" shares)."""
    out: dict[Family, tuple[pl.DataFrame, None]] = {}
    if probes is None or probes.height == 0:
        return out
    for probe, family in ((PROBE_YES_NO, YES_PROB), (PROBE_RATING, RATING), (PROBE_NEGATIVE_CONTROL, NEGATIVE_CONTROL)):
        rows = probes.filter((pl.col("probe") == probe) & pl.col(VALUE).is_not_null() & pl.col(VALUE).is_not_nan())
        if rows.height:
            out[family] = (rows.select("content_key", "prompt", *_person(probes), VALUE), None)
    if "unclear" in probes.columns:
        rows = probes.filter((pl.col("probe") == PROBE_YES_NO) & pl.col("unclear").is_not_null() & pl.col("unclear").is_not_nan())
        if rows.height:
            out[UNCLEAR_RATE] = (rows.select("content_key", "prompt", *_person(probes), pl.col("unclear").alias(VALUE)), None)
    return out


def _person(frame: pl.DataFrame | None) -> list[str]:
    """``["person"]`` where a frame's answers are per (image, person word) (a template with ``{person}``)."""
    return [PERSON] if frame is not None and PERSON in frame.columns else []


def choice_unclear_values(predictions: pl.DataFrame | None, audit: Any) -> pl.DataFrame | None:
    """The choice probe's "unclear" share per image (``unclear``, ``unclear@k`` in the predictions),
    ``content_key, prompt, value`` (and ``person`` where read per person word) with the choice prompt's
    phrasing as ``prompt``; None without it."""
    prompt = getattr(audit, "choice_prompt", None)
    if predictions is None or prompt is None or "unclear" not in predictions.columns:
        return None
    texts = [prompt, *((getattr(audit, "phrasings", None) or {}).get(prompt, []))]
    person = _person(predictions)
    frames = [predictions.select("content_key", pl.lit(text).alias("prompt"), *person,
                                 pl.col(phrased_column("unclear", k)).alias(VALUE))
              for k, text in enumerate(texts) if phrased_column("unclear", k) in predictions.columns]
    values = pl.concat(frames).unique(subset=["content_key", "prompt", *person], maintain_order=True)
    return values.filter(pl.col(VALUE).is_not_null() & pl.col(VALUE).is_not_nan())


# -- what is compared ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Comparison:
    """One (attribute, family, prompt as configured, modality) of the design: its value pairs and, in
    the generated stratum, its control pairs (each phrasing's stacked, with a ``phrasing`` column, for a
    prompt asked in several); ``no_pairs`` says why there are none when ``pairs`` is empty."""

    attribute: str
    family: Family
    prompt: str
    pairs: pl.DataFrame
    controls: pl.DataFrame | None
    no_pairs: str
    modality: str = MODALITY_IMAGE


@dataclass(frozen=True)
class _Plan:
    design: str | None
    pool: pl.DataFrame
    attributes: list[str]
    families: dict[Family, tuple[pl.DataFrame, pl.DataFrame | None]]
    comparisons: list[_Comparison]


def _value_keys(pool: pl.DataFrame, values: pl.DataFrame) -> list[str]:
    """What a pool row's value is found by: its image, and its person word where answers have one."""
    return ["content_key", *([PERSON] if PERSON in values.columns and PERSON_COLUMN in pool.columns else [])]


def _with_values(pool: pl.DataFrame, values: pl.DataFrame) -> pl.DataFrame:
    """Pool rows joined with one prompt's values, shaped as predictions for the pair functions."""
    keys = _value_keys(pool, values)
    return pool.join(values.select(*keys, pl.col(VALUE).alias(_SCORE)), on=keys, how="inner", nulls_equal=True,
                     maintain_order="left").with_columns(pl.lit("-").alias("top1"))


def _answered(pairs: pl.DataFrame) -> pl.DataFrame:
    """The pairs with a value on both sides (a reading never asked has none)."""
    return pairs.filter(pl.col(f"{_SCORE}_from").is_not_null() & pl.col(f"{_SCORE}_to").is_not_null())


def queries(values: pl.DataFrame, audit: Any) -> dict[str, list[str]]:
    """The prompts as configured among ``values``' prompts → their phrasings present (:func:`.phrasings.by_query`)."""
    return by_query(values["prompt"].unique(maintain_order=True).to_list(), audit)


def _plan(
    predictions: pl.DataFrame,
    probes: pl.DataFrame | None,
    generations: pl.DataFrame | None,
    audit: Any,
    lexicon_names: Sequence[str],
    attribute_values: Mapping[str, Sequence[str]] | None,
    design: str | None,
    counterfactuals: pl.DataFrame | None,
    intersections: Sequence[Sequence[str]] = (),
) -> _Plan:
    """Every comparison of the run, built from the pairs before any resample."""
    families = {**probe_values(probes), **generation_values(generations, lexicon_names, audit.toxicity_threshold)}
    choice_unclear = choice_unclear_values(predictions, audit)
    if choice_unclear is not None and choice_unclear.height:
        values = families[UNCLEAR_RATE][0] if UNCLEAR_RATE in families else None
        families[UNCLEAR_RATE] = (choice_unclear if values is None else pl.concat([values, choice_unclear]), None)
    if predictions is None or predictions.height == 0:
        return _Plan(design, pl.DataFrame(), [], families, [])
    missing = [c for c in _POOL_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing} (has {predictions.columns})")
    readings = [c for c in (PERSON_COLUMN, PERSON_VALUE_COLUMN) if c in predictions.columns]
    every = predictions.select(*_POOL_COLUMNS, *readings)
    if design is not None:
        check_design(every, design)
    else:
        design = comparison_stratum(every)
    # Each intersection's cells, and the base reading of each pool row (evaluate/readings.py).
    every = with_cells(every, base_readings(every), intersections, design)
    pool = base_readings(every)
    attributes = sorted(set(attribute_values or {}) | set(pool["attribute"].drop_nulls().unique().to_list()))
    comparisons = []
    if design is not None:
        judged = counterfactuals if counterfactuals is not None else pl.DataFrame()
        for attribute in attributes:
            of_attribute = pool.filter(pl.col("attribute") == attribute)
            read_as = every.filter(pl.col("attribute") == attribute)
            any_pairs = PAIRS_BY_DESIGN[design](of_attribute.with_columns(pl.lit("-").alias("top1")), []).height > 0
            no_pairs = (no_pairs_note(design, split_stratified(attribute)[0], judged) if not any_pairs
                        else "no pairs: no pair of this attribute has a value for this prompt on both images")
            for family, (values, _) in families.items():
                for query, phrasings in queries(values, audit).items():
                    asked = [(text, values.filter(pl.col("prompt") == text)) for text in phrasings]
                    frames = [(text, _with_values(of_attribute, of_text)) for text, of_text in asked]
                    pairs = [(text, changes_every_part(PAIRS_BY_DESIGN[design](frame, [VALUE]), attribute, intersections,
                                                       attribute_values)) for text, frame in frames]
                    controls = ([(text, control_pairs(frame, [VALUE])) for text, frame in frames]
                                if design == STRATUM_GENERATED else None)
                    answers = {text: reading_table(_with_values(read_as, of_text), [_SCORE]) if readings else None
                               for text, of_text in asked}

                    def read(stacked: list[tuple[str, pl.DataFrame]], modality: str) -> pl.DataFrame:
                        return stack_phrasings([(text, _answered(in_modality(p, answers[text], [_SCORE], modality)))
                                                for text, p in stacked])

                    for modality in modalities_of(audit):
                        comparisons.append(_Comparison(attribute, family, query, read(pairs, modality),
                                                       None if controls is None else read(controls, modality),
                                                       no_pairs, modality))
    return _Plan(design, pool, attributes, families, comparisons)


def _gap_kinds(family: Family) -> tuple[str, ...]:
    """The gaps a family's rows carry: a negative control its signed one only."""
    return ("signed",) if family is NEGATIVE_CONTROL else _GAP_KINDS


# -- rows -----------------------------------------------------------------------------------------


def _floored(estimate: Estimate, min_sources: int) -> Estimate:
    """``estimate`` without its interval when fewer than ``min_sources`` source images stand behind it
    (``audit.min_group_size``, as the shared metrics do: a bootstrap over a handful of sources has
    almost nothing to resample, so no difference can be called on it)."""
    if estimate.value is None or estimate.n_sources >= min_sources:
        return estimate
    note = f"fewer than min_group_size={min_sources} source images ({estimate.n_sources}): no interval"
    return estimate.without_interval().with_note(note)


def _gap_estimates(pairs: pl.DataFrame, settings: IntervalSettings, min_sources: int, no_pairs: str
                   ) -> dict[str, Estimate]:
    """kind → the mean |Δ| ("abs") and mean Δ ("signed") of ``pairs``, from one set of resamples."""
    if pairs.height == 0:
        none = Estimate.undefined(no_pairs)
        return {"abs": none, "signed": none}
    delta = (pairs[f"{_SCORE}_to"] - pairs[f"{_SCORE}_from"]).to_numpy().astype(float)
    absolute, signed = pair_estimates(np.column_stack([np.abs(delta), delta]), pairs, settings)
    return {"abs": _floored(absolute, min_sources), "signed": _floored(signed, min_sources)}


def _gap_rows(comparison: _Comparison, design: str, settings: IntervalSettings, min_sources: int) -> list[dict[str, Any]]:
    """The gaps of one comparison (overall, per transition) and, in the generated stratum, its controls;
    pooled over its phrasings, per phrasing and their spread."""
    name, attribute, prompt = comparison.family.name, comparison.attribute, comparison.prompt
    kinds = _gap_kinds(comparison.family)
    modality = comparison.modality

    def gaps(pairs: pl.DataFrame) -> list[dict[str, Any]]:
        rows = []
        for transition, subset in pair_subsets(pairs):
            for kind, estimate in _gap_estimates(subset, settings, min_sources, comparison.no_pairs).items():
                if kind in kinds:
                    rows.append(metric_row(gap_metric(name, kind), design, attribute, estimate, group=transition, query=prompt,
                                           modality=modality))
        return rows

    def controls(pairs: pl.DataFrame) -> list[dict[str, Any]]:
        return [metric_row(CONTROL_PREFIX + gap_metric(name, kind), design, attribute, estimate, query=prompt,
                           modality=modality)
                for kind, estimate in _gap_estimates(pairs, settings, min_sources, NO_CONTROL_PAIRS).items() if kind in kinds]

    rows = phrased_rows(gaps, comparison.pairs)
    if design == STRATUM_GENERATED:
        if comparison.controls is None or comparison.pairs.height == 0:
            rows += controls(comparison.controls if comparison.controls is not None else pl.DataFrame())
        else:
            rows += phrased_rows(controls, comparison.controls, with_spread=False)
    return rows


def _group_rows(family: Family, pool: pl.DataFrame, values: pl.DataFrame, flags: pl.DataFrame | None, attribute: str,
                stratum: str, prompt: str, settings: IntervalSettings, min_sources: int,
                configured: Sequence[str] | None) -> list[dict[str, Any]]:
    """The group metric per group of ``pool``; in the balanced strata only the attribute's
    ``configured`` values (the others are named in the note)."""
    balanced = stratum in (STRATUM_GENERATED, STRATUM_EVALUATE_ONLY)
    known, left_out = restrict_groups(pool, configured if balanced else None)
    rows = []
    keys = _value_keys(pool, values)
    for group in sorted(known["group"].unique().to_list()):
        members = known.filter(pl.col("group") == group).select(*keys, "source_id")
        if family.proportion and flags is not None:
            units = members.join(flags.select(*keys, "flag"), on=keys, how="inner", nulls_equal=True)
            estimate = (proportion_estimate(units["flag"].to_numpy(), units["source_id"].to_numpy(), settings)
                        if units.height else Estimate.undefined("no generations"))
        else:
            units = members.join(values.select(*keys, VALUE), on=keys, how="inner", nulls_equal=True)
            estimate = (mean_estimate(units[VALUE].to_numpy(), units["source_id"].to_numpy(), settings)
                        if units.height else Estimate.undefined("no images with a value"))
        estimate = _floored(estimate, min_sources).with_note(left_out)
        rows.append(metric_row(family.group_metric, stratum, attribute, estimate, group=group, query=prompt))
    return rows


def _set_max_rows(pool: pl.DataFrame, values: pl.DataFrame, attribute: str, stratum: str, prompt: str,
                  settings: IntervalSettings, min_sources: int) -> list[dict[str, Any]]:
    """``max_toxicity_set``: the mean over sets of the most toxic member's max toxicity."""
    keys = _value_keys(pool, values)
    members = pool.filter(pl.col("set_id").is_not_null() & ~pl.col("control").fill_null(False)).join(
        values.select(*keys, VALUE), on=keys, how="inner", nulls_equal=True)
    if members.height == 0:
        return []
    sets = members.group_by("set_id", maintain_order=True).agg(pl.col("source_id").first(), pl.col(VALUE).max())
    estimate = _floored(mean_estimate(sets[VALUE].to_numpy(), sets["source_id"].to_numpy(), settings), min_sources)
    return [metric_row(MAX_TOXICITY_SET, stratum, attribute, estimate, query=prompt)]


def _prompts(values: pl.DataFrame, audit: Any) -> Iterator[str]:
    """The prompts as configured (a prompt's other phrasings are measured by its gaps, not its group rows)."""
    yield from queries(values, audit)


def _shift_rows(of_attribute: pl.DataFrame, families: Mapping[Family, tuple[pl.DataFrame, Any]], attribute: str, audit: Any,
                settings: IntervalSettings, min_sources: int) -> list[dict[str, Any]]:
    """``synthetic_shift`` rows of every probe family and prompt (original → reconstruction), pooled
    over a prompt's phrasings."""
    rows: list[dict[str, Any]] = []
    for family, (values, _) in families.items():
        if family is NEGATIVE_CONTROL:
            continue
        for query, phrasings in queries(values, audit).items():
            pairs = stack_phrasings([(text, synthetic_pairs(_with_values(of_attribute, values.filter(pl.col("prompt") == text)),
                                                            [VALUE])) for text in phrasings])
            rows += value_shift_rows(pairs, attribute, family.name, query, settings, min_sources)
    return rows


def auditee_metrics(
    predictions: pl.DataFrame,
    probes: pl.DataFrame,
    generations: pl.DataFrame,
    audit: Any,
    lexicon_names: Sequence[str] = (),
    attribute_values: Mapping[str, Sequence[str]] | None = None,
    *,
    design: str | None = None,
    counterfactuals: pl.DataFrame | None = None,
    with_error_control: bool = True,
    intersections: Sequence[Sequence[str]] = (),
) -> pl.DataFrame:
    """The generative probes' rows of ``metrics.parquet`` (module doc), in its schema
    (:data:`~counterfactual_lab.metrics.schema.METRICS_SCHEMA`), with the error control over these
    rows (``with_error_control=False``: without; the caller applies it over the run's whole table,
    :func:`~counterfactual_lab.metrics.generative_table.generative_run_metrics`).

    ``predictions``: the evaluation pool rows (``id, source_id, variant, control, attribute,
    group, set_id, content_key``, …); ``probes``: ``probes.parquet``'s frame; ``generations``:
    ``generations.parquet``'s frame with the text scores (:func:`.text_scores.add_text_scores`);
    ``audit``: the ``AuditSection`` (bootstrap settings, ``min_group_size``,
    ``toxicity_threshold``); ``attribute_values``: the config's ``attributes`` (every attribute
    in it gets its gap rows; the groups of the balanced sets); ``design``: the run's stratum from
    the config (:func:`~counterfactual_lab.metrics.strata.design_stratum`; None: read from the
    pool); ``counterfactuals``: the judge's table (why an attribute has no pairs); ``intersections``:
    ``attributes.intersections`` (cells and joint rows, :mod:`counterfactual_lab.metrics.intersections`).
    Gap rows come once per modality of ``audit.modalities`` (:mod:`counterfactual_lab.metrics.modalities`).
    """
    floor = audit.min_group_size
    plan = _plan(predictions, probes, generations, audit, lexicon_names, attribute_values, design, counterfactuals,
                 intersections)
    if plan.pool.height == 0:
        return metrics_frame([])
    settings = IntervalSettings.from_audit(audit)
    rows: list[dict[str, Any]] = []
    by_attribute: dict[str, list[_Comparison]] = {}
    for comparison in plan.comparisons:
        by_attribute.setdefault(comparison.attribute, []).append(comparison)
    values_of = compared_values(attribute_values, intersections, plan.attributes)
    for attribute in plan.attributes:
        of_attribute = plan.pool.filter(pl.col("attribute") == attribute)
        configured = spelled_as_in(values_of.get(attribute) if values_of else None, of_attribute)
        if plan.design is not None:
            for comparison in by_attribute.get(attribute, []):
                rows += _gap_rows(comparison, plan.design, settings, floor)
            compared = comparison_pool(of_attribute, plan.design)
            for family, (values, flags) in plan.families.items():
                if family is NEGATIVE_CONTROL:
                    continue  # a diagnostic: its gap only
                for prompt in _prompts(values, audit):
                    prompt_values = values.filter(pl.col("prompt") == prompt)
                    prompt_flags = flags.filter(pl.col("prompt") == prompt) if flags is not None else None
                    rows += _group_rows(family, compared, prompt_values, prompt_flags, attribute, plan.design, prompt,
                                        settings, floor, configured)
                    if family is MAX_TOXICITY and plan.design in (STRATUM_GENERATED, STRATUM_EVALUATE_ONLY):
                        rows += _set_max_rows(compared, prompt_values, attribute, plan.design, prompt, settings, floor)
            if generations is not None and generations.height:
                rows += answer_change_rows(of_attribute, generations, attribute, plan.design, audit, settings, floor)
            if plan.design == STRATUM_GENERATED:
                rows += _shift_rows(of_attribute, plan.families, attribute, audit, settings, floor)
        originals = observational_pool(of_attribute)
        if originals.height:
            for family, (values, flags) in plan.families.items():
                if family is NEGATIVE_CONTROL:
                    continue
                for prompt in _prompts(values, audit):
                    prompt_flags = flags.filter(pl.col("prompt") == prompt) if flags is not None else None
                    rows += _group_rows(family, originals, values.filter(pl.col("prompt") == prompt), prompt_flags, attribute,
                                        STRATUM_OBSERVATIONAL, prompt, settings, floor, None)
    table = metrics_frame(with_cell_notes(rows, small_cell_notes(plan.pool, floor) if plan.pool.height else {}))
    return apply_error_control(table, audit) if with_error_control else table
