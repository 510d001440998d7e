"""The dataset audit: ingest → validate → generate → judge → evaluate → metrics → publish.

``dataset_audit`` takes plain parameters (a config path, optional dataset and output URIs)
so the Prefect UI, a schedule or an event trigger can start it. The stages run as tasks on
the task runner the config names (threads on one machine, Ray beyond it); generation fans
out one task per batch of work items, cached by the items' content keys. What is generated
and what the model under audit is asked depend on the run's design (``designs.py``: image
edits, text-to-image sets, evaluate-only sets) and on the kind of model under audit
(``evaluation.py``), each behind one small object.
"""

from __future__ import annotations

# isort: off
# Loaded by file path as a deployment's entrypoint, so the package's offline Prefect defaults are
# applied here, before Prefect is imported.
import counterfactual_lab.flows  # noqa: F401
# isort: on

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.errors import TooManyFailedItems, UserError
from counterfactual_lab.evaluate.readings import with_readings
from counterfactual_lab.flows.designs import Generated, design_for
from counterfactual_lab.flows.evaluation import evaluation_for
from counterfactual_lab.flows.secrets import (
    errors_masked,
    mask_secrets_in_logs,
    resolve_secret_blocks,
)
from counterfactual_lab.flows.stage_run import StageRun
from counterfactual_lab.metrics import METRICS_SCHEMA
from counterfactual_lab.report.findings import headline_table
from counterfactual_lab.report.markdown import summary_markdown
from counterfactual_lab.report.publish import publish_run
from counterfactual_lab.report.reviewed import REVIEW_APPLIED, REVIEW_NEEDS_RERUN, refresh_review
from counterfactual_lab.review.exclusion import mark_excluded, mark_excluded_drift, sets_to_exclude
from counterfactual_lab.runs.accounting import row_accounting
from counterfactual_lab.runs.failure import count_failed_items
from counterfactual_lab.runs.location import RunLocation, locate_run
from counterfactual_lab.runs.preflight import check_audit
from counterfactual_lab.runs.publisher import REPORT_NAME, is_complete
from counterfactual_lab.storage.files import credentials_named, join
from counterfactual_lab.tasks.runners import make_task_runner

