"""The judge: prove that each generated candidate really is the image asked for.

Over-generate, then judge (the filtering of InstructPix2Pix and SocialCounterfactuals, plus
an attribute check they lack). Every candidate is scored with a CLIP-family judge model:

* ``text_similarity``      = cos(I₁, T₁)            the image shows its caption (alignment);
* ``direction_similarity`` = cos(I₁ − I₀, T₁ − T₀)  the image moved the way the caption moved
  (I₀: the set's reconstruction in sets, else the original; see below);
* ``image_similarity``     = cos(I₀, I₁)            the rest of the scene was preserved;
* ``attribute_margin``     = cos(I₁, P(target)) − max over other values v of cos(I₁, P(v)),
  with P(v) the attribute prompt of value v; ``attribute_ok`` = margin > 0.

A counterfactual passes when each similarity reaches its threshold (``JudgeConfig.thresholds``)
and, if ``check_attribute``, the attribute check holds. A reconstruction (``variant``
"reconstruction": the source's own value, caption unchanged, so T₁ = T₀) has no direction:
it is scored on alignment and preservation only (``direction_similarity`` and the attribute
check null, never a reason to drop).

Which image is I₀. Preservation (``image_similarity``) is always measured against the real
original: it asks whether the scene survived. The direction, in sets, is measured from the
set's reconstruction (same source, attribute and seed; T₀ its caption, the unchanged one): the
reconstruction carries the generator's own artifact, which the counterfactual carries too, so
I₁ − I_reconstruction is the edit alone, while I₁ − I_original is the edit plus that artifact,
which can dominate it and scores an unedited copy almost as well as a real edit. Where the set
has no reconstruction image (it failed; its set is dropped anyway) and with
``generation.reconstruction: false`` the direction is measured from the original, as before.

Which candidates are kept:

* **sets** (the candidates carry reconstructions): a set is the reconstruction and the
  counterfactuals of one (source, attribute, seed). A set is complete when every member
  passes; among the complete sets of one (source, attribute) the best ``keep_per_target`` by
  the mean direction similarity of their counterfactual members are kept, whole (ties: lower
  seed first). A control item (``control``) is kept when it passes on its own.
* **per target** (no reconstructions: ``generation.reconstruction: false``): among the passing
  candidates of one (source, attribute, target value) the best ``keep_per_target`` by direction
  similarity are kept.

Sets made from text alone (``text2image-sets``) have no source photo: their members are judged
against each other (:mod:`counterfactual_lab.set_judge`).

Every other candidate keeps the reason it was dropped (``drop_reason``): its own failed check
(``generation_failed: <error>``, ``below_text_threshold``, ``below_direction_threshold``,
``below_image_threshold``, ``attribute_check_failed``), else ``set_incomplete`` (it passed but
another member of its set did not), ``not_best_set`` (its set was complete but others ranked
higher) or, per target, ``not_best_of_target``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from counterfactual_lab.config import JudgeConfig
from counterfactual_lab.plan import VARIANT_RECONSTRUCTION

DROP_GENERATION_FAILED = "generation_failed"
DROP_TEXT = "below_text_threshold"
DROP_DIRECTION = "below_direction_threshold"
DROP_IMAGE = "below_image_threshold"
DROP_ATTRIBUTE = "attribute_check_failed"
DROP_NOT_BEST = "not_best_of_target"
DROP_SET_INCOMPLETE = "set_incomplete"
DROP_NOT_BEST_SET = "not_best_set"

REQUIRED_COLUMNS = (
    "content_key", "source_key", "source_image_uri", "image_uri", "caption", "counterfactual_caption",
    "attribute", "source_value", "target_value", "seed", "status", "error",
)
SCORE_COLUMNS = ("text_similarity", "direction_similarity", "image_similarity", "attribute_ok", "attribute_margin")


@dataclass(frozen=True)
class JudgeScores:
    """The judge's verdict inputs for one candidate."""

    content_key: str
    text_similarity: float
    direction_similarity: float | None  # None for a reconstruction: its caption did not move
    image_similarity: float
    attribute_ok: bool | None
    attribute_margin: float | None


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    # A zero vector has no direction: leave it zero so its cosine with anything is 0.
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays (a zero row gives 0)."""
    return np.sum(_normalise(a) * _normalise(b), axis=-1)


def text_similarity(i1: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """cos(I₁, T₁): alignment of each counterfactual image with its counterfactual caption."""
    return cosine_rows(i1, t1)


def directional_similarity(i0: np.ndarray, i1: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """cos(I₁ − I₀, T₁ − T₀) (Gal et al. 2022). An unchanged image or caption gives 0."""
    return cosine_rows(np.asarray(i1, float) - np.asarray(i0, float), np.asarray(t1, float) - np.asarray(t0, float))


def image_similarity(i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    """cos(I₀, I₁): how much of the source image the counterfactual preserved."""
    return cosine_rows(i0, i1)


def attribute_margin(i1: np.ndarray, prompt_embeddings: np.ndarray, target_index: int) -> np.ndarray:
    """cos(I₁, P_target) − max_{v ≠ target} cos(I₁, P_v) for each image row.

    ``prompt_embeddings`` is (V, d), one row per attribute value, ``target_index`` the
    target's row. Positive means the target value's prompt wins the zero-shot check.
    """
    prompts = _normalise(prompt_embeddings)
    if prompts.shape[0] < 2:
        raise ValueError("the attribute check needs the target and at least one other value")
    sims = _normalise(i1) @ prompts.T
    others = np.delete(sims, target_index, axis=1)
    return sims[:, target_index] - others.max(axis=1)


def attribute_prompt_for(judge: JudgeConfig, attribute: str, value: str) -> str:
    """The zero-shot prompt for one attribute value.

    A template the user set in ``judge.attribute_prompt`` wins; with the default template the
    vocabulary-aware prompt of :mod:`counterfactual_lab.text_counterfactual` is used when
    that module provides one (it knows "a photo of a woman" reads better than
    "a photo of a female person").
    """
    default = JudgeConfig.model_fields["attribute_prompt"].default
    if judge.attribute_prompt == default:
        try:
            from counterfactual_lab.text_counterfactual import attribute_prompt
        except ImportError:
            pass
        else:
            return attribute_prompt(attribute, value)
    return judge.attribute_prompt.format(value=value, attribute=attribute)


def _check_columns(candidates: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"judge_candidates: the candidates frame lacks columns {missing}")


def score_candidates(
    candidates: pl.DataFrame,
    judge: JudgeConfig,
    embedder,
    load_image: Callable[[str], object],
    *,
    vocabulary: dict[str, list[str]],
    batch_size: int = 32,
) -> list[JudgeScores | None]:
    """Judge scores for each candidate row in order (None for a candidate without an image)."""
    rows = candidates.to_dicts()
    usable = [i for i, r in enumerate(rows) if r["image_uri"] is not None and r["status"] != "failed"]
    scores: list[JudgeScores | None] = [None] * len(rows)
    if not usable:
        return scores
    picked = [rows[i] for i in usable]
    i0 = embedder.embed_image_uris(
        [r["source_image_uri"] for r in picked], [r["source_key"] for r in picked], load_image, batch_size=batch_size
    )
    i1 = embedder.embed_image_uris(
        [r["image_uri"] for r in picked], [r["content_key"] for r in picked], load_image, batch_size=batch_size
    )
    t0 = embedder.embed_texts([r["caption"] for r in picked], batch_size=batch_size)
    t1 = embedder.embed_texts([r["counterfactual_caption"] for r in picked], batch_size=batch_size)
    text_sim = text_similarity(i1, t1)
    edited = [not is_reconstruction(r) for r in picked]
    direction_sim = directional_similarity(direction_origins(picked, i0, i1), i1, t0, t1)
    image_sim = image_similarity(i0, i1)

    margins: list[float | None] = [None] * len(picked)
    if judge.check_attribute:
        # Counterfactuals only: a reconstruction is judged on alignment and preservation.
        checked = [r if e else None for r, e in zip(picked, edited)]
        for attribute in sorted({r["attribute"] for r in checked if r}):
            values = list(vocabulary.get(attribute, []))
            for target in sorted({r["target_value"] for r in checked if r and r["attribute"] == attribute}):
                options = values if target in values else [*values, target]
                if len(options) < 2:
                    continue  # nothing to compare against: the check cannot say anything
                prompts = embedder.embed_texts([attribute_prompt_for(judge, attribute, v) for v in options])
                idx = [j for j, r in enumerate(checked) if r and r["attribute"] == attribute and r["target_value"] == target]
                m = attribute_margin(i1[idx], prompts, options.index(target))
                for j, value in zip(idx, m):
                    margins[j] = float(value)

    for j, row_index in enumerate(usable):
        margin = margins[j]
        scores[row_index] = JudgeScores(
            content_key=picked[j]["content_key"],
            text_similarity=float(text_sim[j]),
            direction_similarity=float(direction_sim[j]) if edited[j] else None,
            image_similarity=float(image_sim[j]),
            attribute_ok=None if margin is None else bool(margin > 0),
            attribute_margin=margin,
        )
    return scores


def direction_origins(rows: list[dict], originals: np.ndarray, images: np.ndarray) -> np.ndarray:
    """I₀ of each row's direction (see the module docstring): for a counterfactual whose set has
    a reconstruction among ``rows``, that reconstruction's embedding (``images`` row); else the
    original's (``originals`` row). ``rows``, ``originals`` and ``images`` are aligned."""
    origins = np.array(originals, dtype=np.float64, copy=True)
    reconstruction_of = {
        _set_key(row): j for j, row in enumerate(rows) if is_reconstruction(row) and not row.get("control")
    }
    for j, row in enumerate(rows):
        k = None if is_reconstruction(row) else reconstruction_of.get(_set_key(row))
        if k is not None:
            origins[j] = images[k]
    return origins


