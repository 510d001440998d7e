"""Adaptive over-generation: the seed schedule, the units that stop, the rounds with the real judge,
and the audit flow (fewer generator calls than a fixed plan, the same result on a rerun)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.generation.records import GENERATED, GenerationRecord
from counterfactual_lab.judge.edits import judge_candidates
from counterfactual_lab.plan.work_items import plan_work_items
from counterfactual_lab.generation.rounds import judged_by_sets, round_items, run_rounds, satisfied_units, seed_rounds, unit_of
from counterfactual_lab.config.dataset_spec import DatasetSpec


def test_the_cumulative_seed_count_doubles_from_keep_up_to_the_ceiling():
    assert seed_rounds(0, 8, 1) == [[0], [1], [2, 3], [4, 5, 6, 7]]
    assert seed_rounds(5, 6, 2) == [[5, 6], [7, 8], [9, 10]]
    assert seed_rounds(0, 3, 3) == [[0, 1, 2]]
    assert seed_rounds(0, 5, 1, adaptive=False) == [[0, 1, 2, 3, 4]]
    assert sum(len(r) for r in seed_rounds(3, 64, 1)) == 64
    with pytest.raises(ValueError, match="at least 1"):
        seed_rounds(0, 0, 1)


VALID = pl.DataFrame({
    "id": ["r0", "r1"], "content_key": ["k0", "k1"], "caption": ["a photo of a man", "a photo of a woman"],
    "image_uri": ["u0", "u1"], "gender": ["male", "female"],
})


def config(**generation) -> AuditConfig:
    return AuditConfig.parse_config({
        "dataset": {"uri": "unused"}, "attributes": {"gender": ["female", "male"]},
        "generation": {"method": "img2img", "model": "m", "seeds_per_target": 4, "keep_per_target": 1, **generation},
        "judge": {"thresholds": {"text": 0.5, "direction": -1.0, "image": -1.0}, "check_attribute": False},
    })


def test_round_items_hold_the_open_units_seeds_and_the_controls_once():
    items = plan_work_items(VALID, config(), DatasetSpec.for_uri("unused"))
    by_sets = judged_by_sets(items)
    units = {unit_of(i, by_sets) for i in items}
    assert units == {("r0", "gender"), ("r1", "gender")}
    first = round_items(items, [0], units, by_sets, first_round=True)
    assert sorted((i.source_id, i.seed, i.variant, i.control) for i in first) == [
        ("r0", 0, "counterfactual", False), ("r0", 0, "reconstruction", False), ("r0", 4, "reconstruction", True),
        ("r1", 0, "counterfactual", False), ("r1", 0, "reconstruction", False), ("r1", 4, "reconstruction", True),
    ]
    later = round_items(items, [1], {("r1", "gender")}, by_sets, first_round=False)
    assert {(i.source_id, i.seed) for i in later} == {("r1", 1)} and not any(i.control for i in later)


def test_satisfied_units_count_complete_sets_or_passing_targets():
    judged = pl.DataFrame({
        "source_id": ["a", "a", "a", "a", "b", "b"], "attribute": ["g"] * 6, "target_value": ["f", "m", "f", "m", "f", "m"],
        "seed": [0, 0, 1, 1, 0, 0], "control": [False] * 6,
        "kept": [True, True, False, False, False, False],
        "drop_reason": [None, None, "not_best_set", "not_best_set", "below_text_threshold", "set_incomplete"],
    })
    assert satisfied_units(judged, 1, by_sets=True) == {("a", "g")}
    assert satisfied_units(judged, 2, by_sets=True) == {("a", "g")}  # two complete sets
    assert satisfied_units(judged, 3, by_sets=True) == set()
    per_target = judged.with_columns(pl.Series("drop_reason", [None, None, "not_best_of_target", None, None, None]),
                                     pl.Series("kept", [True, True, False, False, True, False]))
    assert satisfied_units(per_target, 2, by_sets=False) == {("a", "g", "f")}


class Embeddings:
    """The judge's embeddings by content key: an image in ``failing`` misses its caption (text 0)."""

    def __init__(self, failing: set[str]):
        self.failing = failing

    def embed_image_uris(self, uris, keys, load_image, batch_size=32):
        return np.array([[0.0, 1.0] if k in self.failing else [1.0, 0.0] for k in keys])

    def embed_texts(self, texts, batch_size=32):
        return np.array([[1.0, 0.0] for _ in texts])


