"""The judge's scores on hand-built embeddings, its keep/drop decisions, and a run on the tiny CLIP."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from PIL import Image

from counterfactual_lab.config.audit_config import JudgeSection, JudgeThresholds
from counterfactual_lab.judge.edits import judge_candidates
from counterfactual_lab.judge.scores import attribute_margin, attribute_prompt_for, directional_similarity, image_similarity, text_similarity

VOCABULARY = {"gender": ["female", "male"]}


def test_scores_on_hand_built_embeddings():
    i0, i1 = np.array([[1.0, 0, 0]]), np.array([[0.6, 0.8, 0]])
    t0, t1 = np.array([[1.0, 0, 0]]), np.array([[0.8, 0.6, 0]])
    # cos(I1, T1) = 0.6·0.8 + 0.8·0.6 = 0.96 ; cos(I0, I1) = 0.6
    assert text_similarity(i1, t1)[0] == pytest.approx(0.96)
    assert image_similarity(i0, i1)[0] == pytest.approx(0.6)
    # I1 − I0 = (−0.4, 0.8, 0), T1 − T0 = (−0.2, 0.6, 0):
    # cos = (0.08 + 0.48) / (√0.80 · √0.40) = 0.56 / 0.565685 ≈ 0.989949
    assert directional_similarity(i0, i1, t0, t1)[0] == pytest.approx(0.56 / math.sqrt(0.8 * 0.4))


def test_unchanged_image_has_no_direction():
    i0 = np.array([[1.0, 2.0, 3.0]])
    assert directional_similarity(i0, i0, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))[0] == 0.0


def test_attribute_margin_by_hand():
    prompts = np.array([[0, 0, 1.0], [0, 1.0, 0]])  # female, male
    image = np.array([[0.0, 0.6, 0.8]])
    # cos(I, female) − cos(I, male) = 0.8 − 0.6 = 0.2 ; for target male: −0.2
    assert attribute_margin(image, prompts, 0)[0] == pytest.approx(0.2)
    assert attribute_margin(image, prompts, 1)[0] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="at least one other value"):
        attribute_margin(image, prompts[:1], 0)


class TableEmbedder:
    """Embeddings looked up from hand-built tables (the judge only needs these two methods)."""

    def __init__(self, images: dict[str, list[float]], texts: dict[str, list[float]]):
        self.images, self.texts = images, texts

    def embed_image_uris(self, uris, keys, load_image, batch_size=32):
        return np.array([self.images[k] for k in keys], dtype=float)

    def embed_texts(self, texts, batch_size=32):
        return np.array([self.texts[t] for t in texts], dtype=float)


def _candidate(key, seed, source="s1", image_uri="mem://x", status="generated", error=None, target="female"):
    return {
        "content_key": key, "source_id": source, "source_key": f"src-{source}", "source_image_uri": f"mem://{source}",
        "image_uri": image_uri, "caption": "a man at work", "counterfactual_caption": "a woman at work",
        "attribute": "gender", "source_value": "male", "target_value": target, "seed": seed, "status": status, "error": error,
    }


@pytest.fixture
def hand_built():
    judge = JudgeSection(thresholds=JudgeThresholds(text=0.2, direction=0.2, image=0.7), check_attribute=True)
    # Axes: scene, male, female, unrelated.
    texts = {
        "a man at work": [1, 1, 0, 0],
        "a woman at work": [1, 0, 1, 0],
        attribute_prompt_for(judge, "gender", "female"): [0, 0, 1, 0],
        attribute_prompt_for(judge, "gender", "male"): [0, 1, 0, 0],
    }
    images = {
        "src-s1": [1, 0.5, 0, 0], "src-s2": [1, 0.5, 0, 0],
        "best": [1, 0, 0.5, 0],           # the clean edit: direction cos = 1
        "second": [1, 0, 0.5, 0.3],       # passes, but drifts: direction < 1
        "unrelated": [0, 0, 0, 1],        # cos(I1, T1) = 0
        "still_male": [1, 0.6, 0.5, 0],   # passes thresholds, but looks more male than female
        "lost_scene": [0, 0, 1, 0],       # female, but the scene is gone: cos(I0, I1) = 0
        "other_source": [1, 0, 0.5, 0],
    }
    candidates = pl.DataFrame(
        [
            _candidate("second", 1), _candidate("best", 0), _candidate("unrelated", 2),
            _candidate("failed", 3, image_uri=None, status="failed", error="CUDA out of memory"),
            _candidate("still_male", 4), _candidate("lost_scene", 5), _candidate("other_source", 0, source="s2"),
        ]
    )
    return judge, TableEmbedder(images, texts), candidates


def test_judge_keeps_the_best_and_says_why_the_rest_were_dropped(hand_built):
    judge, embedder, candidates = hand_built
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=1, vocabulary=VOCABULARY)
    assert out["content_key"].to_list() == candidates["content_key"].to_list()  # same rows, same order
    verdicts = dict(zip(out["content_key"], zip(out["kept"], out["drop_reason"])))
    assert verdicts == {
        "best": (True, None),
        "second": (False, "not_best_of_target"),
        "unrelated": (False, "below_text_threshold"),
        "failed": (False, "generation_failed: CUDA out of memory"),
        "still_male": (False, "attribute_check_failed"),
        "lost_scene": (False, "below_image_threshold"),
        "other_source": (True, None),
    }
    best = out.filter(pl.col("content_key") == "best").row(0, named=True)
    assert best["direction_similarity"] == pytest.approx(1.0)
    assert best["attribute_ok"] is True and best["attribute_margin"] > 0
    failed = out.filter(pl.col("content_key") == "failed").row(0, named=True)
    assert failed["text_similarity"] is None and failed["attribute_ok"] is None


def test_keep_per_target_two_keeps_the_runner_up(hand_built):
    judge, embedder, candidates = hand_built
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=2, vocabulary=VOCABULARY)
    assert set(out.filter(pl.col("kept"))["content_key"]) == {"best", "second", "other_source"}


def test_attribute_check_can_be_switched_off(hand_built):
    judge, embedder, candidates = hand_built
    judge = judge.model_copy(update={"check_attribute": False})
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=3, vocabulary=VOCABULARY)
    row = out.filter(pl.col("content_key") == "still_male").row(0, named=True)
    assert row["kept"] is True and row["attribute_ok"] is None


def test_missing_columns_are_named(hand_built):
    judge, embedder, candidates = hand_built
    with pytest.raises(ValueError, match=r"lacks columns \['seed'\]"):
        judge_candidates(candidates.drop("seed"), judge, embedder, None, keep_per_target=1, vocabulary=VOCABULARY)


def test_judge_on_the_tiny_clip(tiny_models, tmp_path):
    """The real judge model path: scores equal the embedder's own cosine arithmetic."""
    from counterfactual_lab.models.clip import ClipEmbedder

    rng = np.random.default_rng(0)
    paths = {}
    for name in ("src", "a", "b"):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[name])
    candidates = pl.DataFrame(
        [
            {**_candidate(k, seed, image_uri=str(paths[k])), "source_image_uri": str(paths["src"])}
            for seed, k in enumerate(("a", "b"))
        ]
    )
    judge = JudgeSection(model=str(tiny_models["clip"]), thresholds=JudgeThresholds(text=-1, direction=-1, image=-1), check_attribute=False)
    embedder = ClipEmbedder.load(judge.model)
    out = judge_candidates(candidates, judge, embedder, lambda uri: Image.open(uri), keep_per_target=1, vocabulary=VOCABULARY)
    assert out["kept"].sum() == 1
    winner = out.filter(pl.col("kept")).row(0, named=True)
    assert winner["direction_similarity"] == out["direction_similarity"].max()
    i1 = embedder.embed_images([Image.open(winner["image_uri"]).convert("RGB")])
    t1 = embedder.embed_texts(["a woman at work"])
    assert winner["text_similarity"] == pytest.approx(float(i1[0] @ t1[0]), abs=1e-5)


