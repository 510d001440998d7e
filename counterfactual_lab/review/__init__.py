"""People check the counterfactuals: a stratified sample of a run's sets, a review page, the labels
beside the run (``OUT/<run>/review/labels.parquet``), and what they say about the judge.

* :mod:`~counterfactual_lab.review.sets`: the run's sets as a reviewer sees them;
* :mod:`~counterfactual_lab.review.sample`: the stratified, seeded sample (``review/sample.json``);
* :mod:`~counterfactual_lab.review.labels`: the labels file, written atomically per answer;
* :mod:`~counterfactual_lab.review.interchange`: CSV and Label Studio import and export;
* :mod:`~counterfactual_lab.review.agreement`: Cohen's κ and Krippendorff's α;
* :mod:`~counterfactual_lab.review.figures`: ``review.parquet`` and the review's metric rows;
* :mod:`~counterfactual_lab.review.exclusion`: leaving rejected sets out of an audit's metrics;
* :mod:`~counterfactual_lab.review.server`: the page (Starlette on uvicorn), imported by ``cflab review`` only.

The report shows the figures (``counterfactual_lab.report``, the layer above); ``cflab review RUN
--apply`` and the next audit of the run recompute them.
"""

from counterfactual_lab.review.agreement import cohen_kappa, krippendorff_alpha
from counterfactual_lab.review.figures import (
    HUMAN_VALIDITY_RATE,
    INTER_RATER_AGREEMENT,
    JUDGE_FALSE_ACCEPT_RATE,
    JUDGE_FALSE_REJECT_RATE,
    JUDGE_HUMAN_AGREEMENT,
    REVIEW_METRICS,
    STRATUM_REVIEW,
    ReviewFigures,
    review_figures,
)
from counterfactual_lab.review.labels import LABELS_SCHEMA, OTHER_CHANGE, TARGET_SHOWN, LabelStore, read_labels
from counterfactual_lab.review.sample import Sample, stratified_sample
from counterfactual_lab.review.sets import ReviewSet, review_sets

__all__ = [
    "HUMAN_VALIDITY_RATE", "INTER_RATER_AGREEMENT", "JUDGE_FALSE_ACCEPT_RATE", "JUDGE_FALSE_REJECT_RATE",
    "JUDGE_HUMAN_AGREEMENT", "LABELS_SCHEMA", "OTHER_CHANGE", "REVIEW_METRICS", "STRATUM_REVIEW", "TARGET_SHOWN",
    "LabelStore", "ReviewFigures", "ReviewSet", "Sample", "cohen_kappa", "krippendorff_alpha", "read_labels",
    "review_figures", "review_sets", "stratified_sample",
]
