"""The run designs of an audit, each behind the same three stages.

A run audits one of three things, and :func:`design_for` says which from the config and the
dataset spec:

* :class:`ImageEdits`: edit each image of the dataset (plan → masks when the method reads them
  → generate and judge in rounds); the pool is the originals, the reconstructions and the kept
  counterfactuals;
* :class:`TextToImageSets`: make counterfactual sets from text (caption templates, or the
  dataset's captions), judge each set as a whole, publish the kept sets as a dataset, and
  evaluate that dataset as an evaluate-only run would;
* :class:`EvaluateOnly`: the dataset already holds counterfactual sets; nothing is generated.

Every design answers ``validate(run)`` (ingest and validate, or the templates),
``generate(run, outcome)`` (what the judge kept, as a :class:`Generated`) and
``evaluation_pool(run, outcome, generated)`` (the images the model under audit answers for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.intersections import joint_name
from counterfactual_lab.config.methods import METHODS, check_mask_spec
from counterfactual_lab.evaluate.pool import (
    build_evaluation_pool,
    pool_from_counterfactual_sets,
)
from counterfactual_lab.flows.fan_out import generate_and_judge
from counterfactual_lab.flows.stage_run import StageRun
from counterfactual_lab.generation.records import generation_counts
from counterfactual_lab.generation.text2image_sets import (
    SetTemplate,
    plan_member_sets,
    publish_sets,
    template_outcome,
    templates_from_captions,
    templates_from_config,
)
from counterfactual_lab.ingest.validation import ValidationOutcome
from counterfactual_lab.judge.drift import empty_drift
from counterfactual_lab.models.devices import generation_precision
from counterfactual_lab.plan.masks import attach_masks
from counterfactual_lab.plan.work_items import plan_work_items
from counterfactual_lab.tasks.masks import prepare_inpainting_masks
from counterfactual_lab.tasks.runners import with_runtime_retries


@dataclass
class Generated:
    """What generation left for the rest of the run.

    ``candidates``: every judged candidate (``counterfactuals.parquet``); ``judged``: what the
    metrics read as the judge's output (empty when the evaluated data are sets, whose members
    were judged against each other); ``records``/``counts``: the generation records and the
    manifest's ``generation_counts``; ``quarantine``: the run's quarantined rows; ``drift``: the
    judge's off-target drift readings (``drift.parquet``; empty where sets have no reconstruction).
    """

    candidates: pl.DataFrame
    judged: pl.DataFrame
    records: list[Any]
    counts: dict[str, int]
    quarantine: pl.DataFrame
    drift: pl.DataFrame = field(default_factory=empty_drift)


class ImageEdits:
    """Edit each valid row: plan, masks when the method edits inside them, generate and judge."""

    evaluate_only = False

    def validate(self, run: StageRun) -> ValidationOutcome:
        return run.publish_validation(run.validate(run.location.spec))

    def generate(self, run: StageRun, outcome: ValidationOutcome) -> Generated:
        config = run.config
        precision = generation_precision(config.generation.method, run.device)  # device, dtype, versions change pixels
        items = plan_work_items(outcome.valid, config, run.location.spec, generator_identity=run.generator_key,
                                precision=precision)
        never_generated: dict[str, str] = {}
        if METHODS[config.generation.method].reads_mask:  # each item edits inside its source's mask
            segmenter = run.location.models.get("segmenter")
            masks = with_runtime_retries(prepare_inpainting_masks, config)(
                outcome.valid, check_mask_spec(config.generation.params.get("mask")), run.location.spec, run.store,
                segmenter_key=segmenter.key if segmenter else None, device=run.device,
            )
            items, never_generated = attach_masks(items, masks)
        records, candidates, counts, drift = generate_and_judge(items, run, never_generated)
        return Generated(candidates, candidates, records, counts, outcome.quarantine, drift)

    def evaluation_pool(self, run: StageRun, outcome: ValidationOutcome, generated: Generated) -> pl.DataFrame:
        return build_evaluation_pool(outcome.valid, generated.candidates, compared_attributes(run.config))


class TextToImageSets:
    """Counterfactual sets made from text: generated and judged as sets, published as a dataset,
    and that dataset evaluated as evaluate-only data are."""

    evaluate_only = True

    def __init__(self) -> None:
        self.templates: list[SetTemplate] | None = None  # from the config; else from the captions
        self.sets_spec: Any = None  # the kept sets, published as a dataset
        self.sets: ValidationOutcome | None = None  # ... and read back, when the run evaluates

    def validate(self, run: StageRun) -> ValidationOutcome:
        if run.config.prompts_from_templates():  # no dataset: each template is a row
            self.templates = templates_from_config(run.config, run.location.spec)
            outcome = template_outcome(self.templates)
        else:
            outcome = run.validate(run.location.spec)
        return run.publish_validation(outcome)

    def generate(self, run: StageRun, outcome: ValidationOutcome) -> Generated:
        config, spec = run.config, run.location.spec
        templates = self.templates or templates_from_captions(outcome.valid, config, spec)
        items = plan_member_sets(templates, config, generator_identity=run.generator_key,
                                 precision=generation_precision(config.generation.method, run.device))
        records, candidates, counts, _ = generate_and_judge(items, run)  # sets without a reconstruction: no drift
        self.sets_spec = publish_sets(
            candidates, run.store, run.publisher.run_uri, name=f"{run.location.run_id}-sets",
            vocabularies=run.vocabulary, templates={t.source_id: t.template for t in templates},
            labels={t.source_id: t.label for t in templates}, storage_options=run.location.storage_options,
        )
        kept = candidates.filter(pl.col("kept")).height if candidates.height else 0
        run.logger.info("run %s: %d kept set member(s) published as a dataset at %s", run.location.run_id, kept,
                        self.sets_spec.uri)
        quarantine = outcome.quarantine
        if run.evaluate:  # the published sets, read back as the evaluate-only path reads data
            self.sets = run.validate(self.sets_spec)
            quarantine = pl.concat([quarantine, self.sets.quarantine], how="vertical_relaxed")
        return Generated(candidates, pl.DataFrame(), records, counts, quarantine)

    def evaluation_pool(self, run: StageRun, outcome: ValidationOutcome, generated: Generated) -> pl.DataFrame:
        return pool_from_counterfactual_sets(self.sets.valid, list(run.config.attributes),
                                             intersections=run.config.intersections)


class EvaluateOnly:
    """The dataset already holds counterfactual sets: nothing is generated or judged."""

    evaluate_only = True

    def validate(self, run: StageRun) -> ValidationOutcome:
        return run.publish_validation(run.validate(run.location.spec))

    def generate(self, run: StageRun, outcome: ValidationOutcome) -> Generated:
        return Generated(pl.DataFrame(), pl.DataFrame(), [], generation_counts([]), outcome.quarantine)

    def evaluation_pool(self, run: StageRun, outcome: ValidationOutcome, generated: Generated) -> pl.DataFrame:
        return pool_from_counterfactual_sets(outcome.valid, list(run.config.attributes),
                                             intersections=run.config.intersections)


def compared_attributes(config: AuditConfig) -> list[str]:
    """The attributes an image-edit run compares: the config's, then each intersection's joint attribute
    where the method makes joint edits (``config/methods.py``'s ``joint_edits``)."""
    joint = [joint_name(names) for names in config.intersections] if METHODS[config.generation.method].joint_edits else []
    return [*config.attributes, *joint]


def design_for(config: AuditConfig, spec: Any) -> ImageEdits | TextToImageSets | EvaluateOnly:
    """The design of a run of ``config`` over the dataset of ``spec``."""
    if spec.columns.counterfactual_set:
        return EvaluateOnly()
    if not METHODS[config.generation.method].reads_source:
        return TextToImageSets()
    return ImageEdits()
