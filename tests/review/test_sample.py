"""The review sample: stratified over attribute, transition and the judge's verdict, seeded, recorded,
and a larger sample extends a smaller one."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from reviewed_runs import publish_reviewable

from counterfactual_lab.errors import UserError
from counterfactual_lab.review.sample import resolve_sample, stratified_sample, write_sample_record
from counterfactual_lab.review.sets import ReviewSet, review_sets
from counterfactual_lab.runs.reader import read_run


def many_sets() -> list[ReviewSet]:
    """60 sets: gender male→female (40 kept, 5 dropped), female→male (10 kept), age (4 kept, 1 dropped)."""
    rows = []
    plan = [("gender", "male", "female", 40, 5), ("gender", "female", "male", 10, 0), ("age", "young", "elderly", 4, 1)]
    for attribute, source, target, kept, dropped in plan:
        for i in range(kept + dropped):
            set_id = f"{attribute}-{source}-{i}"
            rows.append({"set_id": set_id, "source_id": f"src{i}", "attribute": attribute, "source_value": source,
                         "target_value": target, "variant": "counterfactual", "content_key": f"{set_id}-cf",
                         "image_uri": f"/x/{set_id}.png", "kept": i < kept,
                         "drop_reason": None if i < kept else "below_direction_threshold"})
    return review_sets(pl.DataFrame(rows))


def test_every_stratum_is_sampled_before_any_is_sampled_twice():
    sets = many_sets()
    strata = {s.stratum for s in sets}
    assert len(strata) == 5
    first = stratified_sample(sets, size=5, seed=0).sets
    assert {s.stratum for s in first} == strata, "the dropped sets are sampled however few they are"


def test_a_larger_sample_extends_a_smaller_one_and_the_seed_decides_the_sets():
    sets = many_sets()
    small, large = stratified_sample(sets, 10, seed=7), stratified_sample(sets, 30, seed=7)
    assert large.set_ids[:10] == small.set_ids
    assert stratified_sample(sets, 10, seed=7).set_ids == small.set_ids, "same seed, same sets, same order"
    assert stratified_sample(sets, 10, seed=8).set_ids != small.set_ids
    assert len(stratified_sample(sets, 1000, seed=0).sets) == len(sets)
    with pytest.raises(UserError, match="--size 0"):
        stratified_sample(sets, 0)


def test_the_sample_is_recorded_and_reused(tmp_path):
    run_uri = publish_reviewable(tmp_path / "out")
    sets = review_sets(read_run(run_uri).counterfactuals)
    sample = resolve_sample(run_uri, sets, size=3, seed=5)
    write_sample_record(run_uri, sample)
    record = json.loads((Path(run_uri) / "review" / "sample.json").read_text())
    assert record["seed"] == 5 and record["size"] == 3 and record["set_ids"] == sample.set_ids
    assert set(record["strata"]) == set(sample.set_ids)
    again = resolve_sample(run_uri, sets, size=None, seed=None)  # a second reviewer: the same sample
    assert again.set_ids == sample.set_ids


def test_sets_name_their_references_and_the_judges_verdict(tmp_path):
    sets = {s.set_id: s for s in review_sets(read_run(publish_reviewable(tmp_path / "out")).counterfactuals)}
    assert len(sets) == 8
    several = sets["set5"]  # middle-aged → elderly, young: one failed its check, one only for the other
    assert [m.target_value for m in several.members] == ["elderly", "young"]
    assert [(m.judge_kept, m.judge_pass) for m in several.members] == [(False, False), (False, True)]
    assert several.transition == "middle-aged→elderly+young" and several.stratum[2] == "dropped"
    assert all(s.reconstruction_uri and s.original_uri and s.control_uri for s in sets.values())


def test_a_run_without_counterfactuals_is_one_line():
    with pytest.raises(UserError, match="no counterfactual images to review"):
        review_sets(pl.DataFrame())