def _set_key(row: dict) -> tuple:
    """(source, attribute, seed): the set a candidate belongs to (``source_id`` when present)."""
    source = row["source_id"] if row.get("source_id") is not None else row["source_key"]
    return source, row["attribute"], row["seed"]


def verdict(score: JudgeScores, judge: JudgeConfig) -> str | None:
    """The first failed check of a scored candidate (thresholds, then attribute), or None if it passes."""
    t = judge.thresholds
    # Written as "not >=" so a NaN score (e.g. an fp16 overflow) fails the check instead of passing it.
    if not score.text_similarity >= t.text:
        return DROP_TEXT
    # A reconstruction has no direction (None): nothing to check.
    if score.direction_similarity is not None and not score.direction_similarity >= t.direction:
        return DROP_DIRECTION
    if not score.image_similarity >= t.image:
        return DROP_IMAGE
    if judge.check_attribute and score.attribute_ok is False:
        return DROP_ATTRIBUTE
    return None


def is_reconstruction(row: dict) -> bool:
    """True for a reconstruction or control candidate (a row without ``variant`` is a counterfactual)."""
    return row.get("variant") == VARIANT_RECONSTRUCTION


def judge_candidates(
    candidates: pl.DataFrame,
    judge: JudgeConfig,
    embedder,
    load_image: Callable[[str], object],
    *,
    keep_per_target: int,
    vocabulary: dict[str, list[str]],
    batch_size: int = 32,
) -> pl.DataFrame:
    """Score every candidate, decide keep or drop, and say why.

    Input: one row per candidate (see ``REQUIRED_COLUMNS``; ``variant`` and ``control``
    optional, ``source_id`` preferred over ``source_key`` to tell sources apart). Output:
    the same rows, in the same order, plus ``text_similarity``, ``direction_similarity``,
    ``image_similarity``, ``attribute_ok``, ``attribute_margin``, ``kept`` and
    ``drop_reason`` (null when kept). Candidates that hold any reconstruction are kept by
    sets, others per target; see the module docstring for both rules.
    """
    if keep_per_target < 1:
        raise ValueError(f"keep_per_target must be at least 1, got {keep_per_target}")
    if _made_from_text(candidates):  # no source photo: members are judged against each other
        from counterfactual_lab.set_judge import judge_member_sets

        return judge_member_sets(candidates, judge, embedder, load_image, keep_per_target=keep_per_target,
                                 vocabulary=vocabulary, batch_size=batch_size)
    _check_columns(candidates)
    scores = score_candidates(candidates, judge, embedder, load_image, vocabulary=vocabulary, batch_size=batch_size)
    rows = candidates.to_dicts()
    reasons: list[str | None] = []
    for row, score in zip(rows, scores):
        if score is None:
            error = row.get("error") or "no image was produced"
            reasons.append(f"{DROP_GENERATION_FAILED}: {error}")
        else:
            reasons.append(verdict(score, judge))

    source_column = "source_id" if "source_id" in candidates.columns else "source_key"
    if any(is_reconstruction(row) for row in rows):
        kept = _keep_sets(rows, scores, reasons, keep_per_target, source_column)
    else:
        kept = _keep_per_target(rows, scores, reasons, keep_per_target, source_column)

    def column(name: str) -> list:
        return [None if s is None else getattr(s, name) for s in scores]

    return candidates.with_columns(
        pl.Series("text_similarity", column("text_similarity"), dtype=pl.Float64),
        pl.Series("direction_similarity", column("direction_similarity"), dtype=pl.Float64),
        pl.Series("image_similarity", column("image_similarity"), dtype=pl.Float64),
        pl.Series("attribute_ok", column("attribute_ok"), dtype=pl.Boolean),
        pl.Series("attribute_margin", column("attribute_margin"), dtype=pl.Float64),
        pl.Series("kept", kept, dtype=pl.Boolean),
        pl.Series("drop_reason", reasons, dtype=pl.String),
    )


