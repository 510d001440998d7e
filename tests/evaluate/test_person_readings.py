"""Asking a model under audit per (image, person word): the generative auditee's readings, the
contrastive label prompts, and an evaluate-only pool's joint attribute."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.evaluate.auditees.interface import ProbeImages
from counterfactual_lab.evaluate.auditees.vlm import _PersonReadings
from counterfactual_lab.evaluate.pool import POOL_SCHEMA, pool_from_counterfactual_sets, predict


def pool(words: list[tuple[str, str | None]]) -> pl.DataFrame:
    rows = [{"id": key, "source_id": "s", "variant": "counterfactual", "control": False, "attribute": "gender",
             "group": "female", "seed": 0, "set_id": "set", "caption": "c", "image_uri": f"mem://{key}",
             "content_key": key, "label": None, "person": word, "person_value": None} for key, word in words]
    return pl.DataFrame(rows, schema={**POOL_SCHEMA, "person": pl.String, "person_value": pl.String})


def test_a_person_template_is_asked_once_per_word_and_a_plain_one_once_per_image():
    asked: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def ask(images: ProbeImages, prompts: list[str]) -> pl.DataFrame:
        asked.append((images.content_keys, tuple(prompts)))
        return pl.DataFrame({"content_key": [k for p in prompts for k in images.content_keys],
                             "prompt": [p for p in prompts for _ in images.content_keys],
                             "value": [float(len(p)) for p in prompts for _ in images.content_keys]})

    readings = _PersonReadings(pool([("a", "woman"), ("a", "man"), ("b", "woman")]), lambda uri: None)
    answers = readings.each(["Is the {person} a doctor?", "Is this a photo?"], ask)
    assert asked[0] == (("a", "b"), ("Is this a photo?",))  # once, for every image
    assert sorted(asked[1:]) == [(("a",), ("Is the man a doctor?",)), (("a", "b"), ("Is the woman a doctor?",))]
    # Every answer keyed by (image, word), the prompt as configured; the plain one stands for each word.
    assert sorted(answers.select("content_key", "person", "prompt").iter_rows()) == sorted([
        ("a", "woman", "Is this a photo?"), ("a", "man", "Is this a photo?"), ("b", "woman", "Is this a photo?"),
        ("a", "woman", "Is the {person} a doctor?"), ("a", "man", "Is the {person} a doctor?"),
        ("b", "woman", "Is the {person} a doctor?")])
    value = dict(zip(zip(answers["content_key"], answers["person"], answers["prompt"]), answers["value"]))
    assert value[("a", "man", "Is the {person} a doctor?")] == len("Is the man a doctor?")


class WordEmbedder:
    """Images embed as (1, 0); a label prompt as (1, 1) when it names a man and the label 'doctor', else (1, 0)."""

    def embed_texts(self, texts, batch_size=32):
        return np.array([[1.0, 1.0 if ("man" in t.split() and "doctor" in t) else 0.0] for t in texts])

    def embed_image_uris(self, uris, keys, load_image, batch_size=32):
        return np.array([[1.0, 0.0] for _ in uris])

    def zero_shot(self, images, labels):
        logits = images @ labels.T + labels[:, 1][None, :] * 2.0
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_contrastive_labels_are_read_with_each_rows_word():
    audit = AuditSection(labels=["doctor", "nurse"], prompt="a photo of a {person} who is a {label}", negative_controls=[])
    frame = pool([("a", "woman"), ("a", "man")])
    out = predict(frame, audit, WordEmbedder(), lambda uri: None)
    woman, man = out["score_doctor"].to_list()
    # "man … doctor" adds 2 to the doctor logit: σ(2); "woman" adds nothing: 1/2. Only the word changed.
    assert woman == 0.5 and man == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_an_evaluate_only_pool_has_each_intersections_joint_attribute():
    valid = pl.DataFrame({
        "id": ["a", "b", "c", "d"], "content_key": ["a", "b", "c", "d"], "caption": ["x"] * 4, "image_uri": ["u"] * 4,
        "counterfactual_set": ["S"] * 4, "race": ["White", "White", "Black", "Black"],
        "gender": ["female", "male", "female", "male"]})
    pooled = pool_from_counterfactual_sets(valid, ["race", "gender"], intersections=[["race", "gender"]])
    joint = pooled.filter(pl.col("attribute") == "race+gender")
    assert sorted(joint["group"].to_list()) == ["Black female", "Black male", "White female", "White male"]
    assert joint["set_id"].n_unique() == 1  # nothing outside the intersection to hold fixed: one comparison group
    assert pooled.filter(pl.col("attribute") == "gender")["set_id"].n_unique() == 2  # race held fixed
