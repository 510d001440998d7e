"""Models under audit, side by side behind one interface.

:mod:`.interface` says what every model under audit gets and returns; :mod:`.kinds` tells the
kind (contrastive, vlm, captioner) from the config or the model; :func:`load_auditee` loads one
(once per worker process). The generative probes (:mod:`.probes`), their forward passes
(:mod:`.generative`), the answer cache in the output store (:mod:`.answer_cache`), the text
scores (:mod:`.toxicity`, :mod:`.lexicon`, :mod:`.refusal`, :mod:`.text_scores`) and their
metrics (:mod:`.metrics`) each live in their own module. README: "Generative VLMs under audit".
"""

from __future__ import annotations

from typing import Any

from counterfactual_lab.evaluate.auditees.answer_cache import AnswerCache
from counterfactual_lab.evaluate.auditees.interface import (
    Auditee,
    AuditeeAnswers,
    ProbeImages,
)
from counterfactual_lab.evaluate.auditees.kinds import (
    CONTRASTIVE,
    GENERATIVE_KINDS,
    resolve_kind,
)
from counterfactual_lab.models.identity import model_identity

__all__ = ["Auditee", "AuditeeAnswers", "ProbeImages", "load_auditee", "resolve_kind"]


def load_auditee(
    audit: Any,
    device: str = "auto",
    *,
    kind: str | None = None,
    model_key: str | None = None,
    toxicity_key: str | None = None,
    sentiment_key: str | None = None,
    text_embedder_key: str | None = None,
    cache_root: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Auditee:
    """The model under audit of ``audit`` (an ``AuditSection``), loaded once per process.

    ``kind``: as resolved by :func:`resolve_kind` (default: resolved here). A generative model
    needs ``model_key`` (its identity, :func:`counterfactual_lab.models.identity.model_identity`),
    and ``toxicity_key`` when ``audit.toxicity_model`` scores generations (``sentiment_key``,
    ``text_embedder_key`` likewise for ``audit.sentiment_model`` and ``audit.text_embedder``; each
    read here when not given); ``cache_root`` (an
    output root, local or ``s3://``) keeps every answer in ``<cache_root>/_auditee_cache``.
    """
    kind = kind or resolve_kind(audit)
    if kind == CONTRASTIVE:
        # here, not at the top: each kind loads what it needs
        from counterfactual_lab.evaluate.auditees.contrastive import ContrastiveAuditee

        return ContrastiveAuditee.load(audit, device)
    if kind not in GENERATIVE_KINDS:
        raise ValueError(f"unknown kind of model under audit {kind!r}")
    # here, not at the top: it imports torch
    from counterfactual_lab.evaluate.auditees.loading import load_generative

    # here, not at the top: it imports pydantic, torch
    from counterfactual_lab.evaluate.auditees.vlm import GenerativeAuditee

    scorer = None
    if audit.toxicity_model is not None and audit.generate.prompts:
        # here, not at the top: it imports torch
        from counterfactual_lab.evaluate.auditees.toxicity import ToxicityScorer

        scorer = ToxicityScorer.load(audit.toxicity_model, audit.toxicity_revision, device)
        toxicity_key = toxicity_key or model_identity(audit.toxicity_model, audit.toxicity_revision).key
    text_scorers = {}
    if audit.generate.prompts and (audit.sentiment_model is not None or audit.text_embedder is not None):
        # here, not at the top: it imports torch
        from counterfactual_lab.evaluate.auditees.text_models import SentimentScorer, TextEmbedder

        if audit.sentiment_model is not None:
            text_scorers["sentiment"] = (
                SentimentScorer.load(audit.sentiment_model, audit.sentiment_revision, device),
                sentiment_key or model_identity(audit.sentiment_model, audit.sentiment_revision).key)
        if audit.text_embedder is not None:
            text_scorers["embedding"] = (
                TextEmbedder.load(audit.text_embedder, audit.text_embedder_revision, device),
                text_embedder_key or model_identity(audit.text_embedder, audit.text_embedder_revision).key)
    return GenerativeAuditee(
        load_generative(audit.model, audit.revision, device), audit, kind=kind,
        model_key=model_key or model_identity(audit.model, audit.revision).key,
        cache=AnswerCache(cache_root, storage_options) if cache_root else None,
        toxicity=scorer, toxicity_key=toxicity_key, text_scorers=text_scorers,
    )