# Relative to the working directory, which for a deployment's run is the project folder on the
# worker (prefect.yaml's pull step, flows/project.py): never a path fixed where `prefect deploy` ran.
DEFAULT_CONFIG = "configs/audit.yaml"
CATALOGUE_DIR = "datasets"


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
    whole config is checked (:func:`~counterfactual_lab.runs.preflight.check_audit`) before any
    data is listed or any run folder is made; Secret blocks the config names are resolved here.
    """
    config = AuditConfig.from_yaml(config_uri)
    mask_secrets_in_logs(config, dataset_uri, output_uri)  # from here on, in logs and in this run's failure
    with errors_masked():
        spec = check_audit(config, dataset_uri, evaluate=evaluate)
        config, spec = resolve_secret_blocks(config, spec)
        mask_secrets_in_logs(config, spec)
        location = locate_run(config, dataset_uri, output_uri, evaluate, spec=spec)
        with credentials_named(location.run_uri, "output.storage_options_secret"):  # the run's first look at the output store
            complete = not force and is_complete(location.run_uri, location.storage_options)
        if complete:
            review = refresh_review(location.run_uri, config.review.exclude_rejected, location.storage_options)
            if review != REVIEW_NEEDS_RERUN:
                get_run_logger().info(
                    "run %s is already complete (same config and data)%s; report: %s", location.run_id,
                    "; people's new labels applied" if review == REVIEW_APPLIED else "", join(location.run_uri, REPORT_NAME),
                )
                return location.run_uri
            get_run_logger().info("run %s: people rejected other sets than its metrics leave out "
                                  "(review.exclude_rejected): its stages run again, reusing the images", location.run_id)
        runner = make_task_runner(config.runtime)
        return audit_stages.with_options(task_runner=runner)(config, location, evaluate)


@flow(name="audit-stages", log_prints=True, persist_result=False)
def audit_stages(config: AuditConfig, location: RunLocation, evaluate: bool) -> str:
    """The stages of one run. ``config`` and ``location`` may hold credentials (inline
    ``storage_options`` or resolved Secret blocks); Prefect stores their JSON dumps as this
    subflow's parameters, and those are redacted (``RedactedInJson``), so no credential
    reaches the Prefect database."""
    with errors_masked():
        return _audit_stages(config, location, evaluate)


def _audit_stages(config: AuditConfig, location: RunLocation, evaluate: bool) -> str:
    run = StageRun.start(config, location, evaluate)
    design = design_for(config, location.spec)
    outcome = design.validate(run)  # ingest and validate (or the templates), quarantine written
    generated = design.generate(run, outcome)  # plan, generate and judge in rounds (nothing for evaluate-only data)
    generated, excluded = exclude_rejected_sets(run, design, generated)
    tables = {"counterfactuals": generated.candidates, "quarantine": generated.quarantine, "drift": generated.drift}
    auditee_counts = None
    if evaluate:
        evaluation = evaluation_for(config)
        # The model under audit; each image once per person word its pairs need (evaluate/readings.py).
        pool = with_readings(design.evaluation_pool(run, outcome, generated), run.person_words, config.audit.modalities)
        answers = evaluation.evaluate(run, pool)
        tables.update(evaluation.tables(run, answers, design.evaluate_only))
        tables["metrics"] = evaluation.metrics(run, answers, generated.judged, design.evaluate_only, generated.drift)
        auditee_counts = evaluation.auditee_counts(answers)
    return publish(run, outcome.rows_in, outcome.valid.height, outcome.quarantined, tables, generated.counts,
                   auditee_counts, excluded)


def exclude_rejected_sets(run: StageRun, design: Any, generated: Generated) -> tuple[Generated, list[str]]:
    """With ``review.exclude_rejected``, the sets people rejected dropped before anything is evaluated
    (``counterfactual_lab.review.exclusion``); returns what generation left and the sets left out.
    Sets made from text are published as a dataset before this point: their runs are left as they are."""
    if not run.config.review.exclude_rejected or design.evaluate_only:
        return generated, []
    excluded = sets_to_exclude(generated.candidates, run.publisher.run_uri, run.location.storage_options)
    if excluded:
        run.logger.info("run %s: %d set(s) people rejected are left out (review.exclude_rejected)",
                        run.location.run_id, len(excluded))
        generated = replace(generated, candidates=mark_excluded(generated.candidates, excluded),
                            judged=mark_excluded(generated.judged, excluded),
                            drift=mark_excluded_drift(generated.drift, generated.candidates, excluded))
    return generated, excluded


def publish(run: StageRun, rows_in: int, valid: int, quarantined: int, tables: dict[str, pl.DataFrame],
            counts: dict[str, int], auditee_counts: dict[str, int] | None, excluded_sets: list[str] | None = None) -> str:
    """Publish the run (tables, report, manifest last) and its Prefect artifacts; returns the run folder.

    More failed work items than ``runtime.max_failed_fraction``: what there is is published,
    marked failed, and the run raises. Counted over the candidate rows (work items, as
    ``row_accounting`` counts them), not the records: a shared image that failed fails every
    item that needed it.
    """
    config, candidates = run.config, tables["counterfactuals"]
    failed_items = count_failed_items(candidates, config.runtime.max_failed_fraction)
    failure = failed_items.manifest_entry() if failed_items.over_limit else None
    manifest = publish_run(
        publisher=run.publisher, config=config, location=run.location, tables=tables,
        accounting=row_accounting(rows_in, valid, quarantined, candidates), counts=counts,
        started_at=run.started_at, finished_at=datetime.now(timezone.utc), load_image=run.store.load,
        failure=failure, auditee_counts=auditee_counts, excluded_sets=excluded_sets,
    )
    # A generate-only run has no metrics: an empty table with the columns, not a frame without any.
    _publish_artifacts(manifest, tables.get("metrics", pl.DataFrame(schema=METRICS_SCHEMA)))
    run.logger.info("report: %s", manifest["report"])
    if failure:
        raise TooManyFailedItems(failed_items.message(run.publisher.run_uri))
    return run.publisher.run_uri


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
    specs = sorted(Path(catalogue_dir).glob("*.yaml"))
    if not specs:  # a wrong folder would otherwise "succeed" every night having audited nothing
        raise UserError(
            f"catalogue_dir {catalogue_dir!r} ({Path(catalogue_dir).resolve()}) holds no dataset spec (*.yaml); "
            "set the nightly-audit parameter catalogue_dir to the folder of your specs"
        )
    runs, failures = [], []
    for spec_path in specs:
        try:
            runs.append(dataset_audit(config_uri, dataset_uri=str(spec_path), output_uri=output_uri))
        except Exception as exc:  # noqa: BLE001 - one bad dataset must not stop the others
            logger.error("audit of %s failed: %s", spec_path, exc)
            failures.append(f"{spec_path.name}: {exc}")
    if failures:
        raise RuntimeError(f"{len(failures)} dataset audit(s) failed: " + "; ".join(failures))
    return runs
