"""The dataset audit: ingest → validate → plan → generate → judge → evaluate → publish.

``dataset_audit`` takes plain parameters (a config path, optional dataset and output URIs)
so the Prefect UI, a schedule or an event trigger can start it. The stages run as tasks on
the task runner the config names (threads on one machine, Ray beyond it); generation fans
out one task per batch of work items, cached by the items' content keys.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (applies the offline Prefect defaults before Prefect loads)

import polars as pl
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from tqdm.auto import tqdm

from counterfactual_lab.audit_run import (
    as_cache_hits,
    generation_counts,
    RunLocation,
    locate_run,
    publish_run,
    row_accounting,
)
from counterfactual_lab.auditees import AuditeeAnswers, resolve_kind
from counterfactual_lab.auditees.kinds import GENERATIVE_KINDS
from counterfactual_lab.auditees.lexicon import load_lexicon
from counterfactual_lab.auditees.text_scores import add_text_scores
from counterfactual_lab.config import AuditConfig
from counterfactual_lab.devices import generation_precision
from counterfactual_lab.embeddings import reserve_embedding_cache
from counterfactual_lab.errors import DataOverLimit, TooManyFailedItems
from counterfactual_lab.evaluate import build_evaluation_pool, pool_from_counterfactual_sets
from counterfactual_lab.findings import headline_table, summary_markdown
from counterfactual_lab.metrics import METRICS_SCHEMA
from counterfactual_lab.masks import attach_masks
from counterfactual_lab.method_params import MASKED_METHODS, SOURCELESS_METHODS, check_mask_spec
from counterfactual_lab.plan import chunk, plan_work_items
from counterfactual_lab.rounds import run_rounds
from counterfactual_lab.text2image_sets import (
    chunk_sets,
    plan_member_sets,
    publish_sets,
    template_outcome,
    templates_from_captions,
    templates_from_config,
)
from counterfactual_lab.preflight import check_audit
from counterfactual_lab.publish import REPORT_NAME, RunPublisher, is_complete
from counterfactual_lab.run_failure import count_failed_items
from counterfactual_lab.storage import ImageStore, join
from counterfactual_lab.validation import write_validation_outputs
from tasks.evaluate import compute_auditee_metrics, compute_fairness_metrics, evaluate_auditee_batch, evaluate_batch
from tasks.generate import generation_task_for
from tasks.judge import judge_counterfactuals
from tasks.masks import prepare_inpainting_masks
from tasks.runners import GPU_TAG, make_task_runner, picklable_quote
from tasks.validate import validate_dataset
from flows.secrets import mask_secrets_in_logs, resolve_secret_blocks

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "audit.yaml")
CATALOGUE_DIR = str(REPO_ROOT / "datasets")
EVALUATION_CHUNK_IMAGES = 256
PROGRESS_UPDATE_SECONDS = 2.0


@flow(name="dataset-audit", log_prints=True, persist_result=False)
def dataset_audit(
    config_uri: str = DEFAULT_CONFIG,
    dataset_uri: str | None = None,
    output_uri: str | None = None,
    evaluate: bool = True,
    force: bool = False,
) -> str:
    """Audit one dataset; returns the URI of the run folder (``OUT/<run_id>``).

    ``dataset_uri`` overrides the config's dataset (an event-triggered run passes the new
    dataset here); ``output_uri`` overrides ``output.uri``; ``evaluate=False`` stops after
    the judge (``cflab generate``). The run id hashes the config's stages, the models' and the
    dataset's content (``audit_run.run_identity``) and the library version, so a complete run
    with the same id already holds this audit's answer: it is returned as it is unless
    ``force`` (a scheduled audit of unchanged data costs a listing and a stat per file).
    ``force`` first marks the old run incomplete, then runs every stage again; cached images
    are still reused.

    The parameters are plain strings: credentials never travel as flow-run parameters. The
    whole config is checked (:func:`~counterfactual_lab.preflight.check_audit`) before any
    data is listed or any run folder is made; Secret blocks the config names are resolved here.
    """
    config = AuditConfig.from_yaml(config_uri)
    spec = check_audit(config, dataset_uri, evaluate=evaluate)
    config, spec = resolve_secret_blocks(config, spec)
    mask_secrets_in_logs(config, spec)
    location = locate_run(config, dataset_uri, output_uri, evaluate, spec=spec)
    if not force and is_complete(location.run_uri, location.storage_options):
        get_run_logger().info(
            "run %s is already complete (same config and data); report: %s",
            location.run_id, join(location.run_uri, REPORT_NAME),
        )
        return location.run_uri
    runner = make_task_runner(config.runtime)
    return audit_stages.with_options(task_runner=runner)(config, location, evaluate)


@flow(name="audit-stages", log_prints=True, persist_result=False)
def audit_stages(config: AuditConfig, location: RunLocation, evaluate: bool) -> str:
    """The stages of one run. ``config`` and ``location`` may hold credentials (inline
    ``storage_options`` or resolved Secret blocks); Prefect stores their JSON dumps as this
    subflow's parameters, and those are redacted (``RedactedInJson``), so no credential
    reaches the Prefect database."""
    logger = get_run_logger()
    started_at = datetime.now(timezone.utc)
    spec, options, run_id = location.spec, location.storage_options, location.run_id
    store = ImageStore(location.out_uri, options)
    device = config.runtime.device
    publisher = RunPublisher(location.out_uri, run_id, spec.name, options)
    logger.info("run %s: dataset %s -> %s", run_id, spec.uri, publisher.run_uri)
    # Before anything in the run folder is rewritten (validation outputs come first): a manifest
    # of an earlier run of this id must not vouch for the files this run is about to replace.
    if publisher.mark_incomplete():
        logger.info("run %s: the earlier manifest was removed; the run is incomplete until it is published again", run_id)

    set_templates = templates_from_config(config, spec) if config.prompts_from_templates() else None
    if set_templates is not None:  # text2image-sets from templates: no dataset; each template is a row
        outcome = template_outcome(set_templates)
    else:
        outcome = with_runtime_retries(validate_dataset, config)(spec, store, config.runtime.ingest_batch_rows)
    write_validation_outputs(outcome, publisher.run_uri, options)
    if outcome.quarantined_fraction > config.runtime.max_invalid_fraction:
        raise DataOverLimit(
            f"{outcome.quarantined} of {outcome.rows_in} rows ({outcome.quarantined_fraction:.1%}) were quarantined, "
            f"over runtime.max_invalid_fraction={config.runtime.max_invalid_fraction:.1%}; "
            f"see {publisher.run_uri}/quarantine.parquet"
        )
    attributes = list(config.attributes)
    vocabulary = {attribute: spec.vocabulary(attribute) for attribute in attributes}

    method = config.generation.method
    generator = location.models["generator"].key if "generator" in location.models else None
    precision = generation_precision(method, device)  # device type, dtype, versions: they change pixels
    quarantine = outcome.quarantine
    # What the metrics read as the judge's output: none for data that already are counterfactual sets.
    judged_for_metrics: pl.DataFrame | None = None
    if spec.columns.counterfactual_set:
        # Evaluate-only: the dataset already holds counterfactual sets.
        counterfactuals = pl.DataFrame()
        records: list = []
        counts = generation_counts(records)
        pool = pool_from_counterfactual_sets(outcome.valid, attributes)
    elif method in SOURCELESS_METHODS:
        # Text-to-image sets: generate and judge them, publish them as a dataset, evaluate that dataset.
        if set_templates is None:
            set_templates = templates_from_captions(outcome.valid, config, spec)
        items = plan_member_sets(set_templates, config, generator_identity=generator, precision=precision)
        records, counterfactuals, counts = _generate_and_judge(items, config, store, device, vocabulary)
        sets_spec = publish_sets(
            counterfactuals, store, publisher.run_uri, name=f"{run_id}-sets",
            vocabularies={a: spec.vocabulary(a) for a in attributes},
            templates={t.source_id: t.template for t in set_templates},
            labels={t.source_id: t.label for t in set_templates}, storage_options=options,
        )
        logger.info("run %s: %d kept set member(s) published as a dataset at %s", run_id,
                    counterfactuals.filter(pl.col("kept")).height if counterfactuals.height else 0, sets_spec.uri)
        judged_for_metrics = pl.DataFrame()
        pool = pl.DataFrame()
        if evaluate:  # the evaluate-only path, on the sets as published
            sets = with_runtime_retries(validate_dataset, config)(sets_spec, store, config.runtime.ingest_batch_rows)
            quarantine = pl.concat([quarantine, sets.quarantine], how="vertical_relaxed")
            pool = pool_from_counterfactual_sets(sets.valid, attributes)
    else:
        items = plan_work_items(outcome.valid, config, spec, generator_identity=generator, precision=precision)
        never_generated: dict[str, str] = {}
        if method in MASKED_METHODS:  # each item edits inside its source's mask
            masks = with_runtime_retries(prepare_inpainting_masks, config)(
                outcome.valid, check_mask_spec(config.generation.params.get("mask")), spec, store,
                segmenter_key=location.models["segmenter"].key if "segmenter" in location.models else None,
                device=device,
            )
            items, never_generated = attach_masks(items, masks)
        records, counterfactuals, counts = _generate_and_judge(items, config, store, device, vocabulary, never_generated)
        pool = build_evaluation_pool(outcome.valid, counterfactuals, attributes)

    tables = {"counterfactuals": counterfactuals, "quarantine": quarantine}
    judged = counterfactuals if judged_for_metrics is None else judged_for_metrics
    # Evaluated as counterfactual sets: a dataset of them, or the text-to-image sets this run made.
    evaluate_only = bool(spec.columns.counterfactual_set) or method in SOURCELESS_METHODS
    auditee_counts = None
    if evaluate and resolve_kind(config.audit) in GENERATIVE_KINDS:
        generative_tables, auditee_counts = _evaluate_generative(pool, config, store, device, location, judged, evaluate_only)
        tables.update(generative_tables)
    elif evaluate:
        predictions, retrieval = _evaluate(pool, config, store, device)
        tables["predictions"] = predictions
        tables["metrics"] = compute_fairness_metrics(predictions, retrieval, judged, config.audit, config.attributes,
                                                     config.generation.reconstruction, evaluate_only)

    # More failed work items than runtime.max_failed_fraction: publish what there is, marked failed.
    # Counted over the candidate rows (work items, as row_accounting counts them), not the
    # records: a shared image that failed fails every item that needed it.
    failed_items = count_failed_items(counterfactuals, config.runtime.max_failed_fraction)
    failure = failed_items.manifest_entry() if failed_items.over_limit else None
    accounting = row_accounting(outcome.rows_in, outcome.valid.height, outcome.quarantined, counterfactuals)
    manifest = publish_run(
        publisher=publisher,
        config=config,
        location=location,
        tables=tables,
        accounting=accounting,
        counts=counts,
        started_at=started_at,
        finished_at=datetime.now(timezone.utc),
        load_image=store.load,
        failure=failure,
        auditee_counts=auditee_counts,
    )
    # A generate-only run has no metrics: an empty table with the columns, not a frame without any.
    _publish_artifacts(manifest, tables.get("metrics", pl.DataFrame(schema=METRICS_SCHEMA)))
    logger.info("report: %s", manifest["report"])
    if failure:
        raise TooManyFailedItems(failed_items.message(publisher.run_uri))
    return publisher.run_uri


def with_runtime_retries(task: Any, config: AuditConfig) -> Any:
    """``task`` with the config's retry count and backoff base (``runtime.retries``,
    ``runtime.retry_delay_seconds``); the transient-only condition and jitter stay.

    A ``gpu``-tagged task keeps its tag only where an accelerator may be used (a CUDA or MPS
    device, or Ray, whose runner asks for GPUs by the tag): there the tag's concurrency limit
    caps GPU work across flow runs. A CPU run on threads has no GPU to share, and each tagged
    task run costs 15–40 ms of concurrency-slot bookkeeping on 2 cores (bench/scale.py), so it drops it.
    """
    runtime = config.runtime
    options: dict[str, Any] = {
        "retries": runtime.retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=runtime.retry_delay_seconds),
    }
    if GPU_TAG in task.tags and not _may_use_accelerator(config):
        options["tags"] = set(task.tags) - {GPU_TAG}
    return task.with_options(**options)


def _may_use_accelerator(config: AuditConfig) -> bool:
    from counterfactual_lab.devices import resolve_device

    return config.runtime.task_runner == "ray" or resolve_device(config.runtime.device) != "cpu"


def _generate_and_judge(
    items: list, config: AuditConfig, store: ImageStore, device: str, vocabulary: dict[str, list[str]],
    never_generated: dict[str, str] | None = None,
) -> tuple[list, pl.DataFrame, dict[str, int]]:
    """Generate and judge in rounds of seeds (``counterfactual_lab.rounds.run_rounds``): each round
    fans out one generation task per batch, then one judge task scores everything so far. Returns
    (records, the judged candidates, the generation counts with ``calls``/``calls_fixed``/``rounds``)."""
    judge = with_runtime_retries(judge_counterfactuals, config)
    # Room for every image and caption this process embeds (judge, then evaluation), so the model
    # under audit reuses the judge's embeddings instead of re-embedding what an LRU evicted.
    reserve_embedding_cache(4 * len(items) + 1024)
    outcome = run_rounds(
        items, config.generation,
        generate=lambda batch: _generate(batch, config, store, device),
        judge=lambda candidates: judge(candidates, config.judge, store, keep_per_target=config.generation.keep_per_target,
                                       vocabulary=vocabulary, device=device),
        never_generated=never_generated,
    )
    counts = outcome.counts(items, never_generated or {})
    if config.generation.adaptive and counts["calls"] < counts["calls_fixed"]:
        get_run_logger().info("adaptive over-generation: %d round(s), %d of the %d images a fixed plan asks for",
                              outcome.rounds, counts["calls"], counts["calls_fixed"])
    return outcome.records, outcome.judged, counts


def _generate(items: list, config: AuditConfig, store: ImageStore, device: str) -> list:
    """Fan out one generation task per batch; progress in the terminal and in a Prefect artifact.

    Each batch runs under its writer lock in the output store (``tasks.generate.generation_task_for``):
    an audit that reaches a batch another audit is making waits, then reads it from the cache.
    A batch served by Prefect's task cache counts as cache hits. Such a batch runs again past
    the cache when it recorded a failure (the cache must not make a failure permanent) or
    points at images no longer in the store (an output folder removed, an S3 lifecycle rule);
    ``generate_batch`` then makes only the images that are missing.
    """
    # Members of a text-to-image set share latents and attention: one task makes the whole set.
    split = chunk_sets if config.generation.method in SOURCELESS_METHODS else chunk
    # quote: without it Prefect walks every field of every work item of a batch, twice per task
    # run, looking for futures (21 ms per batch of 64 items, more than the rest of a task's overhead).
    batches = [picklable_quote(batch) for batch in split(items, config.generation.batch_size)]
    if not batches:
        return []
    progress_id = create_progress_artifact(progress=0.0, description=f"generation: {len(items)} work items")
    # On Ray, the runner gives each `gpu`-tagged batch a GPU (tasks/runners.py).
    generate = with_runtime_retries(generation_task_for(store), config)
    futures = generate.map(batches, unmapped(config.generation), unmapped(store), unmapped(device))
    index_of = {future.task_run_id: index for index, future in enumerate(futures)}
    results: list[list] = [[] for _ in batches]
    from_task_cache: list[int] = []
    last_update = time.monotonic()
    with tqdm(total=len(items), desc="generate", unit="img") as bar:
        for done, future in enumerate(as_completed(futures), start=1):
            index = index_of[future.task_run_id]
            results[index] = future.result()
            if future.state.name == "Cached":  # an earlier run made these images
                results[index] = as_cache_hits(results[index])
                from_task_cache.append(index)
            bar.update(len(results[index]))
            # One API call per update: throttled, so thousands of cached batches do not cost seconds.
            if done == len(batches) or time.monotonic() - last_update >= PROGRESS_UPDATE_SECONDS:
                update_progress_artifact(progress_id, progress=100.0 * done / len(batches))
                last_update = time.monotonic()
    stale = _batches_to_redo(from_task_cache, results, store)
    if stale:
        get_run_logger().warning(
            "%d cached batch(es) hold failed items or images no longer in %s; running them again",
            len(stale), store.root_uri,
        )
        rerun = generate.with_options(refresh_cache=True).map(
            [batches[i] for i in stale], unmapped(config.generation), unmapped(store), unmapped(device)
        )
        for index, future in zip(stale, rerun):
            results[index] = future.result()
    return [record for batch_records in results for record in batch_records]


def _batches_to_redo(indices: list[int], results: list[list], store: ImageStore) -> list[int]:
    """Which cached batches ``indices`` hold a failed item or a cache hit whose image left the store."""
    keys = {r.content_key for i in indices for r in results[i] if r.status == "cached"}
    present = store.existing(sorted(keys)) if keys else set()
    return sorted(
        i for i in indices
        if any(r.status == "failed" or (r.status == "cached" and r.content_key not in present) for r in results[i])
    )


def _evaluate(pool: pl.DataFrame, config: AuditConfig, store: ImageStore, device: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    chunks = [pool.slice(i, EVALUATION_CHUNK_IMAGES) for i in range(0, pool.height, EVALUATION_CHUNK_IMAGES)] or [pool]
    futures = with_runtime_retries(evaluate_batch, config).map(chunks, unmapped(config.audit), unmapped(store), unmapped(device))
    results = []
    with tqdm(total=pool.height, desc="evaluate", unit="img") as bar:
        for images, future in zip(chunks, futures):
            results.append(future.result())
            bar.update(images.height)
    predictions = pl.concat([p for p, _ in results], how="diagonal_relaxed")
    retrieval = pl.concat([r for _, r in results], how="diagonal_relaxed")
    return predictions, retrieval


def _evaluate_generative(
    pool: pl.DataFrame, config: AuditConfig, store: ImageStore, device: str, location: RunLocation,
    counterfactuals: pl.DataFrame, evaluate_only: bool,
) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """A generative model under audit: one task per ``audit.batch_size`` distinct images, every
    answer through the output store's cache; returns the tables (predictions, probes,
    generations, metrics) and the manifest's ``counts.auditee``."""
    audit = config.audit
    keys = pool["content_key"].unique(maintain_order=True).to_list()
    groups = [keys[i : i + audit.batch_size] for i in range(0, len(keys), audit.batch_size)]
    chunks = [pool.filter(pl.col("content_key").is_in(group)) for group in groups] or [pool]
    toxicity = location.models.get("toxicity")
    futures = with_runtime_retries(evaluate_auditee_batch, config).map(
        chunks, unmapped(audit), unmapped(store), unmapped(device), kind=unmapped(resolve_kind(audit)),
        model_key=unmapped(location.models["audit"].key), toxicity_key=unmapped(toxicity.key if toxicity else None),
    )
    results = []
    with tqdm(total=len(keys), desc="evaluate", unit="img") as bar:
        for group, future in zip(groups or [[]], futures):
            results.append(future.result())
            bar.update(len(group))
    answers = AuditeeAnswers.concat(results)
    lexicon = load_lexicon(audit.lexicon, config.base_dir)
    generations = add_text_scores(answers.generations, lexicon)
    # The choice probe's shared rows and the probe gaps, one family-wise m; the design from the config.
    metrics = compute_auditee_metrics(answers.predictions, answers.probes, generations, counterfactuals, audit, lexicon.names,
                                      config.attributes, config.generation.reconstruction, evaluate_only)
    tables = {"predictions": answers.predictions, "probes": answers.probes, "generations": generations, "metrics": metrics}
    return tables, answers.counts or {"computed": 0, "cached": 0}


