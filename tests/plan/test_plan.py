"""The generation plan: reconstructions, counterfactuals and controls per row and attribute, and their keys."""

from __future__ import annotations

import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.plan.work_items import (
    NO_CHANGE_INSTRUCTION,
    chunk,
    plan_work_items,
    set_id_for,
    unique_by_content_key,
    work_item_key,
)
from counterfactual_lab.config.dataset_spec import DatasetSpec

SPEC = DatasetSpec(uri="unused")
VALID = pl.DataFrame(
    {
        "id": ["r1", "r2"],
        "content_key": ["k1", "k2"],
        "caption": ["a man reading", "a person running"],
        "image_uri": ["u1", "u2"],
        "gender": ["male", None],  # r2: unknown, and its caption does not say
        "age": ["middle-aged", "young"],
    }
)
ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "elderly"]}


def config(**generation) -> AuditConfig:
    return AuditConfig.parse_config(
        {"dataset": {"uri": "unused"}, "attributes": ATTRIBUTES, "generation": {"seeds_per_target": 2, **generation}}
    )


def summary(items) -> list[tuple]:
    return [(i.source_id, i.attribute, i.variant, i.target_value, i.seed, i.control) for i in items]


def test_each_row_and_attribute_gets_its_reconstruction_every_listed_value_and_one_control():
    items = plan_work_items(VALID, config(seed=5), SPEC)
    R, C = "reconstruction", "counterfactual"
    assert summary(items) == [
        # r1 gender (male): per seed the reconstruction, then the one other value; then the control
        ("r1", "gender", R, "male", 5, False), ("r1", "gender", C, "female", 5, False),
        ("r1", "gender", R, "male", 6, False), ("r1", "gender", C, "female", 6, False),
        ("r1", "gender", R, "male", 7, True),
        # r1 age (middle-aged, not listed): both listed values are counterfactuals
        ("r1", "age", R, "middle-aged", 5, False), ("r1", "age", C, "young", 5, False), ("r1", "age", C, "elderly", 5, False),
        ("r1", "age", R, "middle-aged", 6, False), ("r1", "age", C, "young", 6, False), ("r1", "age", C, "elderly", 6, False),
        ("r1", "age", R, "middle-aged", 7, True),
        # r2 gender unknown: a reconstruction of no stated value, and every listed value
        ("r2", "gender", R, None, 5, False), ("r2", "gender", C, "female", 5, False), ("r2", "gender", C, "male", 5, False),
        ("r2", "gender", R, None, 6, False), ("r2", "gender", C, "female", 6, False), ("r2", "gender", C, "male", 6, False),
        ("r2", "gender", R, None, 7, True),
        ("r2", "age", R, "young", 5, False), ("r2", "age", C, "elderly", 5, False),
        ("r2", "age", R, "young", 6, False), ("r2", "age", C, "elderly", 6, False),
        ("r2", "age", R, "young", 7, True),
    ]


def test_a_reconstruction_asks_the_editor_for_no_change():
    items = plan_work_items(VALID, config(method="instruct-pix2pix"), SPEC)
    recon = {(i.source_id, i.attribute): i for i in items if i.variant == "reconstruction" and i.seed == 0}
    man = recon[("r1", "gender")]
    assert (man.source_value, man.target_value) == ("male", "male")
    assert man.counterfactual_caption == man.caption == "a man reading"
    assert man.explanation == "reconstruction: caption unchanged"
    assert man.instruction == "make the man a man"  # the counterfactual's template, target = source
    counterfactual = next(i for i in items if i.source_id == "r1" and i.attribute == "gender" and i.variant == "counterfactual")
    assert counterfactual.instruction == "make the man a woman"
    assert recon[("r2", "gender")].instruction == NO_CHANGE_INSTRUCTION


def test_controls_use_the_one_seed_no_candidate_uses():
    items = plan_work_items(VALID, config(seed=3, seeds_per_target=4, keep_per_target=2), SPEC)
    controls = [i for i in items if i.control]
    assert len(controls) == VALID.height * len(ATTRIBUTES)
    assert {i.seed for i in controls} == {7} and {i.variant for i in controls} == {"reconstruction"}
    assert {i.seed for i in items if not i.control} == {3, 4, 5, 6}
    # A control is the reconstruction at another seed: same value, same caption, its own key.
    for control in controls:
        twin = next(i for i in items if i.variant == "reconstruction" and not i.control and i.seed == 3
                    and (i.source_id, i.attribute) == (control.source_id, control.attribute))
        assert (control.target_value, control.instruction) == (twin.target_value, twin.instruction)
        assert control.content_key != twin.content_key


