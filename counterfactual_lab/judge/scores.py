"""The scores every judge shares: CLIP-space similarities, the attribute margin, the verdict a
candidate gets from its scores, the drop reasons, and the ranking of whole sets.

Formulas (all embeddings L2-normalised): text similarity cos(I₁, T₁); direction similarity
cos(I₁ − I₀, T₁ − T₀); image similarity cos(I₀, I₁); attribute margin the target value's
zero-shot probability minus the best other value's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from counterfactual_lab.config.audit_config import JudgeSection
from counterfactual_lab.config.intersections import JOINT_SEPARATOR, joint_values
from counterfactual_lab.plan.captions import attribute_prompt, joint_attribute_prompt

DROP_GENERATION_FAILED = "generation_failed"
DROP_TEXT = "below_text_threshold"
DROP_DIRECTION = "below_direction_threshold"
DROP_IMAGE = "below_image_threshold"
DROP_ATTRIBUTE = "attribute_check_failed"
DROP_NOT_BEST = "not_best_of_target"
DROP_SET_INCOMPLETE = "set_incomplete"
DROP_NOT_BEST_SET = "not_best_set"
# The generator changed too much besides the attribute (counterfactual_lab/judge/drift.py).
DROP_OFF_TARGET_DRIFT = "off_target_drift"
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


def attribute_prompt_for(judge: JudgeSection, attribute: str, value: str,
                         vocabulary: dict[str, list[str]] | None = None) -> str:
    """The zero-shot prompt for one attribute value.

    A template the user set in ``judge.attribute_prompt`` wins; with the default template the
    vocabulary-aware prompt of :mod:`counterfactual_lab.plan.captions` is used when
    that module provides one (it knows "a photo of a woman" reads better than
    "a photo of a female person"). A joint attribute's value (``race+gender``: ``Black male``,
    :mod:`counterfactual_lab.config.intersections`) names every part at once ("a photo of a Black
    man") when ``vocabulary`` holds its attributes' values.
    """
    default = JudgeSection.model_fields["attribute_prompt"].default
    if judge.attribute_prompt == default:
        names = attribute.split(JOINT_SEPARATOR)
        parts = joint_values(names, vocabulary).get(value) if len(names) > 1 and vocabulary else None
        if parts is not None:
            return joint_attribute_prompt(list(zip(names, parts)))
        return attribute_prompt(attribute, value)
    return judge.attribute_prompt.format(value=value, attribute=attribute)


def verdict(score: JudgeScores, judge: JudgeSection) -> str | None:
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
