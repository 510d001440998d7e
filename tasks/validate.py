"""Prefect tasks: Great Expectations validation with quarantine."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.ingest.validation import ValidationOutcome, ingest_and_validate
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.retry import RETRY_OPTIONS


@task(name="validate-dataset", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def validate_dataset(spec: DatasetSpec, image_store: ImageStore | None = None, batch_rows: int = 1024) -> ValidationOutcome:
    """Stream ``spec``'s dataset through ingest and validation in one pass.

    Source images land in ``image_store`` (content-addressed RGB PNGs); the outcome holds
    small frames only. Retried with exponential backoff on transient storage errors only:
    an unreadable dataset fails at once.
    """
    return ingest_and_validate(spec, image_store=image_store, batch_rows=batch_rows)