def test_keys_are_deterministic_and_identify_pixels():
    first, again = plan_work_items(VALID, config(), SPEC), plan_work_items(VALID, config(), SPEC)
    assert [i.content_key for i in first] == [i.content_key for i in again]
    recon = {(i.source_id, i.attribute, i.seed): i.content_key for i in first if i.variant == "reconstruction"}
    # img2img reads the unchanged caption only: one reconstruction per source and seed serves every attribute ...
    assert recon[("r1", "gender", 0)] == recon[("r1", "age", 0)]
    assert recon[("r1", "gender", 2)] == recon[("r1", "age", 2)]  # ... the control too
    assert recon[("r1", "gender", 0)] != recon[("r1", "gender", 1)] != recon[("r2", "gender", 1)]
    assert len(unique_by_content_key(first)) == len(first) - 2 * 3  # per row: 2 seeds + 1 control shared
    # Every other item is an image of its own.
    keys = [i.content_key for i in first]
    per_attribute = [i.content_key for i in first if i.attribute == "gender"]
    assert len(set(per_attribute)) == len(per_attribute)
    assert len(set(keys)) == len(unique_by_content_key(first))
    # instruct-pix2pix reads an instruction that names the attribute's value: keys per attribute.
    ip2p = [i for i in plan_work_items(VALID, config(method="instruct-pix2pix"), SPEC) if i.variant == "reconstruction"]
    by = {(i.source_id, i.attribute, i.seed): i.content_key for i in ip2p}
    assert by[("r1", "gender", 0)] != by[("r1", "age", 0)]
    # Another generator is other pixels.
    assert recon[("r1", "gender", 0)] not in {i.content_key for i in plan_work_items(VALID, config(steps=3), SPEC)}


def test_sets_group_a_seeds_reconstruction_and_counterfactuals():
    items = plan_work_items(VALID, config(), SPEC)
    r1_gender_0 = [i for i in items if (i.source_id, i.attribute, i.seed) == ("r1", "gender", 0)]
    assert {i.set_id for i in r1_gender_0} == {set_id_for("r1", "gender", 0)}
    assert len({i.set_id for i in items}) == 2 * 2 * 3  # rows × attributes × (seeds + control seed)
    assert set_id_for("r1", "gender", 0) != set_id_for("r1", "age", 0) != set_id_for("r1", "gender", 1)


def test_without_reconstruction_the_plan_is_the_older_one_item_for_item():
    items = plan_work_items(VALID, config(reconstruction=False), SPEC)
    fingerprint = items[0].generator
    expected = []
    for row in VALID.iter_rows(named=True):
        for attribute, targets in ATTRIBUTES.items():
            source = row[attribute]
            for target in targets:
                if target == source:
                    continue
                for seed in (0, 1):
                    expected.append((row["id"], attribute, "counterfactual", target, seed, False))
    assert summary(items) == expected
    first = items[0]
    assert first.content_key == work_item_key(
        "k1", "gender", "male", "female", 0, "a woman reading", fingerprint
    ), "the older key, so images of earlier runs are found in the store"


def test_a_value_listed_twice_is_planned_once():
    cfg = AuditConfig.parse_config(
        {"dataset": {"uri": "unused"}, "attributes": {"gender": ["female", "Female", "male"]},
         "generation": {"seeds_per_target": 1}}
    )
    items = plan_work_items(VALID.head(1), cfg, SPEC)
    assert [(i.variant, i.target_value) for i in items] == [
        ("reconstruction", "male"), ("counterfactual", "female"), ("reconstruction", "male")
    ]


def test_rows_need_a_stored_image_and_batches_a_positive_size():
    with pytest.raises(ValueError, match="'r1' has no stored source image"):
        plan_work_items(VALID.with_columns(pl.lit(None, dtype=pl.String).alias("image_uri")), config(), SPEC)
    with pytest.raises(ValueError, match="at least 1"):
        chunk([1, 2], 0)
    assert chunk([1, 2, 3], 2) == [[1, 2], [3]]


def test_the_precision_enters_every_content_key_and_weightless_methods_have_none():
    import importlib.metadata

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.models.devices import generation_precision
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    valid = pl.DataFrame({"id": ["r1"], "content_key": ["k1"], "caption": ["a young man reading"], "image_uri": ["u1"],
                          "gender": ["male"]})
    config = AuditConfig.parse_config({"dataset": {"uri": "unused"}, "attributes": {"gender": ["female", "male"]}})
    cpu = generation_precision("img2img", "cpu")
    assert cpu == {"device": "cpu", "dtype": "float32",
                   "versions": {d: importlib.metadata.version(d) for d in ("torch", "diffusers", "transformers")}}
    assert generation_precision("planted-world", "cpu") == {}  # numpy: the same pixels everywhere

    def keys(precision):
        return [item.content_key for item in plan_work_items(valid, config, DatasetSpec(uri="unused"), precision=precision)]

    assert keys(cpu) == keys(dict(cpu)) and len(keys(cpu)) == 5
    assert set(keys(cpu)).isdisjoint(keys({**cpu, "device": "cuda", "dtype": "float16"}))
    assert set(keys(cpu)).isdisjoint(keys(None))  # the config's fingerprint alone is another generator
