"""The judge: prove that each generated candidate really is the image asked for.

Over-generate, then judge (the filtering of InstructPix2Pix and SocialCounterfactuals, plus
an attribute check they lack). Every candidate is scored with a CLIP-family judge model:

* ``text_similarity``      = cos(I₁, T₁)            the image shows its caption (alignment);
* ``direction_similarity`` = cos(I₁ − I₀, T₁ − T₀)  the image moved the way the caption moved
  (I₀: the set's reconstruction in sets, else the original; see below);
* ``image_similarity``     = cos(I₀, I₁)            the rest of the scene was preserved;
* ``attribute_margin``     = cos(I₁, P(target)) − max over other values v of cos(I₁, P(v)),
  with P(v) the attribute prompt of value v; ``attribute_ok`` = margin > 0.

A counterfactual passes when each similarity reaches its threshold (``JudgeSection.thresholds``)
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
against each other (:mod:`counterfactual_lab.judge.sets`).

Off-target drift (:mod:`counterfactual_lab.judge.drift`, with ``judge.max_drift`` set and sets
with reconstructions): :func:`judge_with_drift` also reads what else changed between each set's
reconstruction and its counterfactuals, and drops a counterfactual whose drift exceeds what a
seed change alone does by more than ``max_drift`` (``off_target_drift``), before the sets are
kept; it returns the readings (``drift.parquet``) beside the judged frame.

Every other candidate keeps the reason it was dropped (``drop_reason``): its own failed check
(``generation_failed: <error>``, ``below_text_threshold``, ``below_direction_threshold``,
``below_image_threshold``, ``attribute_check_failed``, ``off_target_drift``), else
``set_incomplete`` (it passed but another member of its set did not), ``not_best_set`` (its set
was complete but others ranked higher) or, per target, ``not_best_of_target``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from counterfactual_lab.config.audit_config import JudgeSection
from counterfactual_lab.config.methods import made_from_text
from counterfactual_lab.judge.drift import drift_frame, empty_drift, empty_readings, read_drift, set_rule
from counterfactual_lab.judge.scores import (
    DROP_GENERATION_FAILED,
    DROP_NOT_BEST,
    DROP_OFF_TARGET_DRIFT,
    JudgeScores,
    attribute_margin,
    attribute_prompt_for,
    directional_similarity,
    image_similarity,
    keep_best_sets,
    text_similarity,
    verdict,
)
from counterfactual_lab.judge.sets import judge_member_sets
from counterfactual_lab.plan.work_items import VARIANT_RECONSTRUCTION

REQUIRED_COLUMNS = (
    "content_key", "source_key", "source_image_uri", "image_uri", "caption", "counterfactual_caption",
    "attribute", "source_value", "target_value", "seed", "status", "error",
)


def _check_columns(candidates: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(f"judge_candidates: the candidates frame lacks columns {missing}")


def score_candidates(
    candidates: pl.DataFrame,
    judge: JudgeSection,
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
                prompts = embedder.embed_texts([attribute_prompt_for(judge, attribute, v, vocabulary) for v in options])
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


def is_reconstruction(row: dict) -> bool:
    """True for a reconstruction or control candidate (a row without ``variant`` is a counterfactual)."""
    return row.get("variant") == VARIANT_RECONSTRUCTION


def judge_candidates(
    candidates: pl.DataFrame,
    judge: JudgeSection,
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
    sets, others per target; see the module docstring for both rules. No drift is read
    (:func:`judge_with_drift` reads it).
    """
    judged, _ = judge_with_drift(candidates, judge, embedder, load_image, keep_per_target=keep_per_target,
                                 vocabulary=vocabulary, drift_vocabulary=None, batch_size=batch_size)
    return judged


