"""What a reviewer looks at: a run's counterfactual sets, read from ``counterfactuals.parquet``.

A **set** is the reconstruction and the counterfactuals of one (source, attribute, seed): the
rows of one ``set_id`` that are not a control. Its **members** are its counterfactuals that have
an image (a failed generation has none to look at), keyed by their ``content_key``; a reviewer
answers on each. Beside them the page shows the set's references: the source image (the
original), the reconstruction (same editor and seed, value unchanged) and the control (the
same source and attribute, another seed, value unchanged), where the run has them.

The judge's verdict on a member, as the review compares it with people's:

* ``judge_kept``: the member was kept (the run's metrics use it);
* ``judge_pass``: the member passed its own checks (thresholds and attribute check). A member
  dropped only because of others (``set_incomplete``: another member failed;
  ``not_best_set``/``not_best_of_target``: a better set of the same source was kept) passed:
  the judge did not call *it* invalid, so people calling it valid is no false rejection.

A set the audit left out because people rejected it (``rejected_by_review``) counts as the judge
left it: kept, and passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.judge.scores import DROP_NOT_BEST, DROP_NOT_BEST_SET, DROP_SET_INCOMPLETE
from counterfactual_lab.plan.work_items import VARIANT_COUNTERFACTUAL, VARIANT_RECONSTRUCTION

# Why a set the judge kept was dropped after all: people rejected it and the audit leaves such
# sets out (``review.exclude_rejected``: :mod:`counterfactual_lab.review.exclusion`). The judge kept it.
DROP_REJECTED_BY_REVIEW = "rejected_by_review"
# Drop reasons that say nothing against the member itself (see the module docstring).
PASSED_OWN_CHECKS = (DROP_SET_INCOMPLETE, DROP_NOT_BEST_SET, DROP_NOT_BEST, DROP_REJECTED_BY_REVIEW)
# What the page reveals once a set is answered: the judge's scores of each member.
JUDGE_SCORES = ("text_similarity", "direction_similarity", "image_similarity", "attribute_margin")
REQUIRED_COLUMNS = ("set_id", "source_id", "attribute", "source_value", "target_value", "variant", "content_key",
                    "image_uri", "kept")


@dataclass(frozen=True)
class Member:
    """One counterfactual of a set: what it should show, its image, and (hidden until answered) the judge's view."""

    member: str
    target_value: str
    image_uri: str
    caption: str | None
    judge_kept: bool
    judge_pass: bool
    drop_reason: str | None
    scores: dict[str, float | None]


@dataclass(frozen=True)
class ReviewSet:
    """One set as a reviewer sees it (see the module docstring)."""

    set_id: str
    source_id: str
    attribute: str
    source_value: str
    members: tuple[Member, ...]
    original_uri: str | None
    original_caption: str | None
    reconstruction_uri: str | None
    control_uri: str | None

    @property
    def kept(self) -> bool:
        """The judge kept the set: every member kept (a set is kept or dropped whole)."""
        return all(m.judge_kept for m in self.members)

    @property
    def transition(self) -> str:
        """``male→female``; a set with several targets: ``middle-aged→elderly+young``."""
        return f"{self.source_value}→{'+'.join(sorted({m.target_value for m in self.members}))}"

    @property
    def stratum(self) -> tuple[str, str, str]:
        """What the sample is stratified over: attribute, transition and the judge's verdict."""
        return self.attribute, self.transition, "kept" if self.kept else "dropped"


def judge_kept(kept: bool, drop_reason: str | None) -> bool:
    """Whether the judge kept a member (a set people rejected afterwards still counts as kept)."""
    return bool(kept) or drop_reason == DROP_REJECTED_BY_REVIEW


def judge_passed(kept: bool, drop_reason: str | None) -> bool:
    """Whether the judge passed a member on its own checks (see the module docstring)."""
    return bool(kept) or drop_reason in PASSED_OWN_CHECKS


def review_sets(counterfactuals: pl.DataFrame, run_uri: str = "the run") -> list[ReviewSet]:
    """The run's reviewable sets, ordered by set id; raises :class:`UserError` when there are none."""
    if counterfactuals.is_empty() or not set(REQUIRED_COLUMNS) <= set(counterfactuals.columns):
        raise UserError(f"run {run_uri} has no counterfactual images to review (its counterfactuals.parquet is "
                        "empty or absent: an evaluate-only run, or a run that generated nothing)")
    frame = counterfactuals
    if "control" not in frame.columns:
        frame = frame.with_columns(pl.lit(False).alias("control"))
    frame = frame.with_columns(pl.col("control").fill_null(False), pl.col("kept").fill_null(False))
    rows = frame.to_dicts()
    controls: dict[tuple[str, str], str] = {}
    by_set: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["control"]:
            if row["image_uri"]:
                controls.setdefault((row["source_id"], row["attribute"]), row["image_uri"])
        elif row["set_id"] is not None:
            by_set.setdefault(row["set_id"], []).append(row)
    sets = []
    for set_id in sorted(by_set):
        members_rows = [r for r in by_set[set_id] if r["variant"] == VARIANT_COUNTERFACTUAL and r["image_uri"]]
        if not members_rows:
            continue
        reconstruction = next((r for r in by_set[set_id] if r["variant"] == VARIANT_RECONSTRUCTION), None)
        first = members_rows[0]
        members = tuple(
            Member(member=r["content_key"], target_value=str(r["target_value"]), image_uri=r["image_uri"],
                   caption=r.get("counterfactual_caption"), judge_kept=judge_kept(r["kept"], r.get("drop_reason")),
                   judge_pass=judge_passed(r["kept"], r.get("drop_reason")), drop_reason=r.get("drop_reason"),
                   scores={k: r.get(k) for k in JUDGE_SCORES})
            for r in sorted(members_rows, key=lambda r: (str(r["target_value"]), r["content_key"])))
        sets.append(ReviewSet(
            set_id=set_id, source_id=str(first["source_id"]), attribute=str(first["attribute"]),
            source_value=str(first["source_value"]), members=members,
            original_uri=first.get("source_image_uri"), original_caption=first.get("caption"),
            reconstruction_uri=reconstruction["image_uri"] if reconstruction else None,
            control_uri=controls.get((first["source_id"], first["attribute"])),
        ))
    if not sets:
        raise UserError(f"run {run_uri} has no counterfactual images to review (no counterfactual in "
                        "counterfactuals.parquet has an image: every generation failed)")
    return sets


def members_frame(sets: list[ReviewSet]) -> pl.DataFrame:
    """One row per member of ``sets``: what the review's figures join people's answers with."""
    rows = [{"set_id": s.set_id, "member": m.member, "source_id": s.source_id, "attribute": s.attribute,
             "source_value": s.source_value, "target_value": m.target_value, "judge_kept": m.judge_kept,
             "judge_pass": m.judge_pass, "drop_reason": m.drop_reason}
            for s in sets for m in s.members]
    return pl.DataFrame(rows, schema=MEMBERS_SCHEMA)


MEMBERS_SCHEMA = {"set_id": pl.String, "member": pl.String, "source_id": pl.String, "attribute": pl.String,
                  "source_value": pl.String, "target_value": pl.String, "judge_kept": pl.Boolean,
                  "judge_pass": pl.Boolean, "drop_reason": pl.String}
