"""What identifies a run: the run id, what it hashes, and the name it carries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from counterfactual_lab.runs.location import dataset_name_for_uri, locate_run
from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.ingest.fingerprints import dataset_fingerprint
from counterfactual_lab.demo.sample_dataset import write_sample_dataset
from counterfactual_lab.config.dataset_spec import DatasetSpec


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CFLAB_CACHE_DIR", str(tmp_path / "hash-cache"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_sample_dataset(tmp_path / "data", rows=4, seed=0)


def fake_model(folder: Path, weights: bytes = b"weights-0") -> Path:
    """A model folder as model identity sees one: weight and config files (nothing here loads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"model_type": "clip"}')
    return folder


@pytest.fixture
def models(tmp_path) -> dict[str, Path]:
    return {
        "generation": fake_model(tmp_path / "models" / "img2img" / "unet", b"unet").parent,
        "judge": fake_model(tmp_path / "models" / "clip"),
    }


def config_for(dataset: str | Path, models: dict[str, Path | str], out: str | Path = "out", **dataset_fields) -> AuditConfig:
    return AuditConfig.parse_config({
        "dataset": {"name": "sample", "uri": str(dataset), **dataset_fields},
        "generation": {"model": str(models["generation"])},
        "judge": {"model": str(models["judge"])},
        "audit": {"model": str(models.get("audit", models["judge"]))},
        "output": {"uri": str(out)},
    })


def _config_with_spec(tmp_path: Path, dataset: Path, models: dict[str, Path], **limits) -> AuditConfig:
    spec = {"name": "sample", "uri": str(dataset), "limits": limits}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    config = config_for(dataset, models)
    return config.model_copy(update={"dataset": config.dataset.model_copy(update={"spec": str(spec_path), "uri": None})})


def test_editing_the_spec_file_changes_the_run_id(tmp_path, dataset, models):
    """A spec file edited in place (a limit, a column mapping) is a different audit, even though
    the config names the same file: the id hashes the resolved spec, not the file name."""
    before = locate_run(_config_with_spec(tmp_path, dataset, models)).run_id
    after = locate_run(_config_with_spec(tmp_path, dataset, models, max_pixels=1000)).run_id
    assert before != after
    assert locate_run(_config_with_spec(tmp_path, dataset, models, max_pixels=1000)).run_id == after


def test_the_output_and_runtime_are_not_part_of_the_run_id(tmp_path, dataset, models):
    config = config_for(dataset, models, tmp_path / "out")
    elsewhere = config.model_copy(update={
        "output": config.output.model_copy(update={"uri": str(tmp_path / "o2")}),
        "runtime": config.runtime.model_copy(update={"max_workers": 1, "retries": 0}),
    })
    assert locate_run(config).run_id == locate_run(elsewhere).run_id


def test_relative_and_absolute_paths_to_the_same_models_and_data_give_one_run_id(tmp_path, dataset, models, monkeypatch):
    absolute = locate_run(config_for(dataset, models, tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    relative = locate_run(config_for(
        "./data/", {"generation": "models/img2img", "judge": "./models/../models/clip"}, "out",
    ))
    assert relative.run_id == absolute.run_id
    assert relative.run_uri == absolute.run_uri == str(tmp_path / "out" / absolute.run_id)
    # The identity names content only: no path, however spelled, is in what the id hashes.
    assert str(tmp_path) not in json.dumps(relative.identity)


def test_copies_of_the_models_and_data_are_the_same_run_and_one_changed_byte_is_not(tmp_path, dataset, models):
    original = locate_run(config_for(dataset, models)).run_id
    data_copy = shutil.copytree(dataset, tmp_path / "elsewhere" / "data")
    model_copies = {role: shutil.copytree(path, tmp_path / "copies" / role) for role, path in models.items()}
    assert locate_run(config_for(data_copy, model_copies)).run_id == original

    weights = model_copies["judge"] / "model.safetensors"
    weights.write_bytes(b"weights-1")  # same size, other bytes: retrained in place
    retrained = locate_run(config_for(data_copy, model_copies)).run_id
    assert retrained != original
    (model_copies["generation"] / "unet" / "config.json").write_text('{"model_type": "unet", "layers": 3}')
    assert locate_run(config_for(data_copy, model_copies)).run_id not in (original, retrained)


def test_the_judge_and_the_audited_model_are_told_apart(tmp_path, dataset, models):
    """Two roles with swapped models are another audit, although the same files are involved."""
    audit = fake_model(tmp_path / "models" / "other-clip", b"other")
    one = locate_run(config_for(dataset, {**models, "audit": audit})).run_id
    swapped = locate_run(config_for(dataset, {**models, "judge": audit, "audit": models["judge"]})).run_id
    assert one != swapped


def test_the_run_is_named_after_the_dataset_it_audits(tmp_path, dataset, models):
    """A deployment run whose dataset_uri points elsewhere is not named after the config's dataset."""
    incoming = write_sample_dataset(tmp_path / "incoming" / "batch-7", rows=3, seed=1)
    config = config_for(dataset, models)
    own = locate_run(config)
    other = locate_run(config, dataset_uri=str(incoming))
    assert own.run_id.startswith("sample-") and own.spec.name == "sample"
    assert other.run_id.startswith("batch-7-") and other.spec.name == "batch-7"
    # The config's own dataset, spelled another way, keeps the config's name and run.
    assert locate_run(config, dataset_uri=str(dataset) + "/").run_id == own.run_id


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("s3://bucket/incoming/batch-7", "batch-7"),
        ("s3://bucket/incoming/batch-7/", "batch-7"),
        ("/data/x/part-0.parquet", "part-0"),
        ("/data/x/part-*.parquet", "x"),
        ("/data/x/*/y-*.parquet", "x"),
    ],
)
def test_dataset_names_come_from_the_uri(uri, name):
    assert dataset_name_for_uri(uri) == name