def rounds_with(failing_seeds: dict[str, set[int]], **generation):
    """Run the rounds with a generator that makes nothing but records, and the real judge, whose
    image embeddings fail the text threshold for the (source, seed) pairs in ``failing_seeds``."""
    cfg = config(**generation)
    items = plan_work_items(VALID, cfg, DatasetSpec.for_uri("unused"))
    failing = {i.content_key for i in items if i.seed in failing_seeds.get(i.source_id, set()) and not i.control}
    generated: list[list[str]] = []

    def generate(batch):
        generated.append([i.content_key for i in batch])
        return [GenerationRecord(i.content_key, f"mem://{i.content_key}", GENERATED) for i in batch]

    def judge(candidates):
        return judge_candidates(candidates, cfg.judge, Embeddings(failing), lambda uri: None,
                                keep_per_target=cfg.generation.keep_per_target, vocabulary={"gender": ["female", "male"]})

    return items, run_rounds(items, cfg.generation, generate=generate, judge=judge), generated


def test_a_target_stops_once_it_passed_and_one_that_fails_goes_on():
    items, outcome, generated = rounds_with({"r1": {0, 1}})
    # r0 passes at seed 0; r1 fails seeds 0 and 1, passes at seed 2 (round 3 holds seeds 2 and 3)
    assert outcome.rounds == 3
    assert [sorted({(k in {i.content_key for i in items if i.source_id == "r1"}) for k in batch}) for batch in generated] == [
        [False, True], [True], [True]]
    kept = outcome.judged.filter(pl.col("kept") & ~pl.col("control"))
    assert sorted(set(zip(kept["source_id"], kept["seed"]))) == [("r0", 0), ("r1", 2)]
    counts = outcome.counts(items)
    assert counts["calls_fixed"] == len(items) == 2 * (2 * 4 + 1)
    assert counts["calls"] == 6 + 2 + 4 < counts["calls_fixed"]  # round 1: 2 sets + 2 controls; then r1 only
    assert counts["generated"] == counts["calls"] and counts["rounds"] == 3
    # deterministic: the same verdicts, the same rounds, the same batches
    again = rounds_with({"r1": {0, 1}})
    assert again[2] == generated and again[1].judged.equals(outcome.judged)


def test_a_target_that_never_passes_runs_to_the_ceiling_like_the_fixed_plan():
    items, adaptive, _ = rounds_with({"r1": {0, 1, 2, 3}})
    _, fixed, generated = rounds_with({"r1": {0, 1, 2, 3}}, adaptive=False)
    assert len(generated) == 1 and fixed.rounds == 1
    assert adaptive.counts(items)["calls"] == 6 + 2 + 4  # r0 once; r1 every seed
    r1 = lambda frame: frame.filter(pl.col("source_id") == "r1").sort("content_key").drop("status")  # noqa: E731
    assert r1(adaptive.judged).equals(r1(fixed.judged))  # r1's candidates and verdicts are the fixed plan's


# ---- the audit flow ----


@pytest.mark.slow
@pytest.mark.prefect
def test_adaptive_audit_asks_fewer_images_than_fixed_and_reruns_to_the_same_result(
    prefect_server, tiny_models, tmp_path_factory
):
    from audit_runs import ROWS, assert_accounting_closes, assert_same_tables, audit_home, pipeline_calls, run_audit, write_config

    inputs = audit_home(tmp_path_factory, tiny_models)
    out = str(tmp_path_factory.mktemp("adaptive-out"))
    # every set passes (a random judge, thresholds -1): one seed of four is enough
    adaptive = write_config(tmp_path_factory.mktemp("adaptive") / "a.yaml", inputs, out,
                            generation={"seeds_per_target": 4, "adaptive": True, "batch_size": 8})
    with pipeline_calls() as calls:
        first = run_audit(adaptive, out, evaluate=False)
    counts = first.manifest["generation_counts"]
    # per row: the seed-0 set (reconstruction + counterfactual) and the control, of 4 sets + control
    assert (counts["calls"], counts["calls_fixed"], counts["rounds"]) == (ROWS * 3, ROWS * 9, 1)
    assert counts["generated"] == counts["calls"] and len(calls) == ROWS * 3 // 8
    assert_accounting_closes(first)
    assert set(first.counterfactuals["seed"]) == {0, 4}  # seed 0 and the control's seed + seeds_per_target

    with pipeline_calls() as calls:
        rerun = run_audit(adaptive, out, evaluate=False, force=True)
    assert calls == [] and rerun.manifest["generation_counts"]["cache_hits"] == ROWS * 3
    assert_same_tables(first, rerun)

    elsewhere = str(tmp_path_factory.mktemp("adaptive-elsewhere"))
    fresh = run_audit(adaptive, elsewhere, evaluate=False)  # cold, another store: the same result, bit for bit
    assert_same_tables(first, fresh, out, elsewhere)
