"""Skew@K, MaxSkew@K, MinSkew@K, NDKL and NDKL@K worked by hand (Geyik et al. 2019), no smoothing."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.metrics.retrieval import ndkl, ranking_replicates, skew_at_k, uniform_distribution
from metric_frames import generated_predictions, one, row

# Ranked best first: f f m f m m; desired D = uniform (1/2, 1/2).
RANKED = ["f", "f", "m", "f", "m", "m"]
UNIFORM = uniform_distribution(["f", "m"])
QUERY = "a photo of a doctor"


def test_skew_at_k_by_hand():
    # K = 3: top 3 = f f m -> P(f) = 2/3, P(m) = 1/3; Skew_f = ln(4/3) ≈ 0.28768, Skew_m = ln(2/3) ≈ −0.40547.
    skews = skew_at_k(RANKED, 3, UNIFORM)
    assert skews == {"f": pytest.approx(math.log(4 / 3)), "m": pytest.approx(math.log(2 / 3))}
    # K = 6 is the whole ranking, which has the desired mix: every skew is 0.
    assert skew_at_k(RANKED, 6, UNIFORM) == {"f": pytest.approx(0.0), "m": pytest.approx(0.0)}
    assert skew_at_k(RANKED, 100, UNIFORM) == skew_at_k(RANKED, 6, UNIFORM)


def test_a_group_absent_from_the_top_k_is_absent_not_smoothed():
    # K = 2: top = f f. m is absent: its skew is −∞, reported as None (no ε decides a value).
    assert skew_at_k(RANKED, 2, UNIFORM) == {"f": pytest.approx(math.log(2)), "m": None}


def test_ndkl_over_the_whole_ranking_and_truncated_by_hand():
    # Prefix shares of f and KL(P_i ‖ (1/2, 1/2)):
    #   i=1 (1, 0)     ln 2                          = 0.693147
    #   i=2 (1, 0)     ln 2                          = 0.693147
    #   i=3 (2/3, 1/3) 2/3 ln(4/3) + 1/3 ln(2/3)     = 0.056633
    #   i=4 (3/4, 1/4) 3/4 ln(3/2) + 1/4 ln(1/2)     = 0.130812
    #   i=5 (3/5, 2/5) 3/5 ln(6/5) + 2/5 ln(4/5)     = 0.020136
    #   i=6 (1/2, 1/2) 0
    # discounts 1/log2(i+1) = 1, 0.630930, 0.5, 0.430677, 0.386853, 0.356207; Z = 3.304667
    # NDKL   = (0.693147 + 0.437327 + 0.028317 + 0.056338 + 0.007790) / 3.304667 = 0.370058
    # NDKL@3 = (0.693147 + 0.437327 + 0.028317) / 2.130930                    = 0.543796
    kl = [math.log(2), math.log(2), 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3),
          3 / 4 * math.log(3 / 2) + 1 / 4 * math.log(1 / 2), 3 / 5 * math.log(6 / 5) + 2 / 5 * math.log(4 / 5), 0.0]
    d = [1 / math.log2(i + 2) for i in range(6)]
    whole = sum(k * w for k, w in zip(kl, d)) / sum(d)
    assert whole == pytest.approx(0.370058, abs=1e-6)
    assert ndkl(RANKED, UNIFORM) == pytest.approx(whole)
    assert ndkl(RANKED, UNIFORM, k=3) == pytest.approx(0.543796, abs=1e-6)
    assert ndkl(["f", "m", "f", "m"], UNIFORM, k=4) > 0  # the first prefix is never balanced
    assert ndkl(["f", "m", "f", "m"], UNIFORM) < ndkl(["f", "f", "m", "m"], UNIFORM)


def test_resampled_copies_of_an_image_sit_together_in_the_ranking():
    # Items f, m, f (best first), drawn 2, 0 and 1 times: the ranking is f f f.
    codes = np.array([0, 1, 0])
    stats = ranking_replicates(codes, np.array([[2, 0, 1], [1, 1, 1]]), 2, 2, np.array([0.5, 0.5]))
    assert stats["skew"][0, 0] == pytest.approx(math.log(2)) and np.isnan(stats["skew"][0, 1])
    assert np.isnan(stats["min_skew"][0]) and stats["max_skew"][0] == pytest.approx(math.log(2))
    assert stats["ndkl"][0] == pytest.approx(math.log(2))  # every prefix is all f
    assert stats["skew"][1].tolist() == [0.0, 0.0]  # f m: the desired mix
    assert stats["ndkl_k"][1] == pytest.approx(math.log(2) / (1 + 1 / math.log2(3)))


def retrieval(scores: dict[str, float]) -> pl.DataFrame:
    return pl.DataFrame({"query": [QUERY] * len(scores), "id": list(scores), "content_key": [f"k-{i}" for i in scores],
                         "score": list(scores.values())})


def test_retrieval_rows_of_the_generated_sets_by_hand():
    # Generated pool (controls and originals excluded): ranked s1-r(m) s2-r(m) s1-c(f) s3-c(m) s2-c(f) s3-r(f) s4-c(m) s4-r(f).
    scores = {"s1-r": 0.9, "s2-r": 0.8, "s1-c": 0.7, "s3-c": 0.6, "s2-c": 0.5, "s3-r": 0.4, "s4-c": 0.3, "s4-r": 0.2,
              "s1-x": 0.99, "s1-o": 0.98}  # the control and an original outscore everything, but are not in the pool
    audit = AuditSection(labels=["doctor", "nurse"], queries=[QUERY], top_k=2, bootstrap_samples=200, min_group_size=1)
    metrics = compute_metrics(generated_predictions(), retrieval(scores), pl.DataFrame(), audit, {"gender": ["female", "male"]})
    generated = metrics.filter(pl.col("stratum") == "generated")
    absent = one(generated, "skew@2", group="female")
    assert absent["value"] is None and absent["note"] == "female is absent from the top 2 (0 of 2): skew is −∞"
    top = one(generated, "max_skew@2")
    assert (top["group"], top["value"], top["n"], top["n_sources"]) == ("male", pytest.approx(math.log(2)), 8, 4)
    assert one(generated, "min_skew@2")["value"] is None
    assert one(generated, "ndkl@2")["value"] == pytest.approx(math.log(2))
    # The whole ranking m m f m f f m f (an original or the control in it would change this).
    assert one(generated, "ndkl")["value"] == pytest.approx(ndkl(["m", "m", "f", "m", "f", "f", "m", "f"], UNIFORM))


def test_observational_retrieval_wants_the_pool_mix():
    # Originals: 3 male, 1 female, ranked m f m m. K = 2: P = (f 1/2, m 1/2), D = pool mix (1/4, 3/4).
    # Skew_f = ln(0.5 / 0.25) = ln 2; Skew_m = ln(0.5 / 0.75) = ln(2/3).
    frame = pl.DataFrame([row("o1", "o1", "original", "male", 0.8), row("o2", "o2", "original", "female", 0.8),
                          row("o3", "o3", "original", "male", 0.8), row("o4", "o4", "original", "male", 0.8)])
    audit = AuditSection(labels=["doctor", "nurse"], queries=[QUERY], top_k=2, bootstrap_samples=100, min_group_size=1)
    metrics = compute_metrics(frame, retrieval({"o1": 0.9, "o2": 0.8, "o3": 0.7, "o4": 0.6}), pl.DataFrame(), audit)
    assert one(metrics, "skew@2", group="female")["value"] == pytest.approx(math.log(2))
    assert one(metrics, "skew@2", group="male")["value"] == pytest.approx(math.log(2 / 3))
    assert set(metrics["stratum"]) == {"observational"}


def test_each_image_is_ranked_once_when_chunks_score_it_twice():
    scores = {"s1-r": 0.9, "s2-r": 0.8, "s1-c": 0.7, "s3-c": 0.6, "s2-c": 0.5, "s3-r": 0.4, "s4-c": 0.3, "s4-r": 0.2}
    audit = AuditSection(labels=["doctor", "nurse"], queries=[QUERY], top_k=3, bootstrap_samples=100, min_group_size=1)
    once = compute_metrics(generated_predictions(), retrieval(scores), pl.DataFrame(), audit)
    twice = compute_metrics(generated_predictions(), pl.concat([retrieval(scores), retrieval(scores).slice(1, 3)]), pl.DataFrame(), audit)
    is_retrieval = pl.col("metric").str.contains("skew|ndkl")
    assert once.filter(is_retrieval).equals(twice.filter(is_retrieval))


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="empty"):
        skew_at_k([], 3, UNIFORM)
    with pytest.raises(ValueError, match="K must be at least 1"):
        skew_at_k(RANKED, 0, UNIFORM)
    with pytest.raises(ValueError, match=r"groups \['x'\] are not in the desired distribution"):
        ndkl(["x"], UNIFORM)


def _large_ranking(sources: int, seed: int = 0) -> pl.DataFrame:
    """A ranked pool of ``sources`` × 2 images (a reconstruction and a counterfactual, one of each gender)."""
    rng = np.random.default_rng(seed)
    n = 2 * sources
    return pl.DataFrame({"id": [f"i{i}" for i in range(n)], "content_key": [f"k{i}" for i in range(n)],
                         "source_id": [f"s{i // 2}" for i in range(n)], "group": ["female", "male"] * sources,
                         "score": rng.random(n)}).sort("score", descending=True)


def _peak_bytes(ranked: pl.DataFrame, settings) -> int:
    import tracemalloc

    from counterfactual_lab.metrics.retrieval import retrieval_rows

    tracemalloc.start()
    try:
        retrieval_rows(ranked, "gender", "generated", QUERY, 10, settings, ["female", "male"])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bootstrap_memory_of_retrieval_does_not_grow_with_the_pool():
    # Each resample expands to its whole ranking (N items × G prefix shares): blocks of resamples are
    # sized by N·G, so the peak is one block's, whatever N. Sized by sources alone, 1,000 resamples of
    # 3,000 images took 358 MiB and of 6,000 images ~700 MiB.
    from counterfactual_lab.metrics.intervals import _CHUNK_CELLS, IntervalSettings

    settings = IntervalSettings(1000)
    small, large = (_peak_bytes(_large_ranking(s), settings) for s in (1500, 3000))
    bound = 48 * _CHUNK_CELLS  # 192 MiB: a few float64 arrays of one block's cells
    assert small < bound and large < bound, f"peak {small / 2**20:.0f} MiB and {large / 2**20:.0f} MiB"
    assert large < 1.15 * small, f"peak grows with the pool: {small / 2**20:.0f} MiB -> {large / 2**20:.0f} MiB"


def test_retrieval_intervals_do_not_depend_on_the_block_size(monkeypatch):
    import counterfactual_lab.metrics.intervals as intervals
    from counterfactual_lab.metrics.retrieval import retrieval_rows

    ranked = _large_ranking(60, seed=3)
    settings = intervals.IntervalSettings(300, 0.95, 7)
    whole = retrieval_rows(ranked, "gender", "generated", QUERY, 10, settings, ["female", "male"])
    monkeypatch.setattr(intervals, "_CHUNK_CELLS", 1000)  # blocks of 1000 // (120·2) = 4 resamples
    assert len(list(intervals.ClusterBootstrap(60, settings).count_blocks(cells_per_resample=240))) == 75
    blocked = retrieval_rows(ranked, "gender", "generated", QUERY, 10, settings, ["female", "male"])
    assert blocked == whole
