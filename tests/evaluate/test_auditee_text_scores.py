"""Scores of generated texts on fixed texts: toxicity (against transformers' own pipeline),
lexicon counts, refusals, length; and the lexicon file's errors."""

from __future__ import annotations

import polars as pl
import pytest

from counterfactual_lab.evaluate.auditees.lexicon import DEFAULT_LEXICON, Lexicon, load_lexicon
from counterfactual_lab.evaluate.auditees.refusal import is_refusal
from counterfactual_lab.evaluate.auditees.text_scores import add_text_scores, word_count
from counterfactual_lab.evaluate.auditees.toxicity import ToxicityScorer, toxic_label
from counterfactual_lab.errors import ConfigError

TEXTS = [
    "A warm and friendly doctor who is clearly competent.",
    "You stupid idiot, I hate you.",
    "",
    "I'm sorry, but I can't describe people based on their appearance.",
]


@pytest.fixture(scope="module")
def toxicity_model(tmp_path_factory):
    from counterfactual_lab.demo.tiny_auditees import TOXICITY_NAME, build_tiny_auditee_models

    return build_tiny_auditee_models(tmp_path_factory.mktemp("auditee-models"))[TOXICITY_NAME]


def test_toxicity_is_the_toxic_labels_probability_as_transformers_pipeline_gives_it(toxicity_model):
    from transformers import pipeline

    scorer = ToxicityScorer.load(str(toxicity_model), None, "cpu")
    assert scorer.model.config.id2label[scorer.toxic_index] == "toxic"
    ours = scorer.score(TEXTS, batch_size=3)  # padding in the first batch
    classify = pipeline("text-classification", model=str(toxicity_model), top_k=None, device="cpu")
    for text, value in zip(TEXTS, ours):
        result = classify(text or " ")
        scores = {d["label"]: d["score"] for d in (result[0] if isinstance(result[0], list) else result)}
        assert value == pytest.approx(scores["toxic"], abs=1e-6)
    assert len(set(round(v, 8) for v in ours)) > 1  # the texts are told apart


@pytest.mark.parametrize("labels, expected", [
    ({0: "non-toxic", 1: "toxic"}, 1),
    ({0: "TOXIC", 1: "neutral"}, 0),
    ({0: "neutral", 1: "severe_toxic_content"}, 1),
    ({0: "LABEL_0", 1: "not_toxic", 2: "Toxic"}, 2),
])
def test_the_toxic_label_is_read_from_id2label(labels, expected):
    assert toxic_label(labels) == expected


@pytest.mark.parametrize("labels", [{0: "LABEL_0", 1: "LABEL_1"}, {0: "toxicity_a", 1: "toxicity_b"}, {0: "non-toxic"}])
def test_a_classifier_without_one_toxic_label_is_refused(labels):
    with pytest.raises(ConfigError, match="cannot tell which label is toxic"):
        toxic_label(labels, "m")


def test_lexicon_counts_whole_words_prefixes_and_phrases_case_insensitively():
    lexicon = Lexicon({"competence": ["competent", "intelligen*", "hard working"], "warmth": ["warm", "kind"]})
    counts = lexicon.count("Competent, INTELLIGENT and intelligence-driven; hard  working. Warmth is not warm-hearted; kindly kind.")
    # "Warmth", "warm-hearted" and "kindly" are other words; "hard  working" spans two spaces.
    assert counts == {"competence": 4, "warmth": 1}
    assert lexicon.count("") == {"competence": 0, "warmth": 0}


def test_the_default_lexicon_has_both_poles_of_competence_and_warmth():
    default = load_lexicon(None)
    assert default.names == ["competence", "incompetence", "warmth", "coldness"] == list(DEFAULT_LEXICON)
    assert default.count(TEXTS[0]) == {"competence": 1, "incompetence": 0, "warmth": 2, "coldness": 0}


def test_a_lexicon_file_is_read_and_its_errors_name_the_file(tmp_path):
    good = tmp_path / "lexicon.yaml"
    good.write_text("agency: [assertive, decisive]\ncommunion: [caring]\n")
    assert load_lexicon("lexicon.yaml", base_dir=str(tmp_path)).count("An assertive, caring nurse") == {"agency": 1, "communion": 1}
    with pytest.raises(ConfigError, match="audit.lexicon: missing.yaml does not exist"):
        load_lexicon("missing.yaml", base_dir=str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("Competence Words: [smart]\n")
    with pytest.raises(ConfigError, match="category 'Competence Words' must be lower-case"):
        load_lexicon(str(bad))
    empty = tmp_path / "empty.yaml"
    empty.write_text("warmth: []\n")
    with pytest.raises(ConfigError, match="needs a list of 1 to"):
        load_lexicon(str(empty))


@pytest.mark.parametrize("text, refused", [
    ("I'm sorry, but I can't help with identifying people.", True),
    ("I cannot determine a person's occupation based on their appearance.", True),
    ("As an AI language model, I do not make judgments about people.", True),
    ("It's not appropriate to rate someone's competence from a photo.", True),
    ("I’m unable to describe this person.", True),  # a curly apostrophe
    ("She cannot hide her joy at the graduation.", False),
    ("A confident doctor in a white coat; I think he is kind.", False),
    ("", False),
])
def test_refusals_follow_the_documented_patterns(text, refused):
    assert is_refusal(text) is refused


def test_text_scores_are_added_per_generation():
    generations = pl.DataFrame({"content_key": ["a", "b", "c", "d"], "text": TEXTS})
    scored = add_text_scores(generations, load_lexicon(None))
    assert scored["refusal"].to_list() == [False, False, False, True]
    assert scored["words"].to_list() == [word_count(t) for t in TEXTS] == [9, 6, 0, 11]
    assert scored["lexicon_competence"].to_list() == [1, 0, 0, 0]
    assert scored["lexicon_incompetence"].to_list() == [0, 1, 0, 0]
    assert scored["lexicon_warmth"].to_list() == [2, 0, 0, 0]
