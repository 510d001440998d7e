"""Prefect task: the inpainting mask of every source (a dataset column, or CLIPSeg), stored by content key."""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.plan.masks import prepare_masks
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.retry import RETRY_OPTIONS


# Nothing stored: the masks themselves are in the image store, and a frame result would be pickled.
@task(name="prepare-inpainting-masks", tags=["gpu"], cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def prepare_inpainting_masks(
    valid: pl.DataFrame, mask_spec: dict[str, Any], spec: DatasetSpec, store: ImageStore, *,
    segmenter_key: str | None = None, device: str = "auto",
) -> pl.DataFrame:
    """source_id, mask_key, mask_uri, mask_error per valid row (see ``counterfactual_lab.plan.masks``)."""
    return prepare_masks(valid, mask_spec, spec, store, segmenter_key=segmenter_key, device=device)
