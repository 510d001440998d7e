"""The judge for sets made from text alone (``text2image-sets``): members judged against each other.

SocialCounterfactuals filters its sets with three CLIP scores (text ≥ 0.2, directional ≥ 0.2,
image ≥ 0.7). Without a source photo there is no I₀ and T₀ to compare with, so each member j of
a set S (images I, prompts T, all embedded by the judge model) is compared with every other
member k of its set:

* ``text_similarity``      = cos(I_j, T_j)                              the image shows its prompt;
* ``direction_similarity`` = min over k ≠ j of cos(I_j − I_k, T_j − T_k)  every change of image
  follows the change of prompt (symmetric in j and k);
* ``image_similarity``     = min over k ≠ j of cos(I_j, I_k)              the members show one scene;
* ``attribute_margin``     = min over the attributes a the member varies of
  cos(I_j, P(v_a)) − max over other values w of a of cos(I_j, P(w)) (the zero-shot check of
  :mod:`counterfactual_lab.judge.edits`, per attribute); ``attribute_ok`` = margin > 0.

A member passes with the thresholds of ``judge.thresholds`` (and the attribute check when
``check_attribute``), exactly as :func:`counterfactual_lab.judge.scores.verdict` reads them. A member
whose set has no other usable member has no pairwise score: it is dropped with its set
(``set_incomplete``), or, in a set planned with one member, fails ``below_image_threshold``.
A set is kept only when every member passes; of the complete sets of one set template
(``source_id``) the best ``keep_per_target`` by the set's mean pairwise direction similarity
(mean over its unordered member pairs) are kept, whole (ties: lower seed first). Reasons as in
:mod:`counterfactual_lab.judge.edits`: the member's own failed check, else ``set_incomplete`` or
``not_best_set``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from counterfactual_lab.config.audit_config import JudgeSection
from counterfactual_lab.judge.scores import (
    DROP_GENERATION_FAILED,
    DROP_IMAGE,
    JudgeScores,
    _normalise,
    attribute_margin,
    attribute_prompt_for,
    keep_best_sets,
    verdict,
)


def pairwise_scores(images: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, direction) similarity matrices of one set's members: cos(I_j, I_k) and
    cos(I_j − I_k, T_j − T_k) (the diagonal is meaningless: NaN)."""
    i = _normalise(images)
    t = _normalise(texts)
    image = i @ i.T
    di = i[:, None, :] - i[None, :, :]
    dt = t[:, None, :] - t[None, :, :]
    norms = np.linalg.norm(di, axis=-1) * np.linalg.norm(dt, axis=-1)
    dots = np.sum(di * dt, axis=-1)
    direction = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    np.fill_diagonal(image, np.nan)
    np.fill_diagonal(direction, np.nan)
    return image, direction


