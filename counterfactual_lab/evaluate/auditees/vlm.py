"""A generative model under audit (a chat VLM or a captioner) answering the configured probes.

:class:`GenerativeAuditee` implements :class:`~counterfactual_lab.evaluate.auditees.interface.Auditee` over
the probes of :mod:`.probes`: for the distinct images of a chunk of the evaluation pool it runs,
in this order, the choice probe (``audit.choice_prompt`` over ``audit.labels``), the yes/no
questions (``audit.yes_no``; then the negative-control questions, ``audit.negative_controls``,
probe ``negative_control``), the ratings (``audit.ratings`` on 1…``audit.rating_scale``) and the
open-ended generations (``audit.generate``), then scores each generated text with the toxicity
classifier (``audit.toxicity_model``), the sentiment classifier (``audit.sentiment_model``) and the
text embedder (``audit.text_embedder``). Every prompt is asked in each of its phrasings
(``audit.phrasings``): the choice prompt's phrasing k ≥ 1 fills ``score_<label>@k``, ``top1@k`` (and
``unclear@k``), the other probes' rows carry the phrasing as their ``prompt``. The yes/no and choice
probes offer ``audit.unclear_option`` when it is set. A template with ``{person}`` is asked once per
person word its images need (:mod:`counterfactual_lab.evaluate.readings`), the word filled in. Every
answer goes through the output store's cache: one view of it per call (:meth:`AnswerCache.view` over
the call's images and the shards the caller says may hold their answers), whose new answers are
written as one shard at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.config.templates import uses_person
from counterfactual_lab.evaluate.auditees import probes
from counterfactual_lab.evaluate.auditees.answer_cache import AnswerCache, CallCounts
from counterfactual_lab.evaluate.auditees.generative import GenerativeRunner
from counterfactual_lab.evaluate.auditees.interface import (
    GENERATIONS_SCHEMA,
    PERSON,
    PROBE_NEGATIVE_CONTROL,
    PROBE_SENTIMENT,
    PROBE_TEXT_EMBEDDING,
    PROBES_SCHEMA,
    AuditeeAnswers,
    ProbeImages,
)
from counterfactual_lab.evaluate.auditees.kinds import resolved_negative_controls
from counterfactual_lab.evaluate.auditees.loading import LoadedModel
from counterfactual_lab.evaluate.auditees.prompts import resolve_format
from counterfactual_lab.evaluate.pool import phrased_column
from counterfactual_lab.evaluate.readings import PERSON_COLUMN
from counterfactual_lab.plan.person_words import fill_person


def answers_per_image(audit: AuditSection) -> int:
    """How many cached answers the configured probes ask per image, every phrasing counted: a choice
    per label (and the unclear option), one per yes/no question and rating prompt, one per generated
    sample (and one per text model that scores it: toxicity, sentiment, embedding)."""
    def asked(prompts: Sequence[str]) -> int:
        return sum(len(audit.phrasings_of(p)) for p in prompts)

    options = len(audit.labels) + (1 if audit.unclear_option else 0)
    choice = options * asked([audit.choice_prompt]) if audit.choice_prompt is not None else 0
    scorers = sum(1 for m in (audit.toxicity_model, audit.sentiment_model, audit.text_embedder) if m)
    generated = asked(audit.generate.prompts) * audit.generate.samples
    return choice + asked(audit.yes_no) + asked(audit.ratings) + generated * (1 + scorers)


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
        text_scorers: dict[str, tuple[Any, str]] | None = None,
    ) -> None:
        if toxicity is not None and not toxicity_key:
            raise ValueError("a toxicity scorer needs its model identity (toxicity_key) to cache its scores")
        # generations column -> (scorer, its model identity): "sentiment", "embedding".
        self.text_scorers = dict(text_scorers or {})
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
        counts = CallCounts()
        images = ProbeImages.from_pool(pool, load_image)
        cache = self.cache.view(subjects=images.content_keys, shards=cache_shards, counts=counts) if self.cache else None
        session = probes.ProbeSession(self.runner, self.prompt_format, self.model_key, cache, counts)
        asked = _PersonReadings(pool, load_image)
        predictions = pool
        if audit.choice_prompt is not None:
            for k, phrasing in enumerate(audit.phrasings_of(audit.choice_prompt)):
                choice = asked.each([phrasing], lambda images, prompts: probes.choice(
                    session, images, prompts[0], audit.labels, audit.unclear_option)).drop("prompt", strict=False)
                choice = choice.rename({c: phrased_column(c, k) for c in choice.columns if c not in asked.keys})
                predictions = predictions.join(choice, on=asked.keys, how="left", nulls_equal=True)
                if k == 0:  # no image-caption similarity here
                    predictions = predictions.with_columns(pl.lit(None, dtype=pl.Float64).alias("caption_similarity"))
        questions = [p for q in audit.yes_no for p in audit.phrasings_of(q)]
        answered = [asked.each(questions, lambda images, prompts: probes.yes_no(
            session, images, prompts, audit.unclear_option))] if questions else []
        controls = resolved_negative_controls(audit, self.kind)
        if controls:  # asked as yes/no questions (the same cache), measured as diagnostics
            answered.append(asked.each(controls, lambda images, prompts: probes.yes_no(session, images, prompts))
                            .with_columns(pl.lit(PROBE_NEGATIVE_CONTROL).alias("probe")))
        if audit.ratings:
            rated = [p for q in audit.ratings for p in audit.phrasings_of(q)]
            answered.append(asked.each(rated, lambda images, prompts: probes.ratings(
                session, images, prompts, audit.rating_scale)))
        probe_rows = pl.concat(answered, how="diagonal_relaxed") if answered else asked.empty(PROBES_SCHEMA)
        generations = asked.empty(GENERATIONS_SCHEMA)
        decoding = audit.generate
        if decoding.prompts:
            made = asked.each([p for q in decoding.prompts for p in audit.phrasings_of(q)],
                              lambda images, prompts: probes.generate(
                session, images, prompts, samples=decoding.samples, temperature=decoding.temperature,
                max_new_tokens=decoding.max_new_tokens, seed=decoding.seed))
            texts = made["text"].to_list()
            scores = (
                probes.toxicity(texts, self.toxicity, self.toxicity_key, cache, counts, audit.batch_size)
                if self.toxicity is not None else None
            )
            generations = made.with_columns(pl.Series("toxicity", scores, dtype=pl.Float64) if scores is not None
                                            else pl.lit(None, dtype=pl.Float64).alias("toxicity"))
            for column, probe in (("sentiment", PROBE_SENTIMENT), ("embedding", PROBE_TEXT_EMBEDDING)):
                dtype = GENERATIONS_SCHEMA[column]
                if column in self.text_scorers:
                    scorer, key = self.text_scorers[column]
                    values = probes.text_scores(probe, texts, scorer, key, cache, counts, audit.batch_size)
                    generations = generations.with_columns(pl.Series(column, values, dtype=dtype))
                else:
                    generations = generations.with_columns(pl.lit(None, dtype=dtype).alias(column))
        if cache is not None:
            cache.flush()
        return AuditeeAnswers(predictions=predictions, probes=probe_rows, generations=generations, counts=counts.as_dict(),
                              cache_shards=dict(cache.written) if cache is not None else {})


class _PersonReadings:
    """How one chunk's images are asked: per image, or per (image, person word) where the pool has
    readings (:mod:`counterfactual_lab.evaluate.readings`) and the template has ``{person}``."""

    def __init__(self, pool: pl.DataFrame, load_image: Callable[[str], Any]) -> None:
        self.pool = pool
        self.load_image = load_image
        self.readings = PERSON_COLUMN in pool.columns
        self.keys = ["content_key", PERSON] if self.readings else ["content_key"]

    def empty(self, schema: dict[str, Any]) -> pl.DataFrame:
        return pl.DataFrame(schema={**schema, **({PERSON: pl.String} if self.readings else {})})

    def each(self, templates: list[str], ask: Callable[[ProbeImages, list[str]], pl.DataFrame]) -> pl.DataFrame:
        """``ask(images, prompts)``: once for the templates without ``{person}`` (their answers stand for
        every word an image is asked with), once per word for those with it (the prompts filled; the
        answers' ``prompt`` is the template again); keyed by :attr:`keys`."""
        everyone = ProbeImages.from_pool(self.pool, self.load_image)
        if not self.readings:
            return ask(everyone, list(templates))
        plain = [t for t in templates if not uses_person(t)]
        personal = [t for t in templates if uses_person(t)]
        parts = []
        if plain:
            words = self.pool.select("content_key", pl.col(PERSON_COLUMN).alias(PERSON)).unique(maintain_order=True)
            parts.append(ask(everyone, plain).join(words, on="content_key", how="inner", maintain_order="left"))
        for word in self.pool[PERSON_COLUMN].unique(maintain_order=True).to_list() if personal else []:
            rows = self.pool.filter(pl.col(PERSON_COLUMN).eq_missing(word))
            filled = {fill_person(t, word): t for t in personal}
            answers = ask(ProbeImages.from_pool(rows, self.load_image), list(filled))
            if "prompt" in answers.columns:
                answers = answers.with_columns(pl.col("prompt").replace_strict(filled, default=pl.col("prompt")))
            else:  # the choice probe: one template, no prompt column
                answers = answers.with_columns(pl.lit(personal[0]).alias("prompt"))
            parts.append(answers.with_columns(pl.lit(word, dtype=pl.String).alias(PERSON)))
        return pl.concat(parts, how="diagonal_relaxed")