def test_an_evaluate_only_dataset_needs_no_generator_or_judge(tmp_path, dataset, models):
    config = config_for(dataset, {"generation": tmp_path / "absent", "judge": tmp_path / "absent",
                                  "audit": models["judge"]}, columns={"counterfactual_set": "label"})
    location = locate_run(config)
    assert set(location.models) == {"audit"}
    generate_only = locate_run(config_for(dataset, {**models, "audit": tmp_path / "absent"}), evaluate=False)
    assert set(generate_only.models) == {"generator", "judge"} and "-generate-" in generate_only.run_id


def test_a_missing_model_folder_is_one_clear_error(tmp_path, dataset, models):
    from counterfactual_lab.errors import UserError

    with pytest.raises(UserError, match="no such local folder"):
        locate_run(config_for(dataset, {**models, "judge": "./no/such/model"}))


def test_a_nested_parquet_file_is_part_of_the_fingerprint(tmp_path, dataset):
    """Ingest reads every non-hidden Parquet file under a dataset folder, so a change to one in a
    sub-folder must change the fingerprint (else the audit of the new data is skipped)."""
    nested = dataset / "more"
    nested.mkdir()
    source = next(dataset.glob("*.parquet"))
    shutil.copy(source, nested / "part-1.parquet")
    before = dataset_fingerprint(DatasetSpec(uri=str(dataset))).value
    write_sample_dataset(tmp_path / "other", rows=4, seed=1)
    shutil.copy(tmp_path / "other" / "part-00000.parquet", nested / "part-1.parquet")
    assert dataset_fingerprint(DatasetSpec(uri=str(dataset))).value != before


def test_a_folder_holding_parquet_only_in_sub_folders_has_a_fingerprint(tmp_path, dataset):
    root = tmp_path / "outer"
    (root / "inner").mkdir(parents=True)
    shutil.copy(next(dataset.glob("*.parquet")), root / "inner" / "part-0.parquet")
    assert dataset_fingerprint(DatasetSpec(uri=str(root))).parquet_files == 1


def test_a_glob_with_no_folder_before_its_wildcard_is_refused(tmp_path):
    """Image paths are confined to the dataset root; a glob like /data-*/x.parquet has none."""
    from counterfactual_lab.ingest.source import open_dataset

    with pytest.raises(DatasetUnreadable, match="no folder before its first wildcard"):
        open_dataset(DatasetSpec(uri="/cflab-no-such-*/part.parquet"))


def test_a_corrupted_or_deleted_referenced_image_is_a_new_run(tmp_path, models):
    """Issue 9's stale run: the Parquet files unchanged, an image they point at broken or gone."""
    from datasets_on_disk import path_dataset

    data = path_dataset(tmp_path / "by-path")
    config = config_for(data, models)
    original = locate_run(config).run_id
    images = sorted((data / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:50])
    corrupted = locate_run(config).run_id
    images[1].unlink()
    assert len({original, corrupted, locate_run(config).run_id}) == 3


def test_two_spellings_of_one_generator_plan_the_same_content_keys(tmp_path, dataset, models, monkeypatch):
    """Content keys name the generator by its identity, so the images of a run made with a
    relative model path serve a run made with the absolute one (issue 10: 0 cache hits)."""
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.ingest.validation import ingest_and_validate

    monkeypatch.chdir(tmp_path)
    absolute = config_for(dataset, models)
    relative = config_for(dataset, {"generation": "models/img2img", "judge": "models/clip"})
    valid = ingest_and_validate(absolute.dataset_spec(), image_store=ImageStore(str(tmp_path / "out"))).valid

    def keys(config):
        location = locate_run(config)
        items = plan_work_items(valid, config, location.spec, generator_identity=location.models["generator"].key)
        return [item.content_key for item in items]

    before = keys(absolute)
    assert before == keys(relative) and len(before) > 0
    (models["generation"] / "unet" / "model.safetensors").write_bytes(b"other unet")  # another generator
    assert set(keys(relative)).isdisjoint(before)


def test_candidates_frame_gives_every_planned_item_a_row_and_shares_images_by_key():
    """Items sharing a content key (an img2img reconstruction two attributes ask for) are generated
    once and both read its record; an item without a record is failed, so accounting closes."""
    import polars as pl

    from counterfactual_lab.runs.accounting import row_accounting
    from counterfactual_lab.generation.candidates import CANDIDATE_SCHEMA, candidates_frame
    from counterfactual_lab.generation.records import GenerationRecord
    from counterfactual_lab.plan.work_items import plan_work_items, set_id_for, unique_by_content_key

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
