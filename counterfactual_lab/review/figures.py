"""What people's labels say: ``review.parquet`` and the review rows of ``metrics.parquet``.

**A reviewer's verdict on a counterfactual**: *valid* when the target value is shown
(``target_shown`` yes) and nothing else that matters changed (``other_change`` none);
*invalid* when the target is not shown (no) or something else changed; *undecided* when the
reviewer could not tell and saw nothing else wrong. Several reviewers are combined by majority
over their decided verdicts; a tie is undecided. Undecided counterfactuals are left out of
every figure (and counted: ``n_undecided`` in ``review.parquet``). A set is **rejected** when
people call any of its counterfactuals invalid.

**The judge's verdict**: *pass* when the counterfactual passed its own checks (see
:mod:`counterfactual_lab.review.sets`: a member dropped only for another member's failure, or
for a better set, passed), else *fail*.

Metric rows (``stratum`` "review", never called, so they are outside the family-wise m; one
row over all attributes, ``attribute`` null, then one per attribute; n = decided
counterfactuals, n_sources = their source images):

* ``human_validity_rate`` = valid / (valid + invalid). Interval: Wilson's score interval
  (Wilson 1927) with the number of source images as n (the project's convention for clustered
  proportions: conservative, since a source's counterfactuals are not independent).
* ``judge_human_agreement`` = Cohen's κ between the judge (pass ↔ valid, fail ↔ invalid) and
  people (:mod:`counterfactual_lab.review.agreement`), with a cluster-bootstrap interval. Undefined
  where the judge passed (or failed) every reviewed counterfactual, or people called all of
  them valid (or invalid): κ is then 0 or undefined by construction.
* ``judge_false_accept_rate`` = share of the counterfactuals the judge passed that people call
  invalid; ``judge_false_reject_rate`` = share of those it failed that people call valid; Wilson
  intervals as above.
* ``inter_rater_agreement`` = Krippendorff's α, nominal, over the counterfactuals two or more
  reviewers answered (overall only): on the verdict (``label`` null; undecided is no answer),
  and on each question (``label`` ``target_shown``, where can't tell is no answer, and
  ``other_change``), with cluster-bootstrap intervals.

Under :data:`FEW_LABELS` decided counterfactuals a row's note says "few labels (n = …)".
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from counterfactual_lab.metrics.intervals import IntervalSettings, wilson_interval
from counterfactual_lab.metrics.schema import STRATUM_REVIEW, Estimate, metric_row, metrics_frame
from counterfactual_lab.review.agreement import alpha_estimate, kappa_estimate
from counterfactual_lab.review.labels import LABELS_NAME, OTHER_CHANGE, REVIEW_FOLDER
from counterfactual_lab.review.sets import MEMBERS_SCHEMA, ReviewSet, members_frame

HUMAN_VALIDITY_RATE = "human_validity_rate"
JUDGE_HUMAN_AGREEMENT = "judge_human_agreement"
JUDGE_FALSE_ACCEPT_RATE = "judge_false_accept_rate"
JUDGE_FALSE_REJECT_RATE = "judge_false_reject_rate"
INTER_RATER_AGREEMENT = "inter_rater_agreement"
REVIEW_METRICS = (HUMAN_VALIDITY_RATE, JUDGE_HUMAN_AGREEMENT, JUDGE_FALSE_ACCEPT_RATE, JUDGE_FALSE_REJECT_RATE,
                  INTER_RATER_AGREEMENT)
VALID, INVALID, UNDECIDED = "valid", "invalid", "undecided"
# Under this many decided counterfactuals the figures are a hint, and say so.
FEW_LABELS = 30

REVIEW_SCHEMA = {
    **MEMBERS_SCHEMA,
    "n_reviewers": pl.Int64, "n_valid": pl.Int64, "n_invalid": pl.Int64, "n_undecided": pl.Int64,
    "target_shown": pl.String, "other_change": pl.String,  # the majority answers (null on a tie)
    "verdict": pl.String,  # valid, invalid or undecided (people's, by majority)
    "set_rejected": pl.Boolean,  # people call some counterfactual of the set invalid
    "excluded": pl.Boolean,  # the set is left out of the audit's metrics (review.exclude_rejected)
}


def label_verdict(target_shown: str, other_change: str) -> str:
    """One reviewer's verdict on one counterfactual (module docstring)."""
    if target_shown == "no" or other_change != "none":
        return INVALID
    return VALID if target_shown == "yes" else UNDECIDED


