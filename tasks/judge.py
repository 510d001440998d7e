"""Judge the generated candidates: keep the best verified counterfactuals, say why others drop, and
read the off-target drift of each set (``drift.parquet``)."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from counterfactual_lab.config.audit_config import JudgeSection
from counterfactual_lab.judge.edits import judge_with_drift
from counterfactual_lab.models.clip import ClipEmbedder
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.retry import RETRY_OPTIONS


# Nothing stored: a frame result would be pickled, and a stored pickle is code (see
# tasks/result_serialization.py). Judging again is cheap next to generating.
@task(name="judge-counterfactuals", tags=["gpu"], cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def judge_counterfactuals(
    candidates: pl.DataFrame, judge: JudgeSection, store: ImageStore, *, keep_per_target: int,
    vocabulary: dict[str, list[str]], drift_vocabulary: dict[str, list[str]] | None = None, device: str = "auto",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the judged candidates, their drift readings); ``drift_vocabulary`` (the other protected
    attributes' values) switches the drift on, with ``judge.max_drift`` set."""
    embedder = ClipEmbedder.load(judge.model, judge.revision, device)
    return judge_with_drift(
        candidates, judge, embedder, store.load, keep_per_target=keep_per_target, vocabulary=vocabulary,
        drift_vocabulary=drift_vocabulary,
    )
