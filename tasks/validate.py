"""Prefect tasks: Great Expectations validation with quarantine."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from counterfactual_lab.spec import DatasetSpec
from counterfactual_lab.storage import ImageStore
from counterfactual_lab.validation import ValidationOutcome, ingest_and_validate, validate_rows
from tasks.retry import RETRY_OPTIONS


@task(name="validate-dataset", cache_policy=NO_CACHE, persist_result=False, tags=["io"], **RETRY_OPTIONS)
def validate_dataset(spec: DatasetSpec, image_store: ImageStore | None = None, batch_rows: int = 1024) -> ValidationOutcome:
    """Stream ``spec``'s dataset through ingest and validation in one pass.

    Source images land in ``image_store`` (content-addressed RGB PNGs); the outcome holds
    small frames only. Retried with exponential backoff on transient storage errors only:
    an unreadable dataset fails at once.
    """
    return ingest_and_validate(spec, image_store=image_store, batch_rows=batch_rows)


@task(name="validate-rows", cache_policy=NO_CACHE, persist_result=False)
def validate_ingested(spec: DatasetSpec, rows: pl.DataFrame) -> ValidationOutcome:
    """Validate the frame ``tasks.ingest.ingest_dataset`` returned (two-step form of ``validate_dataset``)."""
    return validate_rows(spec, rows)
