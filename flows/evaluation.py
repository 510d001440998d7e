"""The evaluate and metrics stages, one object per kind of model under audit.

:class:`ContrastiveEvaluation` (CLIP, SigLIP: zero-shot labels and retrieval) and
:class:`GenerativeEvaluation` (chat VLMs and captioners: probes and generations, every answer
through the output store's cache) both answer ``evaluate(run, pool)`` (the model's answers on
the pool, fanned out in chunks), ``tables(run, answers, evaluate_only)`` (the run's tables of
answers) and ``metrics(run, answers, judged, evaluate_only, drift)`` (the metrics table), and say
``auditee_counts(answers)`` (the manifest's ``counts.auditee``; None for a contrastive model).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import polars as pl
from prefect import unmapped
from tqdm.auto import tqdm

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.evaluate.auditees import AuditeeAnswers, resolve_kind
from counterfactual_lab.evaluate.auditees.answer_cache import AnswerCache
from counterfactual_lab.evaluate.auditees.kinds import GENERATIVE_KINDS
from counterfactual_lab.evaluate.auditees.lexicon import load_lexicon
from counterfactual_lab.evaluate.auditees.text_scores import add_text_scores
from counterfactual_lab.evaluate.auditees.vlm import answers_per_image
from counterfactual_lab.flows.stage_run import StageRun
from counterfactual_lab.flows.task_sizes import items_per_task
from counterfactual_lab.tasks.evaluate import (
    compute_auditee_metrics,
    compute_fairness_metrics,
    evaluate_auditee_batch,
    evaluate_batch,
    rank_retrieval,
)
from counterfactual_lab.tasks.runners import with_runtime_retries

# The fewest pool rows an evaluation task of a contrastive model holds (its embeddings are cached:
# a small chunk is almost all orchestration).
EVALUATION_CHUNK_IMAGES = 256
# The fewest answers one task of a generative model asks for: each task writes one answer shard,
# so this bounds the answer cache's objects per answer (at most 1 per 200, plus one index object).
SHARD_MIN_ANSWERS = 200


class ContrastiveEvaluation:
    """A contrastive model under audit: the pool in tasks sized by ``runtime.tasks_per_worker``, then the metrics."""

    def evaluate(self, run: StageRun, pool: pl.DataFrame) -> AuditeeAnswers:
        """The pool's ``predictions`` (zero-shot labels) and ``retrieval`` scores (per query and image)."""
        config = run.config
        size = items_per_task(pool.height, config.audit.batch_size, config.runtime, minimum=EVALUATION_CHUNK_IMAGES)
        chunks = [pool.slice(i, size) for i in range(0, pool.height, size)] or [pool]
        futures = with_runtime_retries(evaluate_batch, config).map(
            chunks, unmapped(config.audit), unmapped(run.store), unmapped(run.device))
        results = []
        with tqdm(total=pool.height, desc="evaluate", unit="img") as bar:
            for images, future in zip(chunks, futures):
                results.append(future.result())
                bar.update(images.height)
        return AuditeeAnswers(predictions=pl.concat([p for p, _ in results], how="diagonal_relaxed"),
                              retrieval=pl.concat([r for _, r in results], how="diagonal_relaxed"))

    def metrics(self, run: StageRun, answers: AuditeeAnswers, judged: pl.DataFrame, evaluate_only: bool,
                drift: pl.DataFrame | None = None) -> pl.DataFrame:
        config = run.config
        return compute_fairness_metrics(answers.predictions, answers.retrieval, judged, config.audit,
                                        config.attributes, config.generation.reconstruction, evaluate_only,
                                        drift=drift, max_drift=config.judge.max_drift, intersections=config.intersections)

    def tables(self, run: StageRun, answers: AuditeeAnswers, evaluate_only: bool) -> dict[str, pl.DataFrame]:
        """The run's tables of answers: ``predictions`` and ``retrieval`` (every ranking the metrics
        measure skew and NDKL on, with each image's score, rank and group: recomputable without the model)."""
        config = run.config
        return {"predictions": answers.predictions,
                "retrieval": rank_retrieval(answers.predictions, answers.retrieval, config.audit, config.attributes,
                                            config.generation.reconstruction, evaluate_only,
                                            intersections=config.intersections)}

    def auditee_counts(self, answers: AuditeeAnswers) -> dict[str, int] | None:
        return None  # a contrastive model's embeddings are cached in memory only