@pytest.mark.parametrize("field", ["text_similarity", "direction_similarity", "image_similarity"])
def test_a_nan_score_fails_its_threshold_instead_of_passing_it(field):
    """fp16 embeddings can overflow to NaN on a GPU; NaN compares False with everything."""
    from counterfactual_lab.config.audit_config import JudgeSection
    from counterfactual_lab.judge.scores import JudgeScores, verdict

    judge = JudgeSection(thresholds={"text": -1.0, "direction": -1.0, "image": -1.0}, check_attribute=False)
    fine = JudgeScores("k", 0.5, 0.5, 0.5, None, None)
    assert verdict(fine, judge) is None
    broken = JudgeScores(**{**fine.__dict__, field: float("nan")})
    assert verdict(broken, judge) is not None


# ---- reconstructions and sets ----------------------------------------------------------------

# Axes: scene, male, female, non-binary, noise. The source is a man at work.
SET_TEXTS = {
    "a man at work": [1, 1, 0, 0, 0],
    "a woman at work": [1, 0, 1, 0, 0],
    "a non-binary person at work": [1, 0, 0, 1, 0],
}
SOURCE = [1, 0.5, 0, 0, 0]


def _member(key, seed, variant="counterfactual", target="female", control=False, source="s1", image_uri="mem://x",
            status="generated", error=None):
    caption = "a man at work" if variant == "reconstruction" else (
        "a woman at work" if target == "female" else "a non-binary person at work")
    return {
        "content_key": key, "source_id": source, "source_key": f"src-{source}", "source_image_uri": f"mem://{source}",
        "image_uri": image_uri, "caption": "a man at work", "counterfactual_caption": caption,
        "attribute": "gender", "source_value": "male", "target_value": "male" if variant == "reconstruction" else target,
        "seed": seed, "status": status, "error": error, "variant": variant, "control": control,
    }


