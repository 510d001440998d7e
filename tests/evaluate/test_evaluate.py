"""The evaluation pool of a generated run, and predictions/retrieval on the tiny CLIP.

Evaluate-only pools (datasets of counterfactual sets) are tested in test_counterfactual_sets.py.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from PIL import Image

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.evaluate.pool import (
    POOL_SCHEMA,
    build_evaluation_pool,
    predict,
    retrieval_scores,
)
from counterfactual_lab.metrics import compute_metrics
from counterfactual_lab.plan.work_items import set_id_for

VALID = pl.DataFrame(
    {
        "id": ["r1", "r2", "r3"],
        "content_key": ["k1", "k2", "k3"],
        "caption": ["a man reading", "a woman cooking", "a person running"],
        "label": ["doctor", "nurse", None],
        "image_uri": ["u1", "u2", "u3"],
        "gender": ["male", "female", None],
        "age": ["young", None, "elderly"],
    }
)
COUNTERFACTUALS = pl.DataFrame(
    {
        "source_id": ["r1", "r1", "r2", "r3"],
        "attribute": ["gender", "gender", "gender", "gender"],
        "source_value": ["male", "male", "female", "male"],
        "target_value": ["female", "female", "male", "female"],
        "counterfactual_caption": ["a woman reading", "a woman reading", "a man cooking", "a woman running"],
        "image_uri": ["c1", "c1b", "c2", "c3"],
        "content_key": ["ck1", "ck1b", "ck2", "ck3"],
        "seed": [0, 1, 0, 0],
        "kept": [True, False, True, True],
    }
)


def test_evaluation_pool_rows_without_reconstructions():
    """generation.reconstruction off: counterfactuals compare with their original, outside any set."""
    pool = build_evaluation_pool(VALID, COUNTERFACTUALS, ["gender", "age"])
    assert dict(pool.schema) == POOL_SCHEMA
    # 3 originals per attribute + 3 kept gender counterfactuals (the dropped one is left out).
    assert pool.height == 3 + 3 + 3
    gender = pool.filter(pl.col("attribute") == "gender")
    originals = {r["id"]: r for r in gender.filter(pl.col("variant") == "original").iter_rows(named=True)}
    assert originals["r1"] == {
        "id": "r1", "source_id": "r1", "variant": "original", "control": False, "attribute": "gender", "group": "male",
        "seed": None, "set_id": None, "caption": "a man reading", "image_uri": "u1", "content_key": "k1", "label": "doctor",
    }
    # r3's gender is unknown in the data; its counterfactual was planned from "male".
    assert originals["r3"]["group"] == "male"
    edits = {r["id"]: r for r in gender.filter(pl.col("variant") == "counterfactual").iter_rows(named=True)}
    assert set(edits) == {"ck1", "ck2", "ck3"}
    assert edits["ck1"] == {
        "id": "ck1", "source_id": "r1", "variant": "counterfactual", "control": False, "attribute": "gender",
        "group": "female", "seed": 0, "set_id": None, "caption": "a woman reading", "image_uri": "c1",
        "content_key": "ck1", "label": "doctor",
    }
    age = pool.filter(pl.col("attribute") == "age")
    assert age["group"].to_list() == ["young", None, "elderly"] and set(age["variant"]) == {"original"}


def _judged(rows: list[tuple]) -> pl.DataFrame:
    """A judge output: (source_id, attribute, variant, source, target, seed, control, key, kept)."""
    columns = ["source_id", "attribute", "variant", "source_value", "target_value", "seed", "control", "content_key", "kept"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    captions = {"female": "a woman", "male": "a man", None: "a person", "young": "a young person"}
    return frame.with_columns(
        pl.struct("source_id", "attribute", "seed").map_batches(
            lambda s: pl.Series([set_id_for(r["source_id"], r["attribute"], r["seed"]) for r in s.to_list()]),
            return_dtype=pl.String,
        ).alias("set_id"),
        pl.col("target_value").replace_strict(captions, default="other", return_dtype=pl.String).alias("counterfactual_caption"),
        ("mem://" + pl.col("content_key")).alias("image_uri"),
    )


def test_evaluation_pool_holds_kept_sets_and_controls():
    R, C = "reconstruction", "counterfactual"
    judged = _judged(
        [
            # r1 (male): set 0 kept, set 1 not, control kept
            ("r1", "gender", R, "male", "male", 0, False, "r1-m0", True),
            ("r1", "gender", C, "male", "female", 0, False, "r1-f0", True),
            ("r1", "gender", R, "male", "male", 1, False, "r1-m1", False),
            ("r1", "gender", C, "male", "female", 1, False, "r1-f1", False),
            ("r1", "gender", R, "male", "male", 2, True, "r1-m2", True),
            # r3 (gender unknown): its reconstruction has no group; its control was dropped
            ("r3", "gender", R, None, None, 0, False, "r3-x0", True),
            ("r3", "gender", C, None, "female", 0, False, "r3-f0", True),
            ("r3", "gender", C, None, "male", 0, False, "r3-m0", True),
            ("r3", "gender", R, None, None, 2, True, "r3-x2", False),
            # an age set shares r1's reconstruction image (img2img: one key for both attributes)
            ("r1", "age", R, "young", "young", 0, False, "r1-m0", True),
            ("r1", "age", C, "young", "elderly", 0, False, "r1-e0", True),
        ]
    )
    pool = build_evaluation_pool(VALID, judged, ["gender", "age"])
    assert dict(pool.schema) == POOL_SCHEMA
    generated = pool.filter(pl.col("variant") != "original")
    rows = sorted(generated.select("attribute", "id", "variant", "control", "group", "seed", "set_id", "label", "caption").rows())
    s = set_id_for
    assert rows == sorted([
        ("gender", "r1-m0", R, False, "male", 0, s("r1", "gender", 0), "doctor", "a man"),
        ("gender", "r1-f0", C, False, "female", 0, s("r1", "gender", 0), "doctor", "a woman"),
        ("gender", "r1-m2", R, True, "male", 2, s("r1", "gender", 2), "doctor", "a man"),
        ("gender", "r3-x0", R, False, None, 0, s("r3", "gender", 0), None, "a person"),
        ("gender", "r3-f0", C, False, "female", 0, s("r3", "gender", 0), None, "a woman"),
        ("gender", "r3-m0", C, False, "male", 0, s("r3", "gender", 0), None, "a man"),
        ("age", "r1-m0", R, False, "young", 0, s("r1", "age", 0), "doctor", "a young person"),
        ("age", "r1-e0", C, False, "elderly", 0, s("r1", "age", 0), "doctor", "other"),
    ])
    originals = pool.filter(pl.col("variant") == "original")
    assert originals.height == 2 * VALID.height
    assert originals["seed"].null_count() == originals["set_id"].null_count() == originals.height
    assert not originals["control"].any()
    # r3's unknown gender stays unknown: its generated images were planned from no value.
    assert originals.filter((pl.col("id") == "r3") & (pl.col("attribute") == "gender"))["group"].to_list() == [None]
    # every kept set holds exactly one reconstruction, the reference its counterfactuals pair with
    per_set = generated.filter(~pl.col("control")).group_by("attribute", "set_id").agg((pl.col("variant") == R).sum())
    assert per_set["variant"].to_list() == [1, 1, 1]


def test_evaluation_pool_without_counterfactuals_or_labels():
    pool = build_evaluation_pool(VALID.drop("label"), COUNTERFACTUALS.head(0), ["gender"])
    assert pool.height == 3 and pool["label"].null_count() == 3


def test_evaluation_pool_names_missing_columns():
    with pytest.raises(ValueError, match=r"lacks columns \['caption'\]"):
        build_evaluation_pool(VALID.drop("caption"), COUNTERFACTUALS, ["gender"])


@pytest.fixture
def stored_pool(tmp_path):
    rng = np.random.default_rng(0)
    uris = {}
    for name in ["u1", "u2", "u3", "c1", "c1b", "c2", "c3"]:
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        uris[name] = str(path)
    valid = VALID.with_columns(pl.col("image_uri").replace(uris))
    counterfactuals = COUNTERFACTUALS.with_columns(pl.col("image_uri").replace(uris))
    return build_evaluation_pool(valid, counterfactuals, ["gender", "age"])


def test_predict_and_retrieval_on_the_tiny_clip(tiny_models, stored_pool):
    from counterfactual_lab.models.clip import ClipEmbedder

    audit = AuditSection(model=str(tiny_models["clip"]), labels=["doctor", "nurse", "pilot"], queries=["a photo of a doctor", "a photo of a person"], bootstrap_samples=50, top_k=3)
    embedder = ClipEmbedder.load(audit.model, device="cpu")
    loads: list[str] = []

    def load(uri):
        loads.append(uri)
        return Image.open(uri)

    predictions = predict(stored_pool, audit, embedder, load)
    assert predictions.height == stored_pool.height
    scores = predictions.select("score_doctor", "score_nurse", "score_pilot").to_numpy()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    assert predictions["top1"].to_list() == [audit.labels[i] for i in scores.argmax(axis=1)]
    # An original listed under two attributes gets the same prediction twice.
    r1 = predictions.filter(pl.col("id") == "r1")
    assert r1.height == 2 and r1["score_doctor"].n_unique() == 1
    assert len(loads) == len(set(loads))  # each image loaded at most once

    retrieval = retrieval_scores(stored_pool, audit.queries, embedder, load)
    assert retrieval.columns == ["query", "id", "content_key", "score"]
    assert retrieval.height == 2 * stored_pool.select("id", "content_key").unique().height
    image = embedder.embed_images([Image.open(stored_pool.filter(pl.col("id") == "r2")["image_uri"][0])])[0]
    query = embedder.embed_texts(["a photo of a person"])[0]
    row = retrieval.filter((pl.col("id") == "r2") & (pl.col("query") == "a photo of a person"))
    assert row["score"][0] == pytest.approx(float(image @ query), abs=1e-5)

    metrics = compute_metrics(predictions, retrieval, pl.DataFrame(), audit)
    kinds = set(metrics["metric"])
    assert {"flip_rate", "prob_gap_abs", "demographic_parity_difference", "max_skew@3", "ndkl@3"} <= kinds
    overall = metrics.filter(pl.col("metric") == "flip_rate", pl.col("group").is_null())
    # age generated nothing here: its comparison is undefined (a null with the reason), not absent.
    assert overall.select("attribute", "n", "value").rows()[0] == ("age", 0, None) and overall["n"].to_list() == [0, 3]


def test_predict_needs_two_labels(stored_pool):
    with pytest.raises(ValueError, match="at least two distinct labels"):
        # The config itself refuses fewer than two labels; the library checks again for direct callers.
        predict(stored_pool, AuditSection.model_construct(labels=["doctor"]), embedder=None, load_image=None)


def test_each_phrasing_of_the_label_prompt_sits_beside_the_first(tiny_models, stored_pool):
    """Phrasing k's scores (``score_<label>@k``, ``top1@k``) are exactly the scores with that phrasing
    as the label prompt; the configured phrasing keeps the plain columns."""
    from counterfactual_lab.models.clip import ClipEmbedder

    labels = ["doctor", "nurse"]
    audit = AuditSection(model=str(tiny_models["clip"]), labels=labels, negative_controls=[],
                         phrasings={"a photo of a {label}": ["a picture of a {label} at work"]})
    embedder = ClipEmbedder.load(audit.model, device="cpu")
    load = lambda uri: Image.open(uri)  # noqa: E731
    both = predict(stored_pool, audit, embedder, load)
    alone = predict(stored_pool, AuditSection(model=audit.model, labels=labels, negative_controls=[],
                                              prompt="a picture of a {label} at work"), embedder, load)
    first = predict(stored_pool, AuditSection(model=audit.model, labels=labels, negative_controls=[]), embedder, load)
    assert both["score_doctor@1"].to_list() == pytest.approx(alone["score_doctor"].to_list(), abs=1e-7)
    assert both["top1@1"].to_list() == alone["top1"].to_list()
    assert both["score_doctor"].to_list() == pytest.approx(first["score_doctor"].to_list(), abs=1e-7)
    assert both.columns[-3:] == ["score_doctor@1", "score_nurse@1", "top1@1"]
