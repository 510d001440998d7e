"""Generation fan-out: rounds of seeds, one generation task per batch, one judge task per round.

The rounds themselves (which seeds, which units are still open, what is kept) are the library's
:func:`counterfactual_lab.generation.rounds.run_rounds`; this module gives it the two callables
that run on the task runner, with progress in the terminal and in a Prefect artifact.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from prefect import get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from tqdm.auto import tqdm

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.flows.stage_run import StageRun
from counterfactual_lab.flows.task_sizes import items_per_task
from counterfactual_lab.generation.records import as_cache_hits
from counterfactual_lab.generation.rounds import run_rounds
from counterfactual_lab.generation.text2image_sets import chunk_sets
from counterfactual_lab.judge.drift import empty_drift
from counterfactual_lab.models.clip import reserve_embedding_cache
from counterfactual_lab.plan.work_items import chunk
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.generate import generation_task_for
from counterfactual_lab.tasks.judge import judge_counterfactuals
from counterfactual_lab.tasks.runners import picklable_quote, with_runtime_retries

PROGRESS_UPDATE_SECONDS = 2.0


def generate_and_judge(
    items: list, run: StageRun, never_generated: dict[str, str] | None = None,
) -> tuple[list, pl.DataFrame, dict[str, int], pl.DataFrame]:
    """Generate and judge ``items`` in rounds of seeds: each round fans out one generation task per
    batch, then one judge task scores everything so far. Returns (records, the judged candidates,
    the generation counts with ``calls``/``calls_fixed``/``rounds``, the last round's drift readings)."""
    config = run.config
    judge = with_runtime_retries(judge_counterfactuals, config)
    # Room for every image and caption this process embeds (judge, then evaluation), so the model
    # under audit reuses the judge's embeddings instead of re-embedding what an LRU evicted.
    reserve_embedding_cache(4 * len(items) + 1024)
    vocabulary, drift_vocabulary = run.judge_vocabulary, run.drift_vocabulary
    drift: list[pl.DataFrame] = [empty_drift()]

    def judge_round(candidates: pl.DataFrame) -> pl.DataFrame:
        judged, drift[0] = judge(candidates, config.judge, run.store, keep_per_target=config.generation.keep_per_target,
                                 vocabulary=vocabulary, drift_vocabulary=drift_vocabulary, device=run.device)
        return judged

    outcome = run_rounds(
        items, config.generation,
        generate=lambda batch: generate_batches(batch, config, run.store, run.device),
        judge=judge_round,
        never_generated=never_generated,
    )
    counts = outcome.counts(items, never_generated or {})
    if config.generation.adaptive and counts["calls"] < counts["calls_fixed"]:
        get_run_logger().info("adaptive over-generation: %d round(s), %d of the %d images a fixed plan asks for",
                              outcome.rounds, counts["calls"], counts["calls_fixed"])
    return outcome.records, outcome.judged, counts, drift[0]


def generate_batches(items: list, config: AuditConfig, store: ImageStore, device: str) -> list:
    """Fan out the generation tasks (each of :func:`~counterfactual_lab.flows.task_sizes.items_per_task`
    items, a whole number of model batches); progress in the terminal and in a Prefect artifact.

    Each batch runs under its writer lock in the output store (``tasks.generate.generation_task_for``):
    an audit that reaches a batch another audit is making waits, then reads it from the cache.
    A batch served by Prefect's task cache counts as cache hits. Such a batch runs again past
    the cache when it recorded a failure (the cache must not make a failure permanent) or
    points at images no longer in the store (an output folder removed, an S3 lifecycle rule);
    ``generate_batch`` then makes only the images that are missing.
    """
    generation = config.generation
    # Members of a text-to-image set share latents and attention: one task makes the whole set.
    split = chunk if METHODS[generation.method].reads_source else chunk_sets
    # quote: without it Prefect walks every field of every work item of a batch, twice per task
    # run, looking for futures (21 ms per batch of 64 items, more than the rest of a task's overhead).
    per_task = items_per_task(len(items), generation.batch_size, config.runtime)
    batches = [picklable_quote(batch) for batch in split(items, per_task)]
    if not batches:
        return []
    progress_id = create_progress_artifact(progress=0.0, description=f"generation: {len(items)} work items")
    # On Ray, the runner gives each `gpu`-tagged batch a GPU (tasks/runners.py).
    generate = with_runtime_retries(generation_task_for(store), config)
    futures = generate.map(batches, unmapped(generation), unmapped(store), unmapped(device))
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
    stale = batches_to_redo(from_task_cache, results, store)
    if stale:
        get_run_logger().warning(
            "%d cached batch(es) hold failed items or images no longer in %s; running them again",
            len(stale), store.root_uri,
        )
        rerun = generate.with_options(refresh_cache=True).map(
            [batches[i] for i in stale], unmapped(generation), unmapped(store), unmapped(device)
        )
        for index, future in zip(stale, rerun):
            results[index] = future.result()
    return [record for batch_records in results for record in batch_records]


def batches_to_redo(indices: list[int], results: list[list[Any]], store: ImageStore) -> list[int]:
    """Which cached batches ``indices`` hold a failed item or a cache hit whose image left the store."""
    keys = {r.content_key for i in indices for r in results[i] if r.status == "cached"}
    present = store.existing(sorted(keys)) if keys else set()
    return sorted(
        i for i in indices
        if any(r.status == "failed" or (r.status == "cached" and r.content_key not in present) for r in results[i])
    )
