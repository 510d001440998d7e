"""A query's subject under ``audit.skew_protocol: socialcounterfactuals``: the one audit label it names."""

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.config.skew_protocols import names_word, query_subject


def test_the_subject_is_the_one_label_named_as_whole_words():
    labels = ["doctor", "nurse", "head nurse"]
    assert query_subject("A photo of a Doctor", labels) == "doctor"
    assert query_subject("a photo of a head nurse", labels) == "head nurse"  # not also "nurse"
    assert query_subject("a photo of a doctorate holder", labels) is None  # no whole word
    assert query_subject("a doctor and a nurse", labels) is None  # ambiguous
    assert names_word("a doctor's bag", "doctor") and not names_word("a photo", "doctor") and not names_word(None, "x")


def test_geyik_is_the_default_and_leaves_queries_free():
    assert AuditSection().skew_protocol == "geyik"
    assert AuditSection(queries=["a photo of a person"]).skew_protocol == "geyik"
