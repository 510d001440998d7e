"""The preflight reads audit.negative_controls in the form the model's kind asks them, and the
config refuses thresholds that cannot be (the README's config tables)."""

from __future__ import annotations

import pytest

from counterfactual_lab.config.audit_config import AuditConfig, AuditSection
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.evaluate.auditees.kinds import resolved_negative_controls
from counterfactual_lab.runs.auditee_preflight import check_negative_controls


def test_each_kind_reads_its_own_form_of_negative_control():
    check_negative_controls(AuditSection(negative_controls=["an outdoor photo | an indoor photo"]), "contrastive")
    with pytest.raises(ConfigError, match=r"audit.negative_controls\[0\]: .* two texts separated by ' \| '"):
        check_negative_controls(AuditSection(negative_controls=["an outdoor photo"]), "contrastive")
    with pytest.raises(ConfigError, match="'doctor' is also one of audit.labels"):
        check_negative_controls(AuditSection(negative_controls=["doctor | nurse"]), "contrastive")
    with pytest.raises(ConfigError, match=r"a captioner .* answers no questions.*audit.generate.prompts"):
        check_negative_controls(AuditSection(negative_controls=["Is this photo blurry?"]), "captioner")
    # The defaults per kind; [] turns them off; a vlm's question already in yes_no is asked once, as a probe.
    assert resolved_negative_controls(AuditSection(), "contrastive")[0] == "an outdoor photo | an indoor photo"
    assert resolved_negative_controls(AuditSection(), "captioner") == []
    assert resolved_negative_controls(AuditSection(negative_controls=[]), "vlm") == []
    vlm = AuditSection(kind="vlm", yes_no=["Is this photo blurry?"])
    assert resolved_negative_controls(vlm, "vlm") == ["Is this photo taken outdoors?", "Was this photo taken at night?"]


@pytest.mark.parametrize(("section", "key", "message"), [
    ("audit", {"min_effect": -0.1}, "min_effect probability: -0.1 must be a finite number >= 0"),
    ("audit", {"min_effect": {"rating": -1}}, "min_effect rating: -1"),
    ("audit", {"min_effect": {"stars": 1}}, "stars"),
    ("audit", {"error_control": "bonferroni"}, "error_control"),
    ("judge", {"max_drift": {"colour": 0}}, "max_drift.colour"),
])
def test_impossible_thresholds_are_refused_by_name(section, key, message):
    with pytest.raises(ConfigError, match=message):
        AuditConfig.parse_config({"dataset": {"uri": "x"}, section: key})


def test_drift_can_be_turned_off_and_min_effect_set_per_scale():
    config = AuditConfig.parse_config({"dataset": {"uri": "x"}, "judge": {"max_drift": None},
                                       "audit": {"min_effect": {"rating": 0.5}, "error_control": "fdr"}})
    assert config.judge.max_drift is None and config.audit.min_effect == {"rating": 0.5}
    assert config.audit.error_control == "fdr" and AuditConfig.parse_config({"dataset": {"uri": "x"}}).judge.max_drift.colour == 0.01
