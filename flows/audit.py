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
from prefect.utilities.annotations import quote
from tqdm.auto import tqdm

from counterfactual_lab.audit_run import (
    as_cache_hits,
    candidates_frame,
    generation_counts,
    RunLocation,
    locate_run,
    publish_run,
    row_accounting,
)
from counterfactual_lab.config import AuditConfig
from counterfactual_lab.errors import DataOverLimit
from counterfactual_lab.evaluate import build_evaluation_pool, pool_from_counterfactual_sets
from counterfactual_lab.findings import headline_table, summary_markdown
from counterfactual_lab.metrics import METRICS_SCHEMA
from counterfactual_lab.plan import chunk, plan_work_items
from counterfactual_lab.publish import REPORT_NAME, RunPublisher, is_complete
from counterfactual_lab.storage import ImageStore, join
from counterfactual_lab.validation import write_validation_outputs
from tasks.evaluate import compute_fairness_metrics, evaluate_batch
from tasks.generate import generate_counterfactual_batch
from tasks.judge import judge_counterfactuals
from tasks.runners import make_task_runner
from tasks.validate import validate_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "audit.yaml")
CATALOGUE_DIR = str(REPO_ROOT / "datasets")
EVALUATION_CHUNK_IMAGES = 256
PROGRESS_UPDATE_SECONDS = 2.0


@flow(name="dataset-audit", log_prints=True)
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
    the judge (``cflab generate``). The run id hashes the config, the library version and the
    dataset's fingerprint, so a complete run with the same id already holds this audit's
    answer: it is returned as it is unless ``force`` (a scheduled audit of unchanged data
    costs one listing). ``force`` runs every stage again; cached images are still reused.
    """
    config = AuditConfig.from_yaml(config_uri)
    location = locate_run(config, dataset_uri, output_uri, evaluate)
    if not force and is_complete(location.run_uri, location.storage_options):
        get_run_logger().info(
            "run %s is already complete (same config and data); report: %s",
            location.run_id, join(location.run_uri, REPORT_NAME),
        )
        return location.run_uri
    runner = make_task_runner(config.runtime)
    return audit_stages.with_options(task_runner=runner)(config, location, evaluate)


@flow(name="audit-stages", log_prints=True)
def audit_stages(config: AuditConfig, location: RunLocation, evaluate: bool) -> str:
    logger = get_run_logger()
    started_at = datetime.now(timezone.utc)
    spec, options, run_id = location.spec, location.storage_options, location.run_id
    dataset_fingerprint = location.dataset_fingerprint
    store = ImageStore(location.out_uri, options)
    device = config.runtime.device
    publisher = RunPublisher(location.out_uri, run_id, spec.name, options)
    logger.info("run %s: dataset %s -> %s", run_id, spec.uri, publisher.run_uri)

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

    if spec.columns.counterfactual_set:
        # Evaluate-only: the dataset already holds counterfactual sets.
        counterfactuals = pl.DataFrame()
        records: list = []
        pool = pool_from_counterfactual_sets(outcome.valid, attributes)
    else:
        items = plan_work_items(outcome.valid, config, spec)
        records = _generate(items, config, store, device)
        candidates = candidates_frame(items, records, config.generation.method)
        counterfactuals = with_runtime_retries(judge_counterfactuals, config)(
            candidates, config.judge, store,
            keep_per_target=config.generation.keep_per_target, vocabulary=vocabulary, device=device,
        )
        pool = build_evaluation_pool(outcome.valid, counterfactuals, attributes)

    tables = {"counterfactuals": counterfactuals, "quarantine": outcome.quarantine}
    if evaluate:
        predictions, retrieval = _evaluate(pool, config, store, device)
        tables["predictions"] = predictions
        tables["metrics"] = compute_fairness_metrics(predictions, retrieval, counterfactuals, config.audit)

    counts = generation_counts(records)
    accounting = row_accounting(outcome.rows_in, outcome.valid.height, outcome.quarantined, counterfactuals)
    manifest = publish_run(
        publisher=publisher,
        config=config,
        dataset={"name": spec.name, "uri": spec.uri, "fingerprint": dataset_fingerprint},
        tables=tables,
        accounting=accounting,
        counts=counts,
        started_at=started_at,
        finished_at=datetime.now(timezone.utc),
        load_image=store.load,
    )
    # A generate-only run has no metrics: an empty table with the columns, not a frame without any.
    _publish_artifacts(manifest, tables.get("metrics", pl.DataFrame(schema=METRICS_SCHEMA)))
    logger.info("report: %s", manifest["report"])
    return publisher.run_uri


def with_runtime_retries(task: Any, config: AuditConfig) -> Any:
    """``task`` with the config's retry count and backoff base (``runtime.retries``,
    ``runtime.retry_delay_seconds``); the transient-only condition and jitter stay."""
    runtime = config.runtime
    return task.with_options(
        retries=runtime.retries, retry_delay_seconds=exponential_backoff(backoff_factor=runtime.retry_delay_seconds)
    )


def _generate(items: list, config: AuditConfig, store: ImageStore, device: str) -> list:
    """Fan out one generation task per batch; progress in the terminal and in a Prefect artifact.

    A batch served by Prefect's task cache counts as cache hits. Such a batch runs again past
    the cache when it recorded a failure (the cache must not make a failure permanent) or
    points at images no longer in the store (an output folder removed, an S3 lifecycle rule);
    ``generate_batch`` then makes only the images that are missing.
    """
    # quote: without it Prefect walks every field of every work item of a batch, twice per task
    # run, looking for futures (21 ms per batch of 64 items, more than the rest of a task's overhead).
    batches = [quote(batch) for batch in chunk(items, config.generation.batch_size)]
    if not batches:
        return []
    progress_id = create_progress_artifact(progress=0.0, description=f"generation: {len(items)} work items")
    # On Ray, the runner gives each `gpu`-tagged batch a GPU (tasks/runners.py).
    generate = with_runtime_retries(generate_counterfactual_batch, config)
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
    results = [future.result() for future in futures]
    predictions = pl.concat([p for p, _ in results], how="diagonal_relaxed")
    retrieval = pl.concat([r for _, r in results], how="diagonal_relaxed")
    return predictions, retrieval


def _publish_artifacts(manifest: dict, metrics: pl.DataFrame) -> None:
    report_uri = manifest.get("report")
    create_markdown_artifact(summary_markdown(manifest, metrics, report_uri), key="audit-summary")
    if not metrics.is_empty():
        create_table_artifact(headline_table(metrics, max_rows=50), key="audit-headline-metrics")
    if report_uri:
        create_link_artifact(report_uri, link_text="report.html", key="audit-report")


@flow(name="nightly-audit", log_prints=True)
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
