"""The ``{person}`` words of templates, and the planner's joint edits of an intersection."""

from __future__ import annotations

import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.plan.captions import joint_attribute_prompt, joint_edit_instruction
from counterfactual_lab.plan.person_words import PersonWords, fill_person, person_word
from counterfactual_lab.plan.work_items import plan_work_items

VALID = pl.DataFrame({
    "id": ["r1", "r2"], "content_key": ["k1", "k2"], "caption": ["a woman at her desk", "a person running"],
    "image_uri": ["u1", "u2"], "gender": ["female", "male"], "age": ["young", None],  # r2's age: unknown, caption silent
})


def config(method: str = "img2img", **audit) -> AuditConfig:
    return AuditConfig.parse_config({
        "dataset": {"uri": "unused"}, "generation": {"method": method, "seeds_per_target": 1},
        "attributes": {"gender": ["female", "male"], "age": ["young", "elderly"], "intersections": [["gender", "age"]]},
        **({"audit": audit} if audit else {})})


@pytest.mark.parametrize("changes,word", [
    ([("gender", "female")], "woman"), ([("gender", "male")], "man"), ([("age", "elderly")], "elderly person"),
    ([("race", "Black")], "Black person"), ([("status", "rich")], "rich person"),
    ([("race", "Black"), ("gender", "male")], "Black man"), ([("gender", "female"), ("race", "Latino")], "Latina woman")])
def test_the_word_of_a_value_is_the_caption_rewriters(changes, word):
    assert person_word(changes) == word


def test_filling_person_keeps_every_other_placeholder_and_fixes_the_article():
    assert fill_person("a photo of a {person} who is a {label}", "elderly person") == (
        "a photo of an elderly person who is a {label}")
    assert fill_person("An {person} in {image}: {options} {{x}}", "woman") == "A woman in {image}: {options} {{x}}"
    assert fill_person("Is the {person} a doctor?", None) == "Is the person a doctor?"
    assert fill_person("a photo of a {person} who is a {label}", "woman").format(label="nurse") == (
        "a photo of a woman who is a nurse")
    words = PersonWords({"gender": ["female", "male"], "age": ["young", "elderly"]}, [["gender", "age"]])
    assert words.word("gender+age", "male elderly") == "elderly man"
    assert words.word("gender", None) == "person" and words.word("gender+age", "unlisted") == "person"


def test_person_is_allowed_in_probe_and_label_templates_and_needed_by_text_and_both():
    ok = config(prompt="a photo of a {person} who is a {label}", modalities=["image", "text", "both"])
    assert ok.audit.person_templates() == ["a photo of a {person} who is a {label}"]
    assert config(kind="vlm", yes_no=["Is the {person} in {image} a doctor?"], modalities=["text"]).audit.modalities == ["text"]
    with pytest.raises(ConfigError, match="audit.modalities lists 'text'.*no probe or label template has {person}"):
        config(modalities=["image", "text"])
    with pytest.raises(ConfigError, match="listed twice"):
        config(prompt="a {person} {label}", modalities=["image", "image"])
    with pytest.raises(ConfigError, match="may use only {label} and {person}"):
        config(prompt="a photo of a {label} {people}")
    assert config().audit.modalities == ["image"]


def test_joint_edits_change_every_attribute_at_once_where_the_method_can_say_so():
    items = [i for i in plan_work_items(VALID, config(), DatasetSpec(uri="unused")) if i.attribute == "gender+age"]
    # r1 (female, young): its reconstruction, the one combination changing both (male elderly), the control;
    # r2's age is unknown: a joint transition needs its source, so r2 has none.
    assert [(i.source_id, i.variant, i.source_value, i.target_value, i.control) for i in items] == [
        ("r1", "reconstruction", "female young", "female young", False),
        ("r1", "counterfactual", "female young", "male elderly", False),
        ("r1", "reconstruction", "female young", "female young", True)]
    assert items[1].counterfactual_caption == "an elderly man at his desk"
    # img2img reconstructions read the caption only: the joint one shares the gender one's image.
    gender = [i for i in plan_work_items(VALID, config(), DatasetSpec(uri="unused"))
              if i.attribute == "gender" and i.source_id == "r1" and i.variant == "reconstruction" and not i.control]
    assert items[0].content_key == gender[0].content_key
    ip2p = [i for i in plan_work_items(VALID, config("instruct-pix2pix"), DatasetSpec(uri="unused"))
            if i.attribute == "gender+age"]
    assert [i.instruction for i in ip2p[:2]] == ["make the woman a young woman", "make the woman an elderly man"]
    assert not [i for i in plan_work_items(VALID, config("ledits"), DatasetSpec(uri="unused")) if "+" in i.attribute]


def test_which_methods_carry_a_joint_edit_is_a_fact_of_their_row():
    assert {name for name, method in METHODS.items() if method.joint_edits} == {"img2img", "instruct-pix2pix",
                                                                                  "text2image-sets"}
    assert joint_edit_instruction([("race", "White", "Black"), ("gender", "female", "male")], "a woman at her desk") == (
        "make the woman a Black man")
    assert joint_attribute_prompt([("race", "Asian"), ("gender", "female")]) == "a photo of an Asian woman"
