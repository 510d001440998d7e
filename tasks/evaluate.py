"""Run the model under audit on a chunk of the evaluation pool; compute the metrics."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from counterfactual_lab.config.audit_config import AuditSection, DriftThresholds
from counterfactual_lab.evaluate.auditees import load_auditee
from counterfactual_lab.evaluate.auditees.kinds import CONTRASTIVE
from counterfactual_lab.metrics import compute_metrics, retrieval_table
from counterfactual_lab.metrics.generative_table import generative_run_metrics
from counterfactual_lab.metrics.strata import design_stratum
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.retry import RETRY_OPTIONS


# Nothing stored (frames would be pickled; a stored pickle is code, see tasks/result_serialization.py).
@task(name="evaluate-batch", tags=["gpu"], cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def evaluate_batch(
    images: pl.DataFrame, audit: AuditSection, store: ImageStore, device: str = "auto"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(predictions, retrieval scores) of the contrastive model under audit for one chunk of images,
    through its auditee adapter (``counterfactual_lab.evaluate.auditees.contrastive``: the same ``predict`` and
    ``retrieval_scores`` with the process-wide embedder), so both kinds of model go through one interface."""
    answers = load_auditee(audit, device, kind=CONTRASTIVE).answer(images, store.load)
    return answers.predictions, answers.retrieval


@task(name="compute-metrics", cache_policy=NO_CACHE, persist_result=False)
def compute_fairness_metrics(
    predictions: pl.DataFrame,
    retrieval: pl.DataFrame,
    counterfactuals: pl.DataFrame,
    audit: AuditSection,
    attribute_values: dict[str, list[str]] | None = None,
    reconstruction: bool | None = None,
    evaluate_only: bool = False,
    *,
    drift: pl.DataFrame | None = None,
    max_drift: DriftThresholds | None = None,
    intersections: list[list[str]] | None = None,
) -> pl.DataFrame:
    """The metrics table; ``attribute_values`` is the config's ``attributes`` (the values of each attribute);
    ``reconstruction`` (``generation.reconstruction``) and ``evaluate_only`` give the run's design (None: read
    from the pool); ``drift``/``max_drift``: the judge's drift readings and ``judge.max_drift``;
    ``intersections``: ``attributes.intersections``."""
    design = None if reconstruction is None else design_stratum(reconstruction, evaluate_only)
    return compute_metrics(predictions, retrieval, counterfactuals, audit, attribute_values, design=design,
                           drift=drift, max_drift=max_drift, intersections=intersections or [])


@task(name="rank-retrieval", cache_policy=NO_CACHE, persist_result=False)
def rank_retrieval(
    predictions: pl.DataFrame,
    retrieval: pl.DataFrame,
    audit: AuditSection,
    attribute_values: dict[str, list[str]] | None = None,
    reconstruction: bool | None = None,
    evaluate_only: bool = False,
    intersections: list[list[str]] | None = None,
) -> pl.DataFrame:
    """``retrieval.parquet``: the rankings :func:`compute_fairness_metrics` measures skew and NDKL on
    (the same arguments), one row per query, stratum, attribute and image."""
    design = None if reconstruction is None else design_stratum(reconstruction, evaluate_only)
    return retrieval_table(predictions, retrieval, audit, attribute_values, design=design, intersections=intersections or [])


# -- generative models under audit (counterfactual_lab/auditees) -------------------------------
# Answers live in the output store's answer cache (JSON), so nothing is stored by Prefect here.
@task(name="evaluate-auditee-batch", tags=["gpu"], cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def evaluate_auditee_batch(
    images: pl.DataFrame, audit: AuditSection, store: ImageStore, device: str = "auto", *,
    kind: str, model_key: str, toxicity_key: str | None = None, sentiment_key: str | None = None,
    text_embedder_key: str | None = None, cache_shards: list[str] | None = None,
):
    """Every configured probe of a generative model under audit on one chunk of the pool
    (``AuditeeAnswers``); the model loads once per worker, every answer is cached under ``store``
    (``cache_shards``: the answer shards that may hold these images' answers, from the flow's index)."""
    auditee = load_auditee(
        audit, device, kind=kind, model_key=model_key, toxicity_key=toxicity_key, sentiment_key=sentiment_key,
        text_embedder_key=text_embedder_key, cache_root=store.root_uri, storage_options=store.storage_options,
    )
    return auditee.answer(images, store.load, cache_shards=cache_shards)


@task(name="compute-auditee-metrics", cache_policy=NO_CACHE, persist_result=False)
def compute_auditee_metrics(
    predictions: pl.DataFrame,
    probes: pl.DataFrame,
    generations: pl.DataFrame,
    counterfactuals: pl.DataFrame,
    audit: AuditSection,
    lexicon_names: list[str],
    attribute_values: dict[str, list[str]] | None = None,
    reconstruction: bool | None = None,
    evaluate_only: bool = False,
    *,
    drift: pl.DataFrame | None = None,
    max_drift: DriftThresholds | None = None,
    intersections: list[list[str]] | None = None,
) -> pl.DataFrame:
    """The metrics table of a generative model under audit: the choice probe's shared rows, the
    probe gaps and the diagnostics, one family (``counterfactual_lab.metrics.generative_table``); the
    design and drift as :func:`compute_fairness_metrics` takes them."""

    design = None if reconstruction is None else design_stratum(reconstruction, evaluate_only)
    return generative_run_metrics(predictions, probes, generations, counterfactuals, audit, lexicon_names,
                                  attribute_values, design=design, drift=drift, max_drift=max_drift,
                                  intersections=intersections or [])