def judge_with_drift(
    candidates: pl.DataFrame,
    judge: JudgeSection,
    embedder,
    load_image: Callable[[str], object],
    *,
    keep_per_target: int,
    vocabulary: dict[str, list[str]],
    drift_vocabulary: dict[str, list[str]] | None,
    batch_size: int = 32,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(:func:`judge_candidates`' frame, the off-target drift readings: ``drift.parquet``).

    With ``judge.max_drift`` set and ``drift_vocabulary`` given (the other protected attributes'
    values, ``{}`` for none), sets with reconstructions get their drift read and the set rule
    (:func:`counterfactual_lab.judge.drift.set_rule`) drops a counterfactual as ``off_target_drift``
    before the sets are kept; otherwise the drift frame is empty and nothing more is dropped.
    """
    if keep_per_target < 1:
        raise ValueError(f"keep_per_target must be at least 1, got {keep_per_target}")
    if _made_from_text(candidates):  # no source photo: members are judged against each other
        return judge_member_sets(candidates, judge, embedder, load_image, keep_per_target=keep_per_target,
                                 vocabulary=vocabulary, batch_size=batch_size), empty_drift()
    _check_columns(candidates)
    scores = score_candidates(candidates, judge, embedder, load_image, vocabulary=vocabulary, batch_size=batch_size)
    # Only what the verdicts, the drift and the set rule read: at 10^5 candidates every column as
    # Python objects is ~270 MB of the judge's peak (bench/scale.py).
    rows = candidates.select([c for c in _JUDGED_ROW_COLUMNS if c in candidates.columns]).to_dicts()
    reasons: list[str | None] = []
    for row, score in zip(rows, scores):
        if score is None:
            error = row.get("error") or "no image was produced"
            reasons.append(f"{DROP_GENERATION_FAILED}: {error}")
        else:
            reasons.append(verdict(score, judge))

    source_column = "source_id" if "source_id" in candidates.columns else "source_key"
    by_sets = any(is_reconstruction(row) for row in rows)
    readings = empty_readings()
    exceeded: Sequence[bool] = []
    if by_sets and judge.max_drift is not None and drift_vocabulary is not None:
        readings = read_drift(rows, judge, embedder, load_image, source=source_column, drift_vocabulary=drift_vocabulary,
                              batch_size=batch_size)
        exceeded = set_rule(readings)
        for target in readings["_to"].filter(pl.Series(exceeded, dtype=pl.Boolean)).to_list():
            if reasons[target] is None:
                reasons[target] = DROP_OFF_TARGET_DRIFT
    if by_sets:
        kept = _keep_sets(rows, scores, reasons, keep_per_target, source_column)
    else:
        kept = _keep_per_target(rows, scores, reasons, keep_per_target, source_column)

    def column(name: str) -> list:
        return [None if s is None else getattr(s, name) for s in scores]

    judged = candidates.with_columns(
        pl.Series("text_similarity", column("text_similarity"), dtype=pl.Float64),
        pl.Series("direction_similarity", column("direction_similarity"), dtype=pl.Float64),
        pl.Series("image_similarity", column("image_similarity"), dtype=pl.Float64),
        pl.Series("attribute_ok", column("attribute_ok"), dtype=pl.Boolean),
        pl.Series("attribute_margin", column("attribute_margin"), dtype=pl.Float64),
        pl.Series("kept", kept, dtype=pl.Boolean),
        pl.Series("drop_reason", reasons, dtype=pl.String),
    )
    return judged, drift_frame(readings, exceeded, kept)


# The candidate columns judge_with_drift reads per row (verdicts, drift pairs and readings, set rule).
_JUDGED_ROW_COLUMNS = ("source_id", "source_key", "attribute", "target_value", "variant", "control", "seed", "set_id",
                     "method", "content_key", "image_uri", "mask_uri", "status", "error")


def _made_from_text(candidates: pl.DataFrame) -> bool:
    """True when every candidate was made by a method without a source image (``text2image-sets``)."""
    if candidates.is_empty() or "method" not in candidates.columns or candidates["method"].null_count():
        return False
    return made_from_text(candidates["method"].to_list())


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