def judge_member_sets(
    candidates: pl.DataFrame,
    judge: JudgeSection,
    embedder,
    load_image: Callable[[str], object],
    *,
    keep_per_target: int,
    vocabulary: dict[str, list[str]],
    batch_size: int = 32,
) -> pl.DataFrame:
    """Score and keep member sets (see the module docstring); the same output columns as
    :func:`counterfactual_lab.judge.edits.judge_candidates`. ``candidates`` need ``set_id``, ``seed``,
    ``source_id``, ``attribute_values`` (list of {attribute, value}), ``counterfactual_caption``,
    ``content_key``, ``image_uri``, ``status``, ``error``."""
    rows = candidates.to_dicts()
    usable = [i for i, r in enumerate(rows) if r["image_uri"] is not None and r["status"] != "failed"]
    scores: list[JudgeScores | None] = [None] * len(rows)
    set_direction: dict[str, float] = {}
    if usable:
        picked = [rows[i] for i in usable]
        images = embedder.embed_image_uris([r["image_uri"] for r in picked], [r["content_key"] for r in picked],
                                           load_image, batch_size=batch_size)
        texts = embedder.embed_texts([r["counterfactual_caption"] for r in picked], batch_size=batch_size)
        margins = _attribute_margins(picked, images, judge, embedder, vocabulary) if judge.check_attribute else {}
        by_set: dict[str, list[int]] = {}
        for j, row in enumerate(picked):
            by_set.setdefault(row["set_id"], []).append(j)
        text = np.sum(_normalise(images) * _normalise(texts), axis=-1)
        for set_id, members in by_set.items():
            image, direction = pairwise_scores(images[members], texts[members])
            if len(members) > 1:
                upper = direction[np.triu_indices(len(members), k=1)]
                set_direction[set_id] = float(np.mean(upper))
            for position, j in enumerate(members):
                alone = len(members) == 1
                margin = margins.get(j)
                scores[usable[j]] = JudgeScores(
                    content_key=picked[j]["content_key"],
                    text_similarity=float(text[j]),
                    direction_similarity=None if alone else float(np.nanmin(direction[position])),
                    image_similarity=float("nan") if alone else float(np.nanmin(image[position])),
                    attribute_ok=None if margin is None else bool(margin > 0),
                    attribute_margin=margin,
                )
    planned: dict[str, int] = {}
    for row in rows:
        planned[row["set_id"]] = planned.get(row["set_id"], 0) + 1
    reasons: list[str | None] = []
    for row, score in zip(rows, scores):
        if score is None:
            reasons.append(f"{DROP_GENERATION_FAILED}: {row.get('error') or 'no image was produced'}")
        elif score.direction_similarity is None:
            # No other member to compare with: its set lost them (set_incomplete follows), or never had any.
            reasons.append(None if planned[row["set_id"]] > 1 else DROP_IMAGE)
        else:
            reasons.append(verdict(score, judge))
    kept = _keep_whole_sets(rows, reasons, set_direction, keep_per_target)

    def column(name: str) -> list:
        return [None if s is None else getattr(s, name) for s in scores]

    image_column = [None if v is not None and np.isnan(v) else v for v in column("image_similarity")]
    return candidates.with_columns(
        pl.Series("text_similarity", column("text_similarity"), dtype=pl.Float64),
        pl.Series("direction_similarity", column("direction_similarity"), dtype=pl.Float64),
        pl.Series("image_similarity", image_column, dtype=pl.Float64),
        pl.Series("attribute_ok", column("attribute_ok"), dtype=pl.Boolean),
        pl.Series("attribute_margin", column("attribute_margin"), dtype=pl.Float64),
        pl.Series("kept", kept, dtype=pl.Boolean),
        pl.Series("drop_reason", reasons, dtype=pl.String),
    )


def _attribute_margins(picked: list[dict], images: np.ndarray, judge: JudgeSection, embedder,
                       vocabulary: dict[str, list[str]]) -> dict[int, float]:
    """Member index -> the smallest zero-shot margin over the attributes it varies (none checkable: absent)."""
    margins: dict[int, float] = {}
    prompts: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
    for j, row in enumerate(picked):
        for pair in row.get("attribute_values") or []:
            attribute, value = pair["attribute"], pair["value"]
            values = list(vocabulary.get(attribute, []))
            options = values if value in values else [*values, value]
            if len(options) < 2:
                continue
            key = (attribute, tuple(options))
            if key not in prompts:
                prompts[key] = embedder.embed_texts([attribute_prompt_for(judge, attribute, v) for v in options])
            margin = float(attribute_margin(images[j : j + 1], prompts[key], options.index(value))[0])
            margins[j] = min(margins.get(j, margin), margin)
    return margins


def _keep_whole_sets(rows: list[dict], reasons: list[str | None], set_direction: dict[str, float],
                     keep_per_target: int) -> list[bool]:
    kept = [False] * len(rows)
    sets: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        sets.setdefault(row["set_id"], []).append(i)

    def rank(members: list[int]) -> tuple[str, float, int]:
        first = rows[members[0]]
        return first["source_id"], set_direction.get(first["set_id"], -np.inf), first["seed"]

    keep_best_sets(sets.values(), reasons, kept, keep_per_target, rank)
    return kept
