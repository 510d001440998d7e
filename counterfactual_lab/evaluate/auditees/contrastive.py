"""The contrastive model under audit (CLIP, SigLIP): today's zero-shot and retrieval path, as an auditee.

An adapter, not a second implementation: :meth:`ContrastiveAuditee.answer` calls
:func:`counterfactual_lab.evaluate.pool.predict` (``score_<label>``, ``top1``, ``caption_similarity``)
and :func:`counterfactual_lab.evaluate.pool.retrieval_scores` with the process-wide
:class:`~counterfactual_lab.models.clip.ClipEmbedder`, exactly as the evaluation task does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.evaluate.auditees.interface import AuditeeAnswers
from counterfactual_lab.evaluate.pool import predict, retrieval_scores
from counterfactual_lab.models.clip import ClipEmbedder

CONTRASTIVE = "contrastive"


class ContrastiveAuditee:
    kind = CONTRASTIVE

    def __init__(self, embedder: Any, audit: AuditSection) -> None:
        self.embedder = embedder
        self.audit = audit

    @classmethod
    def load(cls, audit: AuditSection, device: str = "auto") -> "ContrastiveAuditee":

        return cls(ClipEmbedder.load(audit.model, audit.revision, device), audit)

    def answer(self, pool: pl.DataFrame, load_image: Callable[[str], Any], cache_shards: Any = None) -> AuditeeAnswers:
        """Labels and retrieval scores (``cache_shards`` is unused: embeddings are cached in memory)."""

        predictions = predict(pool, self.audit, self.embedder, load_image)
        retrieval = retrieval_scores(pool, self.audit.queries, self.embedder, load_image, self.audit.batch_size)
        return AuditeeAnswers(predictions=predictions, retrieval=retrieval)
