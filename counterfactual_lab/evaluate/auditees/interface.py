"""One interface for every model under audit: what a probe gets, and what it returns.

A model under audit (an *auditee*) is asked about **distinct images**, never about pool rows:
an image appears in the evaluation pool once per attribute, and its answers do not depend on
which attribute it is compared under. So every probe gets

* :class:`ProbeImages` — the images by ``content_key`` with their ``image_uri`` and a
  ``load_image(uri) -> PIL image`` (images are read only when an answer must be computed);
* the prompts from the config (``audit.choice_prompt`` + ``audit.labels``, ``audit.yes_no``,
  ``audit.ratings``, ``audit.generate``);

and returns frames keyed by ``content_key``. :meth:`Auditee.answer` takes pool rows (``POOL_SCHEMA``
of :mod:`counterfactual_lab.evaluate.pool`) and a loader and returns :class:`AuditeeAnswers`: the label
probe joined back onto the pool rows (``predictions``) and the other probes' frames. Kinds
(:mod:`counterfactual_lab.evaluate.auditees.kinds`):

=================  ===========================================  =====================================
kind               answers                                      module
=================  ===========================================  =====================================
``contrastive``    zero-shot ``score_<label>``, ``top1``,       :mod:`.contrastive` (today's CLIP /
                   caption similarity, retrieval scores         SigLIP path, unchanged)
``vlm``            choice, yes/no, ratings, generations         :mod:`.probes` over :mod:`.generative`
``captioner``      choice (caption likelihood), generations     the same
=================  ===========================================  =====================================

Frames (their schemas below; ``run_id`` and ``dataset`` are added when published):

* ``choice``: ``content_key, score_<label>…, top1`` — joined into ``predictions.parquet``;
* ``probes``: ``content_key, probe, prompt, value, answer_mass, probabilities, unclear`` — one row
  per (image, yes/no question or rating prompt, in each of its phrasings); published as ``probes.parquet``;
* ``generations``: ``content_key, prompt, sample, seed, text, tokens, toxicity, sentiment, embedding`` — with the text
  scores of :mod:`.text_scores` added (``refusal``, ``words``, ``lexicon_<category>``), published
  as ``generations.parquet``;
* ``retrieval`` (contrastive only): ``query, id, content_key, score``.

Where the pool has person-word readings (a template with ``{person}``,
:mod:`counterfactual_lab.evaluate.readings`), each answer is per (image, word): ``probes`` and
``generations`` gain a ``person`` column (the word; a template without ``{person}`` is asked once
per image and its answer stands for every word), and ``choice`` joins back on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

# The person word an answer was asked with (a template with {person}; counterfactual_lab/evaluate/readings.py):
# a column of the probes and generations frames then, null for a template without it.
PERSON = "person"
PROBE_CHOICE = "choice"
PROBE_YES_NO = "yes_no"
PROBE_RATING = "rating"
# A negative-control question (audit.negative_controls of a vlm): asked as a yes/no question, measured
# as a confound diagnostic, never as a probe of the bias (counterfactual_lab/metrics/diagnostics.py).
PROBE_NEGATIVE_CONTROL = "negative_control"
PROBE_GENERATION = "generation"
PROBE_TOXICITY = "toxicity"
PROBE_SENTIMENT = "sentiment"
PROBE_TEXT_EMBEDDING = "text_embedding"

PROBES_SCHEMA = {
    "content_key": pl.String,
    "probe": pl.String,  # yes_no | rating | negative_control
    "prompt": pl.String,
    "value": pl.Float64,  # P(yes), or the expected rating
    "answer_mass": pl.Float64,  # next-token probability the answers cover (S_yes + S_no, Σ S_k)
    "probabilities": pl.List(pl.Float64),  # S per answer: [S_yes, S_no] or [S_1 … S_scale] ([S_yes, S_no, S_unclear])
    # The "unclear" answer's share S_unclear / (S_yes + S_no + S_unclear); null unless audit.unclear_option.
    "unclear": pl.Float64,
}

GENERATIONS_SCHEMA = {
    "content_key": pl.String,
    "prompt": pl.String,
    "sample": pl.Int64,
    "seed": pl.Int64,
    "text": pl.String,
    "tokens": pl.Int64,
    "toxicity": pl.Float64,  # null without audit.toxicity_model
    "sentiment": pl.Float64,  # P(positive) − P(negative); null without audit.sentiment_model
    "embedding": pl.List(pl.Float32),  # the text's unit embedding; null without audit.text_embedder
}


@dataclass(frozen=True)
class ProbeImages:
    """Distinct images by content key, where they are, and how to read one (read on demand)."""

    content_keys: tuple[str, ...]
    image_uris: tuple[str, ...]
    load_image: Callable[[str], Any]
    load_workers: int = 4

    def __post_init__(self) -> None:
        if len(self.content_keys) != len(self.image_uris):
            raise ValueError(f"{len(self.content_keys)} content keys but {len(self.image_uris)} image URIs")
        if len(set(self.content_keys)) != len(self.content_keys):
            raise ValueError("ProbeImages holds each image once: content keys must be distinct")

    @classmethod
    def from_pool(cls, pool: pl.DataFrame, load_image: Callable[[str], Any]) -> "ProbeImages":
        """The distinct images (by ``content_key``, first URI) of evaluation pool rows."""
        unique = pool.select("content_key", "image_uri").unique(subset="content_key", keep="first", maintain_order=True)
        return cls(tuple(unique["content_key"].to_list()), tuple(unique["image_uri"].to_list()), load_image)

    def __len__(self) -> int:
        return len(self.content_keys)

    def load(self, indices: Sequence[int]) -> list[Any]:
        """The images at ``indices`` (repeats allowed), each distinct one read once, on a few threads
        (object-store reads wait on the network, not the CPU)."""
        distinct = list(dict.fromkeys(indices))
        if not distinct:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.load_workers, len(distinct)))) as pool:
            loaded = dict(zip(distinct, pool.map(lambda i: self.load_image(self.image_uris[i]), distinct)))
        return [loaded[i] for i in indices]


RETRIEVAL_SCHEMA = {"query": pl.String, "id": pl.String, "content_key": pl.String, "score": pl.Float64}


@dataclass
class AuditeeAnswers:
    """What a model under audit answered about a chunk of the evaluation pool (module doc).

    ``predictions``: the pool rows, plus ``score_<label>``, ``top1`` and ``caption_similarity``
    when the model has a label probe (always for a contrastive model; a generative one with
    ``audit.choice_prompt``, its caption similarity null). ``counts``: answers computed by the
    model vs served from the output store's cache, and cache objects written (None for a
    contrastive model, whose embeddings are cached in memory only). ``cache_shards``: the answer
    shards written (id → the image content keys they answer about), for the cache's index.
    """

    predictions: pl.DataFrame
    retrieval: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=RETRIEVAL_SCHEMA))
    probes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PROBES_SCHEMA))
    generations: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=GENERATIONS_SCHEMA))
    counts: dict[str, int] | None = None
    cache_shards: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def concat(parts: Sequence["AuditeeAnswers"]) -> "AuditeeAnswers":
        """The answers of several chunks as one (an image in two chunks keeps one set of answers)."""
        if not parts:
            raise ValueError("no answers to concatenate")
        counted = [p.counts for p in parts if p.counts is not None]
        probes = pl.concat([p.probes for p in parts], how="diagonal_relaxed")
        generations = pl.concat([p.generations for p in parts], how="diagonal_relaxed")
        # An answer is one per (image, person word) where a template has {person} (evaluate/readings.py).
        person = [PERSON] if PERSON in probes.columns else []
        return AuditeeAnswers(
            predictions=pl.concat([p.predictions for p in parts], how="diagonal_relaxed"),
            retrieval=pl.concat([p.retrieval for p in parts], how="diagonal_relaxed"),
            probes=probes.unique(subset=["content_key", "probe", "prompt", *person], keep="first", maintain_order=True),
            generations=generations.unique(
                subset=["content_key", "prompt", "sample", *([PERSON] if PERSON in generations.columns else [])],
                keep="first", maintain_order=True),
            counts={k: sum(c.get(k, 0) for c in counted) for k in ("computed", "cached", "objects_written")}
            if counted else None,
            cache_shards={k: v for p in parts for k, v in p.cache_shards.items()},
        )


class Auditee(Protocol):
    """A model under audit: answers every probe the config lists for rows of the evaluation pool."""

    kind: str

    def answer(self, pool: pl.DataFrame, load_image: Callable[[str], Any],
               cache_shards: Sequence[str] | None = None) -> AuditeeAnswers:
        """Every configured probe's answers for the pool rows ``pool`` (module doc); ``cache_shards``:
        the answer-cache shards that may hold them (None: the cache's index is asked)."""
        ...
