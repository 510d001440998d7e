"""CITS (the project's own score) on constructed embeddings: an unedited copy scores low, a real,
preserving, aligned edit scores high; and the rows of the metrics table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.metrics.cits import cits_from_embeddings, cits_score
from metric_frames import one, row


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


# Orthogonal concepts: e0 "a man", e1 "a woman", e2 the scene (a doctor at a desk), e3 something else.
E = np.eye(4)
T0, T1 = unit(E[0] + 0.2 * E[2]), unit(E[1] + 0.2 * E[2])  # "a man at his desk", "a woman at her desk"
I0 = unit(E[0] + E[2])  # the source photo: a man, the scene


def test_an_unedited_copy_scores_zero():
    copy = cits_from_embeddings(I0[None], T0[None], I0[None], T1[None])
    assert copy.tolist() == [0.0]  # I1 − I0 = 0 has no direction


def test_a_real_preserving_aligned_edit_scores_high():
    # The man becomes a woman, the scene stays: a = cos(I1, T1), d = cos(I1 − I0, T1 − T0) = 1, p = cos(I0, I1) = 1/2.
    edit = unit(E[1] + E[2])
    a = float(edit @ T1)
    expected = 3 / (1 / a + 1 / 1.0 + 1 / 0.5)
    score = cits_from_embeddings(I0[None], T0[None], edit[None], T1[None])[0]
    assert score == pytest.approx(expected) and score > 0.6
    # A slightly noisy copy: tiny d, so a low score, far below the edit.
    noisy = unit(I0 + 0.01 * E[3])
    assert cits_from_embeddings(I0[None], T0[None], noisy[None], T1[None])[0] < 0.05


def test_an_edit_that_loses_the_scene_or_goes_the_wrong_way_scores_zero():
    unrelated = unit(E[1])  # a woman, but the scene is gone: p = cos(I0, I1) = 0
    assert cits_from_embeddings(I0[None], T0[None], unrelated[None], T1[None])[0] == 0.0
    backwards = unit(2 * E[0] + E[2])  # more "man" than before: d < 0
    assert cits_from_embeddings(I0[None], T0[None], backwards[None], T1[None])[0] == 0.0


def test_cits_score_by_hand():
    # a = 0.3, d = 0.2, p = 0.8: 3 / (1/0.3 + 1/0.2 + 1/0.8) = 3 / 9.583333 = 0.313043
    assert cits_score(0.3, 0.2, 0.8) == pytest.approx(3 / (1 / 0.3 + 1 / 0.2 + 1 / 0.8))
    assert cits_score(0.3, 0.2, 0.8) == pytest.approx(0.313043, abs=1e-6)
    assert cits_score([0.3, 0.3], [-0.1, 0.0], [0.8, 0.8]).tolist() == [0.0, 0.0]


def test_cits_rows_average_kept_counterfactuals_by_source():
    counterfactuals = pl.DataFrame({
        "source_id": ["s1", "s1", "s2", "s3", "s4"],
        "attribute": ["gender"] * 5,
        "variant": ["counterfactual", "counterfactual", "counterfactual", "reconstruction", "counterfactual"],
        "source_value": ["male", "male", "female", "female", "male"],
        "target_value": ["female", "female", "male", "female", "female"],
        "kept": [True, True, True, True, False],
        "text_similarity": [0.3, 0.3, 0.1, 0.3, 0.9],
        "direction_similarity": [0.2, 0.2, 0.0, None, 0.9],
        "image_similarity": [0.8, 0.8, 0.6, 0.95, 0.9],
    })
    predictions = pl.DataFrame([row("s1-o", "s1", "original", "male", 0.8)])
    metrics = compute_metrics(predictions, pl.DataFrame(), counterfactuals, AuditSection(bootstrap_samples=100))
    # Kept counterfactuals: s1 twice (0.313043 each), s2 once (d = 0 -> 0). The reconstruction and the dropped one are out.
    overall = one(metrics, "cits", group=None)
    assert overall["value"] == pytest.approx(2 * 0.313043 / 3, abs=1e-6) and (overall["n"], overall["n_sources"]) == (3, 2)
    assert overall["stratum"] == "generated"  # the counterfactuals table has reconstructions
    assert one(metrics, "cits", group="female→male")["value"] == 0.0
