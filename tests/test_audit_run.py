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
