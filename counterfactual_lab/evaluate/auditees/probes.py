"""The probes of a generative model under audit, each answer cached by what it answers.

Every probe takes :class:`~counterfactual_lab.evaluate.auditees.interface.ProbeImages` (distinct images
by content key) and returns a frame keyed by ``content_key`` (and ``prompt``):

==================  ============================================================================
:func:`choice`      multiple choice over the labels: log p(label's tokens | image, prompt) per
                    label, softmax over the labels → ``score_<label>``, ``top1`` (as the
                    contrastive probe's, so flip rate, gaps, parity and controls apply unchanged);
                    with an "unclear" option u (``audit.unclear_option``) the softmax runs over the
                    labels and u: ``unclear`` = P(u), and ``score_<label>`` = P(label) / (1 − P(u)),
                    ``top1`` among the labels (the answers given)
:func:`yes_no`      per question: P(yes) = S_yes / (S_yes + S_no) from the next-token
                    distribution (:mod:`.answers`), ``answer_mass`` = S_yes + S_no (+ S_u);
                    with an "unclear" option u, ``unclear`` = S_u / (S_yes + S_no + S_u), and
                    P(yes) stays on the answers given
:func:`ratings`     per prompt: E[rating] = Σ k · share(k) over the digits 1…scale
:func:`generate`    per prompt and sample: a sampled text (:mod:`.sampling`), its token count
:func:`toxicity`    per generated text: the toxic label's probability (:mod:`.toxicity`)
:func:`text_scores` per generated text: any text model's score (sentiment, embedding), cached
==================  ============================================================================

Caching (:mod:`.answer_cache`): each answer is keyed by the probe, the image's content key (a
text's sha256 for toxicity), the prompt, the model's identity, revision and dtype, the prompt
format and the decoding parameters. The choice probe caches one log-likelihood per (image,
prompt, label), so adding a label asks the model only about the new one; a generation is cached
per sample, so raising ``samples`` keeps the samples already drawn. Images are read only for the
answers the cache does not have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.evaluate.auditees.answer_cache import (
    AnswerCache,
    CallCounts,
    answer_key,
)
from counterfactual_lab.evaluate.auditees.answers import (
    YES_NO_ANSWERS,
    expected_rating,
    rating_answers,
    shares_from_sums,
)
from counterfactual_lab.evaluate.auditees.generative import GenerativeRunner
from counterfactual_lab.evaluate.auditees.interface import (
    GENERATIONS_SCHEMA,
    PROBE_CHOICE,
    PROBE_GENERATION,
    PROBE_RATING,
    PROBE_TOXICITY,
    PROBE_YES_NO,
    PROBES_SCHEMA,
    ProbeImages,
)
from counterfactual_lab.evaluate.auditees.prompts import render
from counterfactual_lab.evaluate.auditees.sampling import sequence_seed

# Bump when what a cached answer means changes (its formula, its fields).
PROBE_VERSION = "1"


@dataclass
class ProbeSession:
    """What the probes of one batch share: the runner, the cache, and how answers are identified."""

    runner: GenerativeRunner
    prompt_format: str  # resolved: "chat" or "raw"
    model_key: str  # the model's identity (sha256 of its files, or hub commit)
    cache: AnswerCache | None = None
    counts: CallCounts = field(default_factory=CallCounts)
    # Rendered prompts by (template, options): a chat template renders in a fraction of a
    # millisecond, but a generation batch asks for the same few prompts once per row.
    _rendered: dict[tuple[str, tuple[str, ...] | None], str] = field(default_factory=dict, repr=False)

    def fields(self, probe: str, **specific: Any) -> dict[str, Any]:
        loaded = self.runner.loaded
        return {
            "probe": probe, "version": PROBE_VERSION, "model": self.model_key, "revision": loaded.revision,
            "dtype": str(loaded.dtype).removeprefix("torch."), "prompt_format": self.prompt_format, **specific,
        }

    def render(self, template: str, options: list[str] | None = None) -> str:
        key = (template, tuple(options) if options is not None else None)
        text = self._rendered.get(key)
        if text is None:
            text = self._rendered[key] = render(self.runner.loaded.processor, self.prompt_format, template, options)
        return text


def cached_answers(
    probe: str,
    fields: Sequence[dict[str, Any]],
    compute: Callable[[list[int]], list[dict[str, Any]]],
    cache: AnswerCache | None,
    counts: CallCounts,
) -> list[dict[str, Any]]:
    """The answer of each ``fields`` entry: from ``cache`` where present, else ``compute(missing
    indices)`` (then stored). Counts computed and cached answers in ``counts``."""
    keys = [answer_key(f) for f in fields]
    found = cache.get_many(probe, keys) if cache is not None else {}
    missing = [i for i, key in enumerate(keys) if key not in found]
    # Two rows with one key (a duplicate image) are computed once.
    first: dict[str, int] = {}
    for i in missing:
        first.setdefault(keys[i], i)
    todo = list(first.values())
    values = compute(todo) if todo else []
    if len(values) != len(todo):
        raise RuntimeError(f"{probe} probe computed {len(values)} answers for {len(todo)} rows")
    fresh = {keys[i]: value for i, value in zip(todo, values)}
    if cache is not None and fresh:
        cache.put_many(probe, {keys[i]: (fields[i], fresh[keys[i]]) for i in todo})
    counts.add(computed=len(todo), cached=len(keys) - len(missing))
    return [found[key] if key in found else fresh[key] for key in keys]


def _pairs(images: ProbeImages, prompts: Sequence[str]) -> list[tuple[int, str]]:
    return [(i, p) for p in prompts for i in range(len(images))]


# -- multiple choice -------------------------------------------------------------------------


def choice(session: ProbeSession, images: ProbeImages, prompt: str, labels: Sequence[str],
           unclear: str | None = None) -> pl.DataFrame:
    """``content_key, score_<label>…, top1`` (and ``unclear`` with an unclear option): the labels'
    distribution after ``prompt`` (module doc)."""
    # here, not at the top: it imports pydantic
    from counterfactual_lab.evaluate.pool import score_column

    given = list(labels)
    labels = given + ([unclear] if unclear is not None else [])
    text = session.render(prompt, list(labels))
    rows = [(i, label) for i in range(len(images)) for label in labels]
    fields = [session.fields(PROBE_CHOICE, content_key=images.content_keys[i], prompt=prompt, option=label,
                             options=list(labels) if "{options}" in prompt else None) for i, label in rows]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        # Images missing the same labels (on a cold cache: all of them) are scored together, so the
        # runner runs each image's prefix once for all its options.
        missing: dict[int, list[int]] = {}
        for k in todo:
            missing.setdefault(rows[k][0], []).append(k)
        groups: dict[tuple[str, ...], list[int]] = {}
        for image, ks in missing.items():
            groups.setdefault(tuple(rows[k][1] for k in ks), []).append(image)
        logliks: dict[int, float] = {}
        for labels_missing, image_indices in groups.items():
            pictures = images.load(image_indices)
            values = session.runner.option_logliks(pictures, [text] * len(pictures), list(labels_missing))
            for row, image in enumerate(image_indices):
                for column, k in enumerate(missing[image]):
                    logliks[k] = float(values[row, column])
        return [{"loglik": logliks[k]} for k in todo]

    answers = cached_answers(PROBE_CHOICE, fields, compute, session.cache, session.counts)
    logliks = np.array([a["loglik"] for a in answers], dtype=np.float64).reshape(len(images), len(labels))
    shifted = logliks - logliks.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    answered = probs[:, : len(given)] / probs[:, : len(given)].sum(axis=1, keepdims=True) if len(images) else probs
    frame = pl.DataFrame({"content_key": list(images.content_keys)}, schema={"content_key": pl.String})
    frame = frame.with_columns(
        *[pl.Series(score_column(label), answered[:, j], dtype=pl.Float64) for j, label in enumerate(given)],
        pl.Series("top1", [given[j] for j in answered.argmax(axis=1)] if len(images) else [], dtype=pl.String),
    )
    if unclear is not None:
        frame = frame.with_columns(pl.Series("unclear", probs[:, -1] if len(images) else [], dtype=pl.Float64))
    return frame


# -- yes/no and ratings ------------------------------------------------------------------------


def yes_no(session: ProbeSession, images: ProbeImages, questions: Sequence[str], unclear: str | None = None) -> pl.DataFrame:
    """One row per (image, question): ``value`` = P(yes) on the answers given, ``probabilities`` =
    [S_yes, S_no] (with an unclear option u: [S_yes, S_no, S_u], and ``unclear`` = S_u / Σ S)."""
    answers = list(YES_NO_ANSWERS) + ([unclear] if unclear is not None else [])
    return _next_token_probe(session, images, questions, PROBE_YES_NO, answers, rating=False)


def ratings(session: ProbeSession, images: ProbeImages, prompts: Sequence[str], scale: int = 5) -> pl.DataFrame:
    """One row per (image, prompt): ``value`` = E[rating] on 1…scale, ``probabilities`` = [S_1 … S_scale]."""
    return _next_token_probe(session, images, prompts, PROBE_RATING, rating_answers(scale), rating=True)


def _next_token_probe(session: ProbeSession, images: ProbeImages, prompts: Sequence[str], probe: str,
                      answers: list[str], rating: bool) -> pl.DataFrame:
    pairs = _pairs(images, prompts)
    fields = [session.fields(probe, content_key=images.content_keys[i], prompt=p, answers=answers) for i, p in pairs]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        token_ids = session.runner.answer_token_ids(answers)
        pictures = images.load([pairs[k][0] for k in todo])
        texts = [session.render(pairs[k][1]) for k in todo]
        sums = session.runner.answer_sums(pictures, texts, list(token_ids.values()))
        return [{"sums": [float(x) for x in row]} for row in sums]

    answers_out = cached_answers(probe, fields, compute, session.cache, session.counts)
    sums = np.array([a["sums"] for a in answers_out], dtype=np.float64).reshape(len(pairs), len(answers))
    _, shares, mass = shares_from_sums(sums) if len(pairs) else (sums, sums, np.zeros(0))
    unclear = None
    if not rating and len(answers) > len(YES_NO_ANSWERS):  # the last answer is the unclear option
        unclear = shares[:, -1].tolist() if len(pairs) else []
        _, shares, _ = shares_from_sums(sums[:, : len(YES_NO_ANSWERS)]) if len(pairs) else (sums, sums, mass)
    value = expected_rating(shares) if rating else shares[:, 0] if len(pairs) else np.zeros(0)
    return pl.DataFrame(
        {
            "content_key": [images.content_keys[i] for i, _ in pairs],
            "probe": [probe] * len(pairs),
            "prompt": [p for _, p in pairs],
            "value": value.tolist() if len(pairs) else [],
            "answer_mass": mass.tolist(),
            "probabilities": sums.tolist(),
            "unclear": unclear if unclear is not None else [None] * len(pairs),
        },
        schema=PROBES_SCHEMA,
    )


# -- open-ended generation ---------------------------------------------------------------------


def generate(
    session: ProbeSession, images: ProbeImages, prompts: Sequence[str], *, samples: int, temperature: float,
    max_new_tokens: int, seed: int,
) -> pl.DataFrame:
    """One row per (image, prompt, sample): ``seed``, ``text``, ``tokens`` (:mod:`.sampling`)."""
    rows = [(i, p, s) for p in prompts for i in range(len(images)) for s in range(samples)]
    seeds = [sequence_seed(seed, images.content_keys[i], p, s) for i, p, s in rows]
    decoding = {"temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    fields = [
        session.fields(PROBE_GENERATION, content_key=images.content_keys[i], prompt=p, sample=s, **decoding)
        for i, p, s in rows
    ]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        pictures = images.load([rows[k][0] for k in todo])
        texts = [session.render(rows[k][1]) for k in todo]
        made = session.runner.generate(
            pictures, texts, [seeds[k] for k in todo], temperature=temperature, max_new_tokens=max_new_tokens
        )
        return [{"text": g.text, "tokens": g.tokens} for g in made]

    answers = cached_answers(PROBE_GENERATION, fields, compute, session.cache, session.counts)
    return pl.DataFrame(
        {
            "content_key": [images.content_keys[i] for i, _, _ in rows],
            "prompt": [p for _, p, _ in rows],
            "sample": [s for _, _, s in rows],
            "seed": seeds,
            "text": [a["text"] for a in answers],
            "tokens": [int(a["tokens"]) for a in answers],
        },
        schema={k: GENERATIONS_SCHEMA[k] for k in ("content_key", "prompt", "sample", "seed", "text", "tokens")},
    )


def toxicity(texts: Sequence[str], scorer: Any, model_key: str, cache: AnswerCache | None, counts: CallCounts,
             batch_size: int = 32) -> np.ndarray:
    """The toxicity of each text (:mod:`.toxicity`), cached by (text sha256, classifier identity)."""
    return np.array(text_scores(PROBE_TOXICITY, texts, scorer, model_key, cache, counts, batch_size), dtype=np.float64)


def text_scores(probe: str, texts: Sequence[str], scorer: Any, model_key: str, cache: AnswerCache | None,
                counts: CallCounts, batch_size: int = 32) -> list[Any]:
    """``scorer.score(texts)`` per text (a number, or a vector as a list), cached by (``probe``, text
    sha256, the scorer's model identity): toxicity, sentiment, the text embedding."""
    fields = [
        {"probe": probe, "version": PROBE_VERSION, "model": model_key,
         "text_sha256": hashlib.sha256(t.encode("utf-8")).hexdigest()}
        for t in texts
    ]

    def compute(todo: list[int]) -> list[dict[str, Any]]:
        scores = scorer.score([texts[k] for k in todo], batch_size=batch_size)
        return [{probe: v.tolist() if isinstance(v, np.ndarray) else float(v)} for v in scores]

    return [a[probe] for a in cached_answers(probe, fields, compute, cache, counts)]
