"""How much a generated answer changes between the reference image and its counterfactual.

A gap in toxicity or length says *which way* answers move; it misses an answer that changes
completely while keeping its toxicity and length. LangFair's counterfactual metrics compare the
texts themselves. For an open-ended prompt (``audit.generate``), per pair (from → to) of the run's
design, with ``T_from`` and ``T_to`` the S generated samples of each image:

    answer_change(measure) = 1 − (1/S²) Σ_{s,t} sim(T_from[s], T_to[t])

the mean over every sample of one side against every sample of the other (no pairing of samples
by index: their seeds are unrelated), so 0 means the same answers and 1 nothing in common:

* ``measure`` ``rouge_l``: sim = ROUGE-L F1 (the longest common subsequence of their words;
  Lin 2004) from the ``rouge-score`` package, on lowercased words (runs of letters and digits, any
  script; two empty answers are the same);
* ``measure`` ``embedding_cosine`` (with ``audit.text_embedder``): sim = the cosine of the texts'
  unit embeddings (``embedding`` in ``generations.parquet``).

Rows ``answer_change`` (query = the prompt as configured, ``measure``) per attribute, overall and
per transition, and ``control_answer_change`` beside them in the ``generated`` stratum: the same
over the control pairs, whose two images differ only by the generator's seed. An answer that
changes more across the attribute than across seeds is called like a mean |Δ|: its interval above
its control's, by at least ``audit.min_effect`` (the probability scale), in the run's family.
Without a control (``evaluate_only``, ``real_vs_generated``) it is reported. Intervals resample
source images (and phrasings, for a prompt asked in several: :mod:`.phrasings`).

The sentiment gap (``audit.sentiment_model``) is a probe family, ``sentiment`` (its
``sentiment_gap_abs`` / ``_signed`` and ``sentiment_mean`` rows, :mod:`.generative`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from rouge_score import rouge_scorer

from counterfactual_lab.metrics.counterfactual_fairness import ANSWER_CHANGE, pair_estimates, pair_subsets
from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.metrics.pairs import PAIRS_BY_DESIGN, control_pairs
from counterfactual_lab.metrics.phrasings import by_query, phrased_rows, stack_phrasings
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, STRATUM_GENERATED, Estimate, metric_row

ROUGE_L, EMBEDDING_COSINE = "rouge_l", "embedding_cosine"
MEASURES = (ROUGE_L, EMBEDDING_COSINE)
NO_CONTROL_PAIRS = "no control pairs (no kept control image beside a kept set of the same source)"
_WORD = re.compile(r"\w+", re.UNICODE)


class _Words:
    """rouge-score's tokenizer interface over lowercased words of any script (its default keeps ASCII only)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall((text or "").lower())


class TextSimilarity:
    """ROUGE-L F1 of two texts, each pair computed once."""

    def __init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
        self._words = _Words()
        self._seen: dict[tuple[str, str], float] = {}

    def rouge_l(self, a: str, b: str) -> float:
        key = (a, b) if a <= b else (b, a)
        if key not in self._seen:
            if not self._words.tokenize(a) and not self._words.tokenize(b):
                self._seen[key] = 1.0  # two empty answers are the same answer
            else:
                self._seen[key] = float(self._scorer.score(a, b)["rougeL"].fmeasure)
        return self._seen[key]


def rouge_change(texts_from: Sequence[str], texts_to: Sequence[str], similarity: TextSimilarity) -> float:
    """1 − the mean ROUGE-L F1 over every (sample of one side, sample of the other)."""
    return 1.0 - float(np.mean([similarity.rouge_l(a, b) for a in texts_from for b in texts_to]))


def embedding_change(from_vectors: np.ndarray, to_vectors: np.ndarray) -> float:
    """1 − the mean cosine over every (sample, sample) of two sides' unit embeddings."""
    return 1.0 - float((np.asarray(from_vectors, dtype=np.float64) @ np.asarray(to_vectors, dtype=np.float64).T).mean())


def _answers(generations: pl.DataFrame) -> tuple[dict[tuple[str, str], list[str]], dict[tuple[str, str], np.ndarray]]:
    """(content_key, prompt) → its samples' texts, and → their embeddings (where every sample has one)."""
    texts: dict[tuple[str, str], list[str]] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    embedded = "embedding" in generations.columns
    ordered = generations.sort(["content_key", "prompt", "sample"])
    for (key, prompt), group in ordered.group_by(["content_key", "prompt"], maintain_order=True):
        texts[(key, prompt)] = group["text"].fill_null("").to_list()
        if embedded and group["embedding"].null_count() == 0:
            vectors[(key, prompt)] = np.array(group["embedding"].to_list(), dtype=np.float64)
    return texts, vectors