def _set_judge(images, *, text=0.2, direction=0.2, image=0.7, check_attribute=False):
    judge = JudgeSection(thresholds=JudgeThresholds(text=text, direction=direction, image=image), check_attribute=check_attribute)
    texts = dict(SET_TEXTS)
    for value, vector in (("female", [0, 0, 1, 0, 0]), ("male", [0, 1, 0, 0, 0]), ("non-binary", [0, 0, 0, 1, 0])):
        texts[attribute_prompt_for(judge, "gender", value)] = vector
    return judge, TableEmbedder({"src-s1": SOURCE, "src-s2": SOURCE, **images}, texts)


def _verdicts(out: pl.DataFrame) -> dict:
    return dict(zip(out["content_key"], zip(out["kept"], out["drop_reason"])))


# Each counterfactual fails exactly one check; its set's reconstruction passes. (vector, thresholds, reason)
SINGLE_FAILURES = {
    "text": ([1, 0, 0.1, 0, 0.2], {"text": 0.8}, "below_text_threshold"),
    # Moves towards "male": a negative direction. abs(direction) = 0.70 would pass the threshold.
    "direction": ([1, 1.2, 0, 0, 0], {}, "below_direction_threshold"),
    "image": ([1, 0, 1, 0, 0], {"text": 0.8}, "below_image_threshold"),
    "attribute": ([1, 0.5, 0.4, 0, 0], {"text": 0.8, "check_attribute": True}, "attribute_check_failed"),
}


@pytest.mark.parametrize("check", sorted(SINGLE_FAILURES))
def test_a_counterfactual_failing_one_check_alone_drops_with_that_reason_and_takes_its_set_down(check):
    vector, settings, reason = SINGLE_FAILURES[check]
    judge, embedder = _set_judge({"cf": vector, "recon": [1, 0.5, 0, 0, 0.1]}, **settings)
    candidates = pl.DataFrame([_member("recon", 0, "reconstruction"), _member("cf", 0)])
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=1, vocabulary=VOCABULARY)
    cf = out.filter(pl.col("content_key") == "cf").row(0, named=True)
    t = judge.thresholds
    passed = {
        "text": cf["text_similarity"] >= t.text,
        "direction": cf["direction_similarity"] >= t.direction,
        "image": cf["image_similarity"] >= t.image,
        "attribute": cf["attribute_ok"] is not False,
    }
    assert [name for name, ok in passed.items() if not ok] == [check], cf  # fails this check alone
    if check == "direction":
        # From the reconstruction: I₁ − I_r = (0, 0.7, 0, 0, −0.1), T₁ − T₀ = (0, −1, 1, 0, 0):
        # cos = −0.7 / (√0.5 · √2) = −0.7
        assert cf["direction_similarity"] == pytest.approx(-0.7, abs=1e-9)
    assert _verdicts(out) == {"cf": (False, reason), "recon": (False, "set_incomplete")}