class GenerativeEvaluation:
    """A generative model under audit: the distinct images in tasks sized by ``runtime.tasks_per_worker``
    (each a whole number of ``audit.batch_size`` batches, with at least :data:`SHARD_MIN_ANSWERS`
    answers), every answer through the output store's answer cache, then the probe metrics.

    The cache's index is read once here: each task gets the shards that may hold its images'
    answers, writes one shard of what it computed, and the run writes one index segment for them.
    """

    def evaluate(self, run: StageRun, pool: pl.DataFrame) -> AuditeeAnswers:
        """Every probe's answers on the pool (predictions, probes, generations with their text scores)."""
        config, audit = run.config, run.config.audit
        keys = pool["content_key"].unique(maintain_order=True).to_list()
        minimum = math.ceil(SHARD_MIN_ANSWERS / max(1, answers_per_image(audit)))
        size = items_per_task(len(keys), audit.batch_size, config.runtime, minimum=minimum)
        groups = [keys[i : i + size] for i in range(0, len(keys), size)]
        chunks = [pool.filter(pl.col("content_key").is_in(group)) for group in groups] or [pool]
        cache = AnswerCache(run.store.root_uri, run.store.storage_options)
        index = cache.read_index()
        text_models = {role: (model.key if model else None) for role in ("toxicity", "sentiment", "text_embedder")
                       for model in [run.location.models.get(role)]}
        futures = with_runtime_retries(evaluate_auditee_batch, config).map(
            chunks, unmapped(audit), unmapped(run.store), unmapped(run.device), kind=unmapped(resolve_kind(audit)),
            model_key=unmapped(run.location.models["audit"].key),
            toxicity_key=unmapped(text_models["toxicity"]), sentiment_key=unmapped(text_models["sentiment"]),
            text_embedder_key=unmapped(text_models["text_embedder"]),
            cache_shards=[index.shards_for(group) for group in groups or [[]]],
        )
        results = []
        with tqdm(total=len(keys), desc="evaluate", unit="img") as bar:
            for group, future in zip(groups or [[]], futures):
                results.append(future.result())
                bar.update(len(group))
        answers = AuditeeAnswers.concat(results)
        cache.write_index(answers.cache_shards, index)
        if answers.counts is not None:
            answers.counts["objects_written"] += cache.counts.objects_written
        self.lexicon = load_lexicon(audit.lexicon, config.base_dir)
        return replace(answers, generations=add_text_scores(answers.generations, self.lexicon))

    def metrics(self, run: StageRun, answers: AuditeeAnswers, judged: pl.DataFrame, evaluate_only: bool,
                drift: pl.DataFrame | None = None) -> pl.DataFrame:
        """The choice probe's shared rows, the probe gaps and the confound diagnostics, one family; the
        design from the config."""
        config = run.config
        return compute_auditee_metrics(answers.predictions, answers.probes, answers.generations, judged, config.audit,
                                       self.lexicon.names, config.attributes, config.generation.reconstruction,
                                       evaluate_only, drift=drift, max_drift=config.judge.max_drift,
                                       intersections=config.intersections)

    def tables(self, run: StageRun, answers: AuditeeAnswers, evaluate_only: bool) -> dict[str, pl.DataFrame]:
        return {"predictions": answers.predictions, "probes": answers.probes, "generations": answers.generations}

    def auditee_counts(self, answers: AuditeeAnswers) -> dict[str, int] | None:
        return answers.counts or {"computed": 0, "cached": 0, "objects_written": 0}


def evaluation_for(config: AuditConfig) -> Any:
    """The evaluation of ``config``'s kind of model under audit."""
    return GenerativeEvaluation() if resolve_kind(config.audit) in GENERATIVE_KINDS else ContrastiveEvaluation()