def _majority(values: list[str]) -> str | None:
    counts = Counter(values).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def review_table(labels: pl.DataFrame, members: pl.DataFrame, excluded_sets: Collection[str] = ()) -> pl.DataFrame:
    """``review.parquet``: one row per reviewed counterfactual (:data:`REVIEW_SCHEMA`); ``excluded_sets``:
    the sets the audit's metrics leave out (``review.exclude_rejected``)."""
    if labels.is_empty():
        return pl.DataFrame(schema=REVIEW_SCHEMA)
    answered: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in labels.iter_rows(named=True):
        answered.setdefault((row["set_id"], row["member"]), []).append(row)
    rows = []
    for member in members.iter_rows(named=True):
        answers = answered.get((member["set_id"], member["member"]))
        if not answers:
            continue
        verdicts = [label_verdict(a["target_shown"], a["other_change"]) for a in answers]
        decided = [v for v in verdicts if v != UNDECIDED]
        rows.append({**member, "n_reviewers": len({a["reviewer"] for a in answers}),
                     "n_valid": verdicts.count(VALID), "n_invalid": verdicts.count(INVALID),
                     "n_undecided": verdicts.count(UNDECIDED),
                     "target_shown": _majority([a["target_shown"] for a in answers]),
                     "other_change": _majority([a["other_change"] for a in answers]),
                     "verdict": _majority(decided) or UNDECIDED})
    rejected = {r["set_id"] for r in rows if r["verdict"] == INVALID}
    excluded = set(excluded_sets)
    for row in rows:
        row["set_rejected"] = row["set_id"] in rejected
        row["excluded"] = row["set_id"] in excluded
    return pl.DataFrame(rows, schema=REVIEW_SCHEMA)


def rejected_sets(review: pl.DataFrame) -> list[str]:
    """The sets people rejected, sorted."""
    if review.is_empty():
        return []
    return sorted(review.filter(pl.col("set_rejected"))["set_id"].unique().to_list())


def _few(n: int) -> str | None:
    return f"few labels (n = {n}): read as a hint" if n < FEW_LABELS else None


def _wilson(hits: int, rows: pl.DataFrame, settings: IntervalSettings, undefined: str) -> Estimate:
    """hits / rows with Wilson's interval at n = the rows' source images."""
    n = rows.height
    sources = rows["source_id"].n_unique() if n else 0
    if n == 0:
        return Estimate.undefined(undefined)
    share = hits / n
    low, high = wilson_interval(share * sources, sources, settings.confidence)
    return Estimate(share, low, high, n, sources, None, _few(n))


def _kappa(decided: pl.DataFrame, settings: IntervalSettings) -> Estimate:
    judge = [VALID if p else INVALID for p in decided["judge_pass"].to_list()]
    people = decided["verdict"].to_list()
    if decided.is_empty():
        note = "no reviewed counterfactual has a decided verdict"
    elif len(set(judge)) < 2:
        note = (f"the judge {'passed' if judge[0] == VALID else 'failed'} every reviewed counterfactual: κ says "
                "nothing about it, its false-accept and false-reject rates do")
    elif len(set(people)) < 2:
        note = f"people called every reviewed counterfactual {people[0]}, so κ says nothing about the judge"
    else:
        note = "undefined"
    estimate = kappa_estimate(judge, people, decided["source_id"].to_list(), settings, [INVALID, VALID], note)
    return estimate.with_note(_few(decided.height)) if estimate.value is not None else estimate


def _verdict_answer(answer: dict[str, Any]) -> str | None:
    verdict = label_verdict(answer["target_shown"], answer["other_change"])
    return None if verdict == UNDECIDED else verdict


# inter_rater_agreement's questions: (label column, categories, one answer's category or None for no answer).
_QUESTIONS = (
    (None, (INVALID, VALID), _verdict_answer),
    ("target_shown", ("yes", "no"), lambda a: None if a["target_shown"] == "cant_tell" else a["target_shown"]),
    ("other_change", OTHER_CHANGE, lambda a: a["other_change"]),
)


def _inter_rater(labels: pl.DataFrame, members: pl.DataFrame, settings: IntervalSettings) -> list[dict[str, Any]]:
    """α over the counterfactuals two or more reviewers answered: verdict, target_shown, other_change."""
    source_of = {(r["set_id"], r["member"]): r["source_id"] for r in members.iter_rows(named=True)}
    by_member: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in labels.iter_rows(named=True):
        if (row["set_id"], row["member"]) in source_of:
            by_member.setdefault((row["set_id"], row["member"]), []).append(row)
    shared = sorted(key for key, answers in by_member.items() if len({a["reviewer"] for a in answers}) >= 2)
    rows = []
    for question, categories, answer in _QUESTIONS:
        units = [[answer(a) for a in by_member[key]] for key in shared]
        note = ("every shared answer is the same category, or too few are decided" if shared else
                "no counterfactual has answers from two reviewers yet; a second reviewer of the same sample gives it")
        estimate = alpha_estimate(units, [source_of[k] for k in shared], settings, list(categories), note)
        if estimate.value is not None:
            estimate = estimate.with_note(_few(len(shared)))
        rows.append(metric_row(INTER_RATER_AGREEMENT, STRATUM_REVIEW, None, estimate, label=question))
    return rows


