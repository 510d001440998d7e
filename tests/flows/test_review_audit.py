"""People's labels and the audit: the next audit of a reviewed run applies new labels without running
anything again, and with ``review.exclude_rejected`` runs the stages again (the images reused) to
leave the sets people rejected out of every metric."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest
import yaml
from audit_runs import (
    assert_accounting_closes,
    audit_home,
    generate_batch_calls,
    pipeline_calls,
    run_audit,
    write_config,
)

from counterfactual_lab.review.labels import LABELS_SCHEMA, LabelStore

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_the_next_audit_applies_labels_and_excludes_rejected_sets(prefect_server, tiny_models, tmp_path_factory, tmp_path):
    inputs = audit_home(tmp_path_factory, tiny_models)
    out = str(tmp_path / "out")
    config = write_config(tmp_path / "audit.yaml", inputs, out, generation={"seeds_per_target": 1})
    first = run_audit(config, out)
    assert "review" not in first.manifest and first.review.is_empty()

    members = first.counterfactuals.filter((pl.col("variant") == "counterfactual") & ~pl.col("control"))
    rejected = members["set_id"][0]
    now = datetime.now(timezone.utc)
    LabelStore(first.run_uri).upsert(pl.DataFrame(
        [{"reviewer": "ana", "set_id": r["set_id"], "member": r["content_key"],
          "target_shown": "no" if r["set_id"] == rejected else "yes", "other_change": "none", "note": None,
          "answered_at": now, "sample_seed": 0} for r in members.head(4).iter_rows(named=True)],
        schema=LABELS_SCHEMA))

    with generate_batch_calls() as calls:
        applied = run_audit(config, out)  # the same run: complete, with new labels
    assert calls == [] and applied.run_id == first.run_id
    assert applied.manifest["review"]["rejected_sets"] == [rejected] and applied.manifest["review"]["excluded_sets"] == []
    assert applied.review.height == 4
    assert set(applied.metrics.filter(pl.col("stratum") == "review")["metric"]) >= {"human_validity_rate",
                                                                                     "judge_human_agreement"}
    assert applied.counterfactuals.equals(first.counterfactuals), "nothing ran again"

    excluding = yaml.safe_load(open(config))
    excluding["review"] = {"exclude_rejected": True}
    (tmp_path / "excluding.yaml").write_text(yaml.safe_dump(excluding))
    with pipeline_calls() as generated:
        excluded = run_audit(str(tmp_path / "excluding.yaml"), out)
    assert generated == [], "the stages ran again on the stored images"
    assert excluded.run_id == first.run_id, "the review section is not part of the run id"
    assert excluded.manifest["review"]["excluded_sets"] == [rejected]
    assert excluded.manifest["config"]["review"]["exclude_rejected"] is True
    dropped = excluded.counterfactuals.filter(pl.col("set_id") == rejected)
    assert set(dropped["drop_reason"]) == {"rejected_by_review"} and not dropped["kept"].any()
    assert excluded.predictions.filter(pl.col("set_id") == rejected).is_empty(), "left out of every metric"
    assert assert_accounting_closes(excluded)["dropped_by_reason"] == {"rejected_by_review": dropped.height}
    assert excluded.review.filter(pl.col("set_id") == rejected)["excluded"].all()
    # The drift metrics read kept pairs only: the rejected set's pairs are no longer kept.
    rejected_keys = dropped["content_key"].to_list()
    touching = pl.col("from_key").is_in(rejected_keys) | pl.col("to_key").is_in(rejected_keys)
    assert first.drift.filter(touching)["kept"].any(), "the set's pairs were kept before the review"
    assert not excluded.drift.filter(touching)["kept"].any()
    assert excluded.drift.filter(~touching).equals(first.drift.filter(~touching))

    with generate_batch_calls() as calls:
        again = run_audit(str(tmp_path / "excluding.yaml"), out)
    assert calls == [] and again.manifest["finished_at"] == excluded.manifest["finished_at"], "current: nothing to do"
