"""A generative model under audit (a chat VLM or a captioner) answering the configured probes.

:class:`GenerativeAuditee` implements :class:`~counterfactual_lab.evaluate.auditees.interface.Auditee` over
the probes of :mod:`.probes`: for the distinct images of a chunk of the evaluation pool it runs,
in this order, the choice probe (``audit.choice_prompt`` over ``audit.labels``), the yes/no
questions (``audit.yes_no``; then the negative-control questions, ``audit.negative_controls``,
probe ``negative_control``), the ratings (``audit.ratings`` on 1…``audit.rating_scale``) and the
open-ended generations (``audit.generate``), then scores each generated text with the toxicity
classifier (``audit.toxicity_model``). Every answer goes through the output store's cache:
one view of it per call (:meth:`AnswerCache.view` over the call's images and the shards the caller
says may hold their answers), whose new answers are written as one shard at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.evaluate.auditees import probes
from counterfactual_lab.evaluate.auditees.answer_cache import AnswerCache, CallCounts
from counterfactual_lab.evaluate.auditees.generative import GenerativeRunner
from counterfactual_lab.evaluate.auditees.interface import (
    GENERATIONS_SCHEMA,
    PROBE_NEGATIVE_CONTROL,
    PROBES_SCHEMA,
    AuditeeAnswers,
    ProbeImages,
)
from counterfactual_lab.evaluate.auditees.kinds import resolved_negative_controls
from counterfactual_lab.evaluate.auditees.loading import LoadedModel
from counterfactual_lab.evaluate.auditees.prompts import resolve_format


def answers_per_image(audit: AuditSection) -> int:
    """How many cached answers the configured probes ask per image: a choice per label, one per
    yes/no question and rating prompt, one per generated sample (and its toxicity score)."""
    choice = len(audit.labels) if audit.choice_prompt is not None else 0
    generated = len(audit.generate.prompts) * audit.generate.samples
    return choice + len(audit.yes_no) + len(audit.ratings) + generated * (2 if audit.toxicity_model else 1)


class GenerativeAuditee:
    """A loaded generative model and what the config asks of it (module doc)."""

    def __init__(
        self,
        loaded: LoadedModel,
        audit: AuditSection,
        *,
        kind: str,
        model_key: str,
        cache: AnswerCache | None = None,
        toxicity: Any | None = None,
        toxicity_key: str | None = None,
    ) -> None:
        if toxicity is not None and not toxicity_key:
            raise ValueError("a toxicity scorer needs its model identity (toxicity_key) to cache its scores")
        self.kind = kind
        self.audit = audit
        self.runner = GenerativeRunner(loaded, batch_size=audit.batch_size)
        self.prompt_format = resolve_format(loaded.processor, audit.prompt_format)
        self.model_key = model_key
        self.cache = cache
        self.toxicity = toxicity
        self.toxicity_key = toxicity_key

    def answer(self, pool: pl.DataFrame, load_image: Callable[[str], Any],
               cache_shards: Sequence[str] | None = None) -> AuditeeAnswers:
        """``cache_shards``: the answer shards that may hold these images' answers (the flow's index
        lookup); None: looked up in the cache's index here."""
        audit = self.audit
        images = ProbeImages.from_pool(pool, load_image)
        counts = CallCounts()
        cache = self.cache.view(subjects=images.content_keys, shards=cache_shards, counts=counts) if self.cache else None
        session = probes.ProbeSession(self.runner, self.prompt_format, self.model_key, cache, counts)
        predictions = pool
        if audit.choice_prompt is not None:
            choice = probes.choice(session, images, audit.choice_prompt, audit.labels)
            predictions = pool.join(choice, on="content_key", how="left").with_columns(
                pl.lit(None, dtype=pl.Float64).alias("caption_similarity")  # no image-caption similarity here
            )
        answered = [probes.yes_no(session, images, audit.yes_no)] if audit.yes_no else []
        controls = resolved_negative_controls(audit, self.kind)
        if controls:  # asked as yes/no questions (the same cache), measured as diagnostics
            answered.append(probes.yes_no(session, images, controls).with_columns(
                pl.lit(PROBE_NEGATIVE_CONTROL).alias("probe")))
        if audit.ratings:
            answered.append(probes.ratings(session, images, audit.ratings, audit.rating_scale))
        probe_rows = pl.concat(answered) if answered else pl.DataFrame(schema=PROBES_SCHEMA)
        generations = pl.DataFrame(schema=GENERATIONS_SCHEMA)
        decoding = audit.generate
        if decoding.prompts:
            made = probes.generate(
                session, images, decoding.prompts, samples=decoding.samples, temperature=decoding.temperature,
                max_new_tokens=decoding.max_new_tokens, seed=decoding.seed,
            )
            scores = (
                probes.toxicity(made["text"].to_list(), self.toxicity, self.toxicity_key, cache, counts, audit.batch_size)
                if self.toxicity is not None else None
            )
            generations = made.with_columns(pl.Series("toxicity", scores, dtype=pl.Float64) if scores is not None
                                            else pl.lit(None, dtype=pl.Float64).alias("toxicity"))
        if cache is not None:
            cache.flush()
        return AuditeeAnswers(predictions=predictions, probes=probe_rows, generations=generations, counts=counts.as_dict(),
                              cache_shards=dict(cache.written) if cache is not None else {})