@pytest.mark.parametrize(
    ("vector", "reason"),
    [([1, 0, 0, 0, 0], "below_text_threshold"), ([0.2, 1, 0, 0, 0], "below_image_threshold")],
    ids=["text", "image"],
)
def test_a_reconstruction_is_judged_on_alignment_and_preservation_only(vector, reason):
    # The passing reconstruction has no direction (its caption did not move) and would fail the
    # attribute check (it shows a man, the target is... a man, but it is never asked).
    judge, embedder = _set_judge(
        {"ok": [1, 0.5, 0, 0, 0.1], "bad": vector, "cf0": [1, 0, 0.5, 0, 0], "cf1": [1, 0, 0.5, 0, 0]},
        text=0.8, check_attribute=True,
    )
    candidates = pl.DataFrame(
        [_member("ok", 0, "reconstruction"), _member("cf0", 0), _member("bad", 1, "reconstruction"), _member("cf1", 1)]
    )
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=2, vocabulary=VOCABULARY)
    ok = out.filter(pl.col("content_key") == "ok").row(0, named=True)
    assert ok["direction_similarity"] is None and ok["attribute_ok"] is None and ok["attribute_margin"] is None
    # alignment is with the unchanged caption: cos((1, .5, 0, 0, .1), (1, 1, 0, 0, 0))
    assert ok["text_similarity"] == pytest.approx(1.5 / (np.sqrt(1.26) * np.sqrt(2)))
    assert _verdicts(out) == {
        "ok": (True, None), "cf0": (True, None), "bad": (False, reason), "cf1": (False, "set_incomplete"),
    }


def test_whole_sets_are_kept_best_by_mean_direction_and_controls_on_their_own():
    images = {
        # Directions from each set's reconstruction.
        # seed 0: female d = 0.990, non-binary d = 0.754 (mean 0.87)
        "r0": [1, 0.5, 0, 0, 0.1], "f0": [1, 0, 0.5, 0, 0], "n0": [1, 0.3, 0, 0.3, 0.4],
        # seed 1: both d = 0.994 (mean 0.99): the best set
        "r1": [1, 0.5, 0, 0, 0.2], "f1": [1, 0.1, 0.5, 0, 0.2], "n1": [1, 0.1, 0, 0.5, 0.2],
        # seed 2: clean edits of the original (d = 1.0 from it; 0.77 from the reconstruction),
        # but the reconstruction lost the scene
        "r2": [0.2, 1, 0, 0, 0], "f2": [1, 0, 0.5, 0, 0], "n2": [1, 0, 0, 0.5, 0],
        # the control (seed 3), and one that fails on its own (seed 3 of another source)
        "control": [1, 0.5, 0, 0, 0.3], "bad_control": [0.2, 1, 0, 0, 0],
        # a passing counterfactual whose reconstruction failed to generate
        "orphan": [1, 0, 0.5, 0, 0],
    }
    judge, embedder = _set_judge(images)
    rows = []
    for seed in (0, 1, 2):
        rows += [_member(f"r{seed}", seed, "reconstruction"), _member(f"f{seed}", seed),
                 _member(f"n{seed}", seed, target="non-binary")]
    rows += [_member("control", 3, "reconstruction", control=True),
             _member("bad_control", 3, "reconstruction", control=True, source="s2"),
             _member("failed", 0, "reconstruction", source="s2", image_uri=None, status="failed", error="CUDA out of memory"),
             _member("orphan", 0, source="s2")]
    candidates = pl.DataFrame(rows)
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=1, vocabulary=VOCABULARY)
    assert out["content_key"].to_list() == candidates["content_key"].to_list()
    assert _verdicts(out) == {
        "r1": (True, None), "f1": (True, None), "n1": (True, None),
        "r0": (False, "not_best_set"), "f0": (False, "not_best_set"), "n0": (False, "not_best_set"),
        "r2": (False, "below_image_threshold"), "f2": (False, "set_incomplete"), "n2": (False, "set_incomplete"),
        "control": (True, None), "bad_control": (False, "below_image_threshold"),
        "failed": (False, "generation_failed: CUDA out of memory"), "orphan": (False, "set_incomplete"),
    }
    two = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=2, vocabulary=VOCABULARY)
    assert set(two.filter(pl.col("kept"))["content_key"]) == {"r0", "f0", "n0", "r1", "f1", "n1", "control"}