def _made_from_text(candidates: pl.DataFrame) -> bool:
    """True when every candidate was made by a method without a source image (``text2image-sets``)."""
    from counterfactual_lab.method_params import SOURCELESS_METHODS

    return (candidates.height > 0 and "method" in candidates.columns
            and set(candidates["method"].drop_nulls().to_list()) <= SOURCELESS_METHODS
            and candidates["method"].null_count() == 0)


def _keep_per_target(
    rows: list[dict], scores: list[JudgeScores | None], reasons: list[str | None], keep_per_target: int, source: str
) -> list[bool]:
    """The best ``keep_per_target`` passing candidates per (source, attribute, target); marks the rest."""
    passing: dict[tuple, list[int]] = {}
    for i, (row, reason) in enumerate(zip(rows, reasons)):
        if reason is None:
            passing.setdefault((row[source], row["attribute"], row["target_value"]), []).append(i)
    kept = [False] * len(rows)
    for members in passing.values():
        ranked = sorted(members, key=lambda i: (-scores[i].direction_similarity, rows[i]["seed"], rows[i]["content_key"]))
        for rank, i in enumerate(ranked):
            if rank < keep_per_target:
                kept[i] = True
            else:
                reasons[i] = DROP_NOT_BEST
    return kept


def _keep_sets(
    rows: list[dict], scores: list[JudgeScores | None], reasons: list[str | None], keep_per_target: int, source: str
) -> list[bool]:
    """Whole complete sets, the best ``keep_per_target`` per (source, attribute); controls on their own."""
    kept = [False] * len(rows)
    sets: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("control"):
            kept[i] = reasons[i] is None
        else:
            sets.setdefault((row[source], row["attribute"], row["seed"]), []).append(i)

    def rank(members: list[int]) -> tuple[tuple, float, int]:
        first = rows[members[0]]
        directions = [scores[i].direction_similarity for i in members if not is_reconstruction(rows[i])]
        # A set without counterfactuals (the config lists only the source's value) ranks by seed alone.
        mean = float(np.mean(directions)) if directions else -np.inf
        return (first[source], first["attribute"]), mean, first["seed"]

    keep_best_sets(sets.values(), reasons, kept, keep_per_target, rank)
    return kept


def keep_best_sets(
    sets: Iterable[list[int]], reasons: list[str | None], kept: list[bool], keep_per_target: int,
    rank: Callable[[list[int]], tuple[Any, float, int]],
) -> None:
    """Judge whole sets of row indices, in place: a set with a failed member drops whole
    (``set_incomplete``); ``rank(members)`` gives a complete set's (group, score, seed), and the
    ``keep_per_target`` highest scores of each group are kept (ties: lowest seed), the others
    drop as ``not_best_set``."""
    complete: dict[Any, list[tuple[float, int, list[int]]]] = {}
    for members in sets:
        if any(reasons[i] is not None for i in members):
            for i in members:
                if reasons[i] is None:
                    reasons[i] = DROP_SET_INCOMPLETE
            continue
        group, score, seed = rank(members)
        complete.setdefault(group, []).append((score, seed, members))
    for ranked_sets in complete.values():
        ranked_sets.sort(key=lambda entry: (-entry[0], entry[1]))
        for position, (_, _, members) in enumerate(ranked_sets):
            for i in members:
                if position < keep_per_target:
                    kept[i] = True
                else:
                    reasons[i] = DROP_NOT_BEST_SET