def _pairs(pool: pl.DataFrame, keys: set[str], build: Any) -> pl.DataFrame:
    """``build`` (a pair function) over the pool rows with answers, carrying their content keys."""
    frame = pool.filter(pl.col("content_key").is_in(list(keys))).with_columns(
        pl.lit("-").alias("top1"), pl.col("content_key").alias("score_key"))
    return build(frame, ["key"])


def _with_changes(pairs: pl.DataFrame, prompt_of: str | None, texts, vectors, measures, similarity) -> pl.DataFrame:
    """``pairs`` with one ``change_<measure>`` column per measure."""
    prompts = pairs["phrasing"].to_list() if "phrasing" in pairs.columns else [prompt_of] * pairs.height
    columns: dict[str, list[float]] = {m: [] for m in measures}
    for a, b, prompt in zip(pairs["score_key_from"].to_list(), pairs["score_key_to"].to_list(), prompts):
        columns[ROUGE_L].append(rouge_change(texts[(a, prompt)], texts[(b, prompt)], similarity))
        if EMBEDDING_COSINE in columns:
            columns[EMBEDDING_COSINE].append(embedding_change(vectors[(a, prompt)], vectors[(b, prompt)]))
    return pairs.with_columns(pl.Series(f"change_{m}", values, dtype=pl.Float64) for m, values in columns.items())


def _floored(estimate: Estimate, min_sources: int) -> Estimate:
    if estimate.value is None or estimate.n_sources >= min_sources:
        return estimate
    note = f"fewer than min_group_size={min_sources} source images ({estimate.n_sources}): no interval"
    return estimate.without_interval().with_note(note)


def answer_change_rows(pool: pl.DataFrame, generations: pl.DataFrame, attribute: str, design: str, audit: Any,
                       settings: IntervalSettings, min_sources: int = 1) -> list[dict[str, Any]]:
    """``answer_change`` (and its control) rows of one attribute's pool rows (module doc)."""
    if generations is None or generations.height == 0 or "text" not in generations.columns:
        return []
    texts, vectors = _answers(generations)
    similarity = TextSimilarity()
    rows: list[dict[str, Any]] = []
    for query, phrasings in by_query(generations["prompt"].unique(maintain_order=True).to_list(), audit).items():
        keys = {text: {k for k, p in texts if p == text} for text in phrasings}
        embedded = all(vectors.get((k, text)) is not None for text in phrasings for k in keys[text])
        measures = [ROUGE_L] + ([EMBEDDING_COSINE] if embedded and vectors else [])
        single = phrasings[0] if len(phrasings) == 1 else None

        def changed(build) -> pl.DataFrame:
            stacked = stack_phrasings([(text, _pairs(pool, keys[text], build)) for text in phrasings])
            return _with_changes(stacked, single, texts, vectors, measures, similarity) if stacked.height else stacked

        def measured(pairs: pl.DataFrame, control: bool) -> list[dict[str, Any]]:
            out = []
            subsets = [(None, pairs)] if control else pair_subsets(pairs)
            for transition, subset in subsets:
                if subset.height == 0:
                    estimates = [Estimate.undefined(NO_CONTROL_PAIRS if control else "no pairs with an answer on both images")
                                 ] * len(measures)
                else:
                    columns = np.column_stack([subset[f"change_{m}"].to_numpy() for m in measures])
                    estimates = [_floored(e, min_sources) for e in pair_estimates(columns, subset, settings)]
                for measure, estimate in zip(measures, estimates):
                    metric = CONTROL_PREFIX + ANSWER_CHANGE if control else ANSWER_CHANGE
                    out.append(metric_row(metric, design, attribute, estimate, group=transition, query=query, measure=measure))
            return out

        pairs = changed(PAIRS_BY_DESIGN[design])
        rows += phrased_rows(lambda p: measured(p, False), pairs)
        if design == STRATUM_GENERATED:
            controls = changed(control_pairs)
            rows += (phrased_rows(lambda p: measured(p, True), controls, with_spread=False) if pairs.height
                     else measured(controls, True))
    return rows
