"""What identifies a run: the run id and the dataset fingerprint behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from counterfactual_lab.audit_run import locate_run
from counterfactual_lab.config import AuditConfig
from counterfactual_lab.dataset_watch import fingerprint
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.sample_dataset import write_sample_dataset
from counterfactual_lab.spec import DatasetSpec


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_sample_dataset(tmp_path / "data", rows=4, seed=0)


def _config_with_spec(tmp_path: Path, dataset: Path, **limits) -> AuditConfig:
    spec = {"name": "sample", "uri": str(dataset), "limits": limits}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return AuditConfig.parse_config({"dataset": {"spec": str(spec_path)}, "output": {"uri": str(tmp_path / "out")}})


def test_editing_the_spec_file_changes_the_run_id(tmp_path, dataset):
    """A spec file edited in place (a limit, a column mapping) is a different audit, even though
    the config names the same file: the id hashes the resolved spec, not the file name."""
    before = locate_run(_config_with_spec(tmp_path, dataset)).run_id
    after = locate_run(_config_with_spec(tmp_path, dataset, max_pixels=1000)).run_id
    assert before != after
    assert locate_run(_config_with_spec(tmp_path, dataset, max_pixels=1000)).run_id == after


def test_the_output_and_runtime_are_not_part_of_the_run_id(tmp_path, dataset):
    config = _config_with_spec(tmp_path, dataset)
    elsewhere = config.model_copy(update={"output": config.output.model_copy(update={"uri": str(tmp_path / "o2")})})
    assert locate_run(config).run_id == locate_run(elsewhere).run_id


def test_a_nested_parquet_file_is_part_of_the_fingerprint(tmp_path, dataset):
    """Ingest reads every non-hidden Parquet file under a dataset folder, so a change to one in a
    sub-folder must change the fingerprint (else the audit of the new data is skipped)."""
    nested = dataset / "more"
    nested.mkdir()
    source = next(dataset.glob("*.parquet"))
    shutil.copy(source, nested / "part-1.parquet")
    before = fingerprint(str(dataset))
    (nested / "part-1.parquet").write_bytes(source.read_bytes()[:-1] + b"\0")  # a new size/mtime
    assert fingerprint(str(dataset)) != before


def test_a_folder_holding_parquet_only_in_sub_folders_has_a_fingerprint(tmp_path, dataset):
    root = tmp_path / "outer"
    (root / "inner").mkdir(parents=True)
    shutil.copy(next(dataset.glob("*.parquet")), root / "inner" / "part-0.parquet")
    assert fingerprint(str(root))


def test_a_glob_with_no_folder_before_its_wildcard_is_refused(tmp_path):
    """Image paths are confined to the dataset root; a glob like /data-*/x.parquet has none."""
    from counterfactual_lab.ingest import open_dataset

    with pytest.raises(DatasetUnreadable, match="no folder before its first wildcard"):
        open_dataset(DatasetSpec(uri="/cflab-no-such-*/part.parquet"))


def test_candidates_frame_gives_every_planned_item_a_row_and_shares_images_by_key():
    """Items sharing a content key (an img2img reconstruction two attributes ask for) are generated
    once and both read its record; an item without a record is failed, so accounting closes."""
    import polars as pl

    from counterfactual_lab.audit_run import CANDIDATE_SCHEMA, candidates_frame, row_accounting
    from counterfactual_lab.generation.batch import GenerationRecord
    from counterfactual_lab.plan import plan_work_items, set_id_for, unique_by_content_key

    valid = pl.DataFrame(
        {"id": ["r1"], "content_key": ["k1"], "caption": ["a young man reading"], "image_uri": ["u1"],
         "gender": ["male"], "age": ["young"]}
    )
    config = AuditConfig.parse_config(
        {"dataset": {"uri": "unused"}, "attributes": {"gender": ["female", "male"], "age": ["young", "elderly"]},
         "generation": {"seeds_per_target": 1}}
    )
    items = plan_work_items(valid, config, DatasetSpec(uri="unused"))
    unique = unique_by_content_key(items)
    assert (len(items), len(unique)) == (6, 4)  # the seed-0 reconstruction and the control are shared
    records = [GenerationRecord(i.content_key, f"img/{i.content_key}.png", "generated") for i in unique[:-1]]
    frame = candidates_frame(items, records, "img2img")
    assert dict(frame.schema) == CANDIDATE_SCHEMA and frame.height == 6
    assert frame.select("attribute", "variant", "control", "seed").rows() == [
        ("gender", "reconstruction", False, 0), ("gender", "counterfactual", False, 0), ("gender", "reconstruction", True, 1),
        ("age", "reconstruction", False, 0), ("age", "counterfactual", False, 0), ("age", "reconstruction", True, 1),
    ]
    assert frame["set_id"].to_list() == [set_id_for("r1", a, s) for a in ("gender", "age") for s in (0, 0, 1)]
    shared = frame.filter(pl.col("variant") == "reconstruction", ~pl.col("control"))
    assert shared["image_uri"].n_unique() == 1 and set(shared["status"]) == {"generated"}
    lost = frame.filter(pl.col("status") == "failed")
    assert lost["content_key"].to_list() == [unique[-1].content_key] and lost["error"][0].startswith("no generation record")
    judged = frame.with_columns(kept=pl.col("status") != "failed", drop_reason=pl.lit(None, dtype=pl.String))
    acc = row_accounting(1, 1, 0, judged)
    assert (acc["planned"], acc["kept"], acc["failed"]) == (6, 5, 1)