def _publish_artifacts(manifest: dict, metrics: pl.DataFrame) -> None:
    report_uri = manifest.get("report")
    create_markdown_artifact(summary_markdown(manifest, metrics, report_uri), key="audit-summary")
    if not metrics.is_empty():
        create_table_artifact(headline_table(metrics, max_rows=50), key="audit-headline-metrics")
    if report_uri:
        create_link_artifact(report_uri, link_text="report.html", key="audit-report")


@flow(name="nightly-audit", log_prints=True, persist_result=False)
def nightly_audit(
    config_uri: str = DEFAULT_CONFIG, catalogue_dir: str = CATALOGUE_DIR, output_uri: str | None = None
) -> list[str]:
    """Audit every dataset spec in the catalogue (``datasets/*.yaml``) with one audit config.

    A dataset that fails is logged and the others still run; the flow fails at the end if any did.
    """
    logger = get_run_logger()
    runs, failures = [], []
    for spec_path in sorted(Path(catalogue_dir).glob("*.yaml")):
        try:
            runs.append(dataset_audit(config_uri, dataset_uri=str(spec_path), output_uri=output_uri))
        except Exception as exc:  # noqa: BLE001 - one bad dataset must not stop the others
            logger.error("audit of %s failed: %s", spec_path, exc)
            failures.append(f"{spec_path.name}: {exc}")
    if failures:
        raise RuntimeError(f"{len(failures)} dataset audit(s) failed: " + "; ".join(failures))
    return runs
