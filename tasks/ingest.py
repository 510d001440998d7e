"""Prefect task: stream a dataset into the small per-row frame (images checked, no bytes)."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from counterfactual_lab.ingest import read_ingested
from counterfactual_lab.spec import DatasetSpec
from counterfactual_lab.storage import ImageStore
from tasks.retry import RETRY_OPTIONS


# No cache: a rerun is cheap (stored images are neither decoded nor rewritten) and the
# dataset may have changed under the same URI.
@task(name="ingest-dataset", cache_policy=NO_CACHE, persist_result=False, tags=["io"], **RETRY_OPTIONS)
def ingest_dataset(spec: DatasetSpec, image_store: ImageStore | None = None, batch_rows: int = 1024) -> pl.DataFrame:
    """Per-row frame of ``spec``'s dataset (see ``counterfactual_lab.ingest.ingested_schema``).

    Retried with exponential backoff on transient storage errors only.
    """
    return read_ingested(spec, image_store=image_store, batch_rows=batch_rows)