def review_metric_rows(review: pl.DataFrame, labels: pl.DataFrame, members: pl.DataFrame,
                       settings: IntervalSettings) -> pl.DataFrame:
    """The review rows of ``metrics.parquet`` (module docstring), in the metrics table's schema."""
    rows: list[dict[str, Any]] = []
    decided_all = review.filter(pl.col("verdict") != UNDECIDED)
    attributes = sorted(decided_all["attribute"].unique().to_list()) if decided_all.height else []
    for attribute in [None, *attributes]:
        decided = decided_all if attribute is None else decided_all.filter(pl.col("attribute") == attribute)
        valid = decided.filter(pl.col("verdict") == VALID)
        passed = decided.filter(pl.col("judge_pass"))
        failed = decided.filter(~pl.col("judge_pass"))
        rows += [
            metric_row(HUMAN_VALIDITY_RATE, STRATUM_REVIEW, attribute, _wilson(
                valid.height, decided, settings, "no reviewed counterfactual has a decided verdict")),
            metric_row(JUDGE_HUMAN_AGREEMENT, STRATUM_REVIEW, attribute, _kappa(decided, settings)),
            metric_row(JUDGE_FALSE_ACCEPT_RATE, STRATUM_REVIEW, attribute, _wilson(
                passed.filter(pl.col("verdict") == INVALID).height, passed, settings,
                "the judge passed none of the reviewed counterfactuals")),
            metric_row(JUDGE_FALSE_REJECT_RATE, STRATUM_REVIEW, attribute, _wilson(
                failed.filter(pl.col("verdict") == VALID).height, failed, settings,
                "the judge failed none of the reviewed counterfactuals")),
        ]
    rows += _inter_rater(labels, members, settings)
    return metrics_frame(rows)


@dataclass(frozen=True)
class ReviewFigures:
    """A run's review, ready to publish: the table, the metric rows and the manifest's ``review`` block."""

    review: pl.DataFrame
    metrics: pl.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def interval_settings(manifest_metrics: dict[str, Any] | None) -> IntervalSettings:
    """The run's interval settings (the manifest's ``metrics`` block), so the review's intervals match its others."""
    found = manifest_metrics or {}
    return IntervalSettings(n_resamples=int(found.get("bootstrap_samples") or 1000),
                            confidence=float(found.get("confidence") or 0.95), seed=int(found.get("bootstrap_seed") or 0))


def labels_sha256(labels: pl.DataFrame) -> str:
    """A digest of the labels' content (not of the file's bytes): what tells a run's review is out of date."""
    rows = labels.sort(["reviewer", "set_id", "member"]).select(
        "reviewer", "set_id", "member", "target_shown", "other_change", "note").rows()
    return hashlib.sha256(json.dumps(rows, default=str).encode("utf-8")).hexdigest()


def review_figures(labels: pl.DataFrame, sets: list[ReviewSet], settings: IntervalSettings, *,
                   exclude_rejected: bool, excluded_sets: Collection[str] = (),
                   sample: dict[str, Any] | None = None) -> ReviewFigures:
    """Everything a run publishes about its review, from the labels and the run's sets.

    ``excluded_sets``: the sets the run's metrics were computed without (by the audit, under
    ``review.exclude_rejected``). The manifest block records the labels' digest and count, the
    reviewers, the sample's seed and size, the setting, and the rejected and excluded sets.
    """
    members = members_frame(sets)
    digest = labels_sha256(labels)  # of the whole file: what a later audit compares to see new labels
    # Labels of members the run no longer has (an earlier run of the same id) say nothing about this one.
    labels = labels.join(members.select("set_id", "member"), on=["set_id", "member"], how="semi")
    review = review_table(labels, members, excluded_sets)
    metrics = review_metric_rows(review, labels, members, settings)
    decided = review.filter(pl.col("verdict") != UNDECIDED).height if review.height else 0
    block = {
        "labels": f"{REVIEW_FOLDER}/{LABELS_NAME}",
        "labels_sha256": digest,
        "n_labels": labels.height,
        "reviewers": sorted(labels["reviewer"].unique().to_list()) if labels.height else [],
        "reviewed_counterfactuals": review.height,
        "decided_counterfactuals": decided,
        "sample": {k: sample[k] for k in ("seed", "size") if k in sample} if sample else None,
        "exclude_rejected": bool(exclude_rejected),
        "rejected_sets": rejected_sets(review),
        "excluded_sets": sorted(excluded_sets),
    }
    return ReviewFigures(review=review, metrics=metrics, manifest=block)


def is_review_row(metrics: pl.DataFrame) -> pl.Expr:
    """The review's rows of a metrics table (to replace them, or to leave them out of the findings)."""
    return pl.col("stratum") == STRATUM_REVIEW if "stratum" in metrics.columns else pl.lit(False)