def test_in_a_set_the_direction_is_measured_from_the_reconstruction_and_preservation_from_the_original():
    """The generator's artifact here happens to move every image a little towards "female"
    (the reconstruction too). Measured from the original, an unedited copy of the reconstruction
    has a perfect direction; measured from the reconstruction, it has none, and the real edit
    keeps its perfect one. Preservation is still against the original."""
    artifact = [0, -0.2, 0.2, 0, 0]
    recon = list(np.add(SOURCE, artifact))      # (1, 0.3, 0.2, 0, 0)
    copy = list(recon)                          # the edit did nothing
    edit = list(np.add(recon, [0, -0.3, 0.3, 0, 0]))
    judge, embedder = _set_judge({"recon0": recon, "copy": copy, "recon1": recon, "edit": edit}, text=-1, image=-1)
    candidates = pl.DataFrame([_member("recon0", 0, "reconstruction"), _member("copy", 0),
                               _member("recon1", 1, "reconstruction"), _member("edit", 1)])
    out = judge_candidates(candidates, judge, embedder, load_image=None, keep_per_target=1, vocabulary=VOCABULARY)
    scores = {row["content_key"]: row for row in out.iter_rows(named=True)}
    # I₁ − I_r: the copy (0, 0, 0, 0, 0) has no direction; the edit (0, −0.3, 0.3, 0, 0) is T₁ − T₀'s.
    assert scores["copy"]["direction_similarity"] == 0.0
    assert scores["edit"]["direction_similarity"] == pytest.approx(1.0)
    # cos(I₀, I₁) with I₀ the original (1, 0.5, 0, 0, 0): for the copy 1.15 / (√1.25 · √1.13)
    assert scores["copy"]["image_similarity"] == pytest.approx(1.15 / (np.sqrt(1.25) * np.sqrt(1.13)))
    assert _verdicts(out) == {"recon0": (False, "set_incomplete"), "copy": (False, "below_direction_threshold"),
                              "recon1": (True, None), "edit": (True, None)}

    # Without reconstructions (generation.reconstruction: false) the original is I₀, as before:
    # the copy's artifact (0, −0.2, 0.2, 0, 0) is exactly the caption's direction.
    alone = candidates.filter(pl.col("variant") == "counterfactual").drop("variant", "control")
    old_design = judge_candidates(alone, judge, embedder, load_image=None, keep_per_target=2, vocabulary=VOCABULARY)
    assert old_design["direction_similarity"].to_list() == pytest.approx([1.0, 1.0])


def test_a_counterfactual_whose_drift_exceeds_the_seed_change_is_dropped_and_its_set_with_it():
    """Three sources; one counterfactual shifts blue by 13 grey levels (0.051) where a seed change
    moves any channel by at most 1 (0.004): off_target_drift, its reconstruction set_incomplete."""
    from counterfactual_lab.judge.drift import DRIFT_SCHEMA
    from counterfactual_lab.judge.edits import judge_with_drift

    judge, embedder = _set_judge({}, text=-1, direction=-1, image=-1)
    pixels, rows = {}, []
    for s in range(3):
        grey = 100 + 10 * s
        pixels |= {f"r{s}": (grey, grey, grey), f"k{s}": (grey, grey, grey + 1),
                   f"c{s}": (grey, grey, grey + (13 if s == 0 else 0))}
        rows += [_member(f"r{s}", 0, "reconstruction", source=f"s{s}"), _member(f"c{s}", 0, source=f"s{s}"),
                 _member(f"k{s}", 1, "reconstruction", control=True, source=f"s{s}")]
    candidates = pl.DataFrame([{**row, "image_uri": f"mem://{row['content_key']}"} for row in rows])
    embedder.images.update({key: SOURCE for key in [*pixels, "src-s0"]})
    images = {f"mem://{key}": Image.new("RGB", (8, 8), colour) for key, colour in pixels.items()}
    judged, drift = judge_with_drift(candidates, judge, embedder, images.__getitem__, keep_per_target=1,
                                     vocabulary=VOCABULARY, drift_vocabulary={})
    assert _verdicts(judged) == {
        "r0": (False, "set_incomplete"), "c0": (False, "off_target_drift"), "k0": (True, None),
        "r1": (True, None), "c1": (True, None), "k1": (True, None), "r2": (True, None), "c2": (True, None), "k2": (True, None),
    }
    assert drift.schema == pl.Schema(DRIFT_SCHEMA)
    assert set(drift["measure"]) == {"brightness", "red", "green", "blue"} and drift["mask"].null_count() == drift.height
    exceeded = drift.filter(pl.col("exceeded"))
    assert exceeded.select("to_key", "measure").rows() == [("c0", "blue")]
    assert exceeded["value"][0] == pytest.approx(13 / 255)
    assert set(drift.filter(pl.col("control"))["transition"]) == {"male→male"}
    assert not drift.filter(pl.col("to_key") == "c0")["kept"].any() and drift.filter(pl.col("to_key") == "c1")["kept"].all()
    # Without judge.max_drift nothing is read and nothing more is dropped.
    off = judge.model_copy(update={"max_drift": None})
    judged_off, none = judge_with_drift(candidates, off, embedder, images.__getitem__, keep_per_target=1,
                                        vocabulary=VOCABULARY, drift_vocabulary={})
    assert none.is_empty() and judged_off["kept"].all()
