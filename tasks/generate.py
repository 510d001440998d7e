"""Generation fan-out: one Prefect task per batch of work items, never one per image.

A batch's records are stored as data-only JSON (``GenerationRecordsSerializer``) and cached on
its items' content keys. :func:`generation_task_for` gives the task its writer lock for one
output store: the audit flow uses it so that two audits of the same work never both make a batch.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from counterfactual_lab.config.audit_config import GenerationSection
from counterfactual_lab.generation.batch import generate_batch
from counterfactual_lab.generation.records import GenerationRecord
from counterfactual_lab.plan.work_items import WorkItem
from counterfactual_lab.storage.files import ImageStore, join
from counterfactual_lab.storage.locks import StoreLockManager
from counterfactual_lab.tasks.cache import WorkItemsCachePolicy, generation_cache_policy
from counterfactual_lab.tasks.result_serialization import GenerationRecordsSerializer
from counterfactual_lab.tasks.retry import RETRY_OPTIONS

# Lock files of in-flight batches, beside the images they guard (shared by every run under OUT).
LOCKS_FOLDER = ".locks"


@task(
    name="generate-counterfactual-batch",
    tags=["gpu"],
    cache_policy=WorkItemsCachePolicy(),
    persist_result=True,
    result_serializer=GenerationRecordsSerializer(),
    task_run_name="generate-{generation.method}",
    **RETRY_OPTIONS,
)
def generate_counterfactual_batch(
    items: list[WorkItem], generation: GenerationSection, store: ImageStore, device: str = "auto"
) -> list[GenerationRecord]:
    """Generate (or find in the store) every item of one batch; returns small records with URIs."""
    return generate_batch(items, generation, store, device=device)


def batch_lock_manager(store: ImageStore) -> StoreLockManager:
    """The writer locks of generation batches for ``store``: ``<store root>/.locks/<cache key>.lock``."""
    return StoreLockManager(join(store.root_uri, LOCKS_FOLDER), store.storage_options)


def generation_task_for(store: ImageStore, task: Any = generate_counterfactual_batch) -> Any:
    """``task`` whose cache is ``SERIALIZABLE`` under ``store``'s batch locks (one writer per batch).

    The lookup, the generation and the stored result of a batch happen under its lock, so a
    second audit that reaches the batch meanwhile waits, then finds it cached.
    """
    current = task.cache_policy
    policy = generation_cache_policy(
        key_storage=current.key_storage, items_parameter=current.items_parameter,
        version=current.version, lock_manager=batch_lock_manager(store),
    )
    return task.with_options(cache_policy=policy)
