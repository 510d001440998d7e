"""Generation fan-out: one Prefect task per batch of work items, never one per image."""

from __future__ import annotations

from prefect import task

from counterfactual_lab.config import GenerationConfig
from counterfactual_lab.generation import GenerationRecord, generate_batch
from counterfactual_lab.plan import WorkItem
from counterfactual_lab.storage import ImageStore
from tasks.cache import WorkItemsCachePolicy
from tasks.retry import RETRY_OPTIONS


@task(
    name="generate-counterfactual-batch",
    tags=["gpu"],
    cache_policy=WorkItemsCachePolicy(),
    persist_result=True,
    task_run_name="generate-{generation.method}",
    **RETRY_OPTIONS,
)
def generate_counterfactual_batch(
    items: list[WorkItem], generation: GenerationConfig, store: ImageStore, device: str = "auto"
) -> list[GenerationRecord]:
    """Generate (or find in the store) every item of one batch; returns small records with URIs."""
    return generate_batch(items, generation, store, device=device)
