"""Issue 17: anyone who can write to a shared output folder must not be able to stop every
scheduled audit. A FIFO, a symlink to /dev/zero or an oversized file where the run's manifest or
a stored image should be ends ``cflab audit`` in one line and exit 2, in seconds (before Prefect
starts, for the manifest)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from audit_runs import audit_home, write_config
from cli_runs import assert_one_line
from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.flows.cli import EXIT_USAGE, main
from counterfactual_lab.runs.location import locate_run
from counterfactual_lab.runs.publisher import MANIFEST_MAX_BYTES
from counterfactual_lab.storage.files import STORED_IMAGE_MAX_BYTES, ImageStore
from counterfactual_lab.storage.regular_files import UnreadableFile
from hang_guard import call_within
from hostile_files import HOSTILE, expected_words, plant


@pytest.mark.parametrize("kind", HOSTILE)
def test_cflab_audit_refuses_a_hostile_manifest_before_prefect_starts(tiny_models, tmp_path_factory, tmp_path, capsys,
                                                                      monkeypatch, kind):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # a temporary server would take 15 s: none is started
    inputs = audit_home(tmp_path_factory, tiny_models)
    config = write_config(tmp_path / "audit.yaml", inputs, str(tmp_path / "out"))
    location = locate_run(AuditConfig.from_yaml(config))
    Path(location.run_uri).mkdir(parents=True)
    manifest = plant(Path(location.run_uri) / "manifest.json", kind, MANIFEST_MAX_BYTES)
    started = time.monotonic()
    code = call_within(30, lambda: main(["audit", "--config", config]), fifos=[manifest], what="cflab audit")
    assert code == EXIT_USAGE and time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert_one_line(err, "manifest.json", *expected_words(kind))
    assert "Prefect server" not in err


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_stored_image_is_refused_not_read(tmp_path, kind):
    store = ImageStore(str(tmp_path))
    (tmp_path / "images").mkdir()
    planted = plant(Path(store.uri("k" * 64)), kind, STORED_IMAGE_MAX_BYTES)
    with pytest.raises(UnreadableFile, match="|".join(expected_words(kind))):
        call_within(10, lambda: store.get("k" * 64), fifos=[planted], what="ImageStore.get")
    with pytest.raises(UnreadableFile):
        call_within(10, lambda: store.load(str(planted)), fifos=[planted], what="ImageStore.load")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_ingest_stores_an_image_again_over_a_non_regular_file_planted_under_its_name(sample_dataset, tmp_path, kind):
    """What a forced rerun meets when every stored image is a FIFO: ingest does not count a FIFO
    or a device as the image it is named after, so it stores the image over it (never opening it),
    and nothing later reads what was planted."""
    from counterfactual_lab.config.dataset_spec import DatasetSpec
    from counterfactual_lab.ingest.validation import ingest_and_validate

    store = ImageStore(str(tmp_path / "out"))
    spec = DatasetSpec(uri=str(sample_dataset))
    first = ingest_and_validate(spec, image_store=store)
    planted = [plant(Path(store.uri(key)), kind, 0) for key in first.valid["content_key"].to_list()]
    again = call_within(60, lambda: ingest_and_validate(spec, image_store=store), fifos=planted, what="ingest")
    assert again.valid.height == first.valid.height
    assert all(path.is_file() and not path.is_symlink() for path in planted)
