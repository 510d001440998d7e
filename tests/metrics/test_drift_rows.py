"""Off-target drift as metric rows, from hand-built drift.parquet frames: kept pairs only, per
transition and overall, the control beside them, the whole image reported and never tested."""

from __future__ import annotations

import polars as pl
import pytest

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.judge.drift import DRIFT_SCHEMA
from counterfactual_lab.metrics.drift import drift_metric_rows
from counterfactual_lab.metrics.error_control import apply_error_control
from counterfactual_lab.metrics.intervals import IntervalSettings
from counterfactual_lab.metrics.schema import metrics_frame
from counterfactual_lab.report.findings import assess_findings


def drift(sources: int = 6, blue: float = 4 / 255, mask: str | None = "method", kept: bool = True) -> pl.DataFrame:
    rows = []
    for s in range(sources):
        own, other = ("female", "male") if s % 2 == 0 else ("male", "female")
        shift = blue if other == "male" else -blue
        common = dict(attribute="gender", source_id=f"s{s}", set_id=f"set{s}", mask=mask, threshold=0.01, exceeded=False)
        for measure, value in (("blue", shift), ("brightness", 0.114 * shift), ("age=elderly", 0.0)):
            rows.append({**common, "transition": f"{own}→{other}", "control": False, "from_key": f"r{s}", "to_key": f"c{s}",
                         "measure": measure, "value": value, "kept": kept})
            rows.append({**common, "transition": f"{own}→{own}", "control": True, "from_key": f"r{s}", "to_key": f"k{s}",
                         "measure": measure, "value": 0.001 * (s % 3 - 1), "kept": True})
    return pl.DataFrame(rows, schema=DRIFT_SCHEMA)


def test_drift_rows_per_transition_with_the_control_beside_them():
    rows = drift_metric_rows(drift(), "gender", IntervalSettings(200), min_sources=2)
    table = metrics_frame(rows)
    blue = table.filter((pl.col("metric") == "drift_blue") & (pl.col("group") == "female→male")).row(0, named=True)
    assert blue["value"] == pytest.approx(4 / 255) and blue["n"] == 3 and blue["se"] == 0.0 and blue["label"] is None
    overall = table.filter((pl.col("metric") == "drift_blue") & pl.col("group").is_null()).row(0, named=True)
    assert overall["value"] == pytest.approx(0.0, abs=1e-12)  # the two directions cancel
    assert set(table.filter(pl.col("metric") == "drift_attribute")["label"]) == {"age=elderly"}
    control = table.filter(pl.col("metric") == "control_drift_blue").row(0, named=True)
    assert control["group"] is None and control["n"] == 6
    # Moves at 0.0157 over judge.max_drift 0.01; the brightness (0.0018) is clear of 0 but below its threshold.
    findings = assess_findings(apply_error_control(table, AuditSection()))
    moved = findings.filter(pl.col("verdict") == "moved")
    assert set(zip(moved["metric"], moved["group"])) == {("drift_blue", "female→male"), ("drift_blue", "male→female")}
    brightness = findings.filter((pl.col("metric") == "drift_brightness") & (pl.col("group") == "female→male")).row(0, named=True)
    assert brightness["reason"] == "below min_effect" and brightness["min_effect"] == 0.01


def test_only_kept_pairs_count_and_without_a_mask_the_low_level_rows_are_reported_only():
    assert drift_metric_rows(drift(kept=False).filter(~pl.col("control")), "gender", IntervalSettings(200)) == []
    table = apply_error_control(metrics_frame(drift_metric_rows(drift(mask=None), "gender", IntervalSettings(200))),
                                AuditSection())
    whole = table.filter(pl.col("metric") == "drift_blue")
    assert set(whole["label"]) == {"whole image"} and not whole["in_family"].any()
    assert table.filter(pl.col("metric") == "drift_attribute")["in_family"].any(), "the judge's readings need no mask"
    findings = assess_findings(table)
    assert set(findings.filter(pl.col("metric") == "drift_blue")["verdict"]) == {"reported"}
