"""Stored task results cannot run code: a planted pickle (or Prefect JSON naming a class) is refused unread.

The attack, as the hardening probe ran it: whoever can write to the result storage replaces a
cached generation batch's stored result with a payload that runs a shell command when decoded.
Prefect decodes with the serializer the *stored* record names, so the payload chooses its
decoder. Here every payload would write a marker file if decoded; the tests show the payload is
live (Prefect's own decoding runs it), then that the audit's generation task refuses it (no
marker), regenerates the batch from the image store, and rewrites the record as data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from counterfactual_lab.errors import UntrustedResultError
from counterfactual_lab.generation.records import GenerationRecord
from counterfactual_lab.tasks.result_serialization import (
    RECORDS_FORMAT,
    SERIALIZER_TYPE,
    GenerationRecordsSerializer,
    StoredTaskError,
    check_cache_record,
    decode_generation_result,
    records_checksum,
)


class RunsCommand:
    """Unpickling this runs ``touch <marker>``: the shape of the payload the probe planted."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(marker: Path) -> bytes:
    """What Prefect's PickleSerializer(picklelib="pickle") would store for a RunsCommand."""
    return base64.encodebytes(pickle.dumps(RunsCommand(marker)))


def plant_importable_module(folder: Path, name: str, marker: Path) -> None:
    """A module whose import writes ``marker``: what Prefect's JSON decoder imports by name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing:\n    pass\n")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


RECORDS = [
    GenerationRecord("a" * 64, "out/images/a.png", "generated", seconds=0.5),
    GenerationRecord("b" * 64, None, "failed", error="MemoryError: too big"),
]


# ---- the serializer and the record check ----


def test_records_are_stored_as_plain_json_and_read_back():
    serializer = GenerationRecordsSerializer()
    blob = serializer.dumps(RECORDS)
    records = [r.to_dict() for r in RECORDS]
    assert json.loads(blob) == {"format": RECORDS_FORMAT, "version": 2, "key": None, "records": records,
                                "checksum": records_checksum(None, records)}
    assert serializer.loads(blob) == RECORDS
    # A failed attempt's exception is kept as its name and message, and read back as data.
    error = serializer.loads(serializer.dumps(ValueError("bad seed")))
    assert isinstance(error, StoredTaskError) and str(error) == "ValueError: bad seed"
    with pytest.raises(TypeError, match="lists of GenerationRecord only"):
        serializer.dumps({"not": "records"})


def test_a_pickle_is_refused_without_being_run(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle_payload(marker)
    for blob in (payload, base64.decodebytes(payload)):  # as Prefect stores it, and raw
        with pytest.raises(UntrustedResultError, match="not JSON"):
            GenerationRecordsSerializer().loads(blob)
    assert not marker.exists()
    # The payload is live: Prefect's pickle serializer runs it.
    from prefect.serializers import PickleSerializer

    PickleSerializer(picklelib="pickle").loads(payload)
    assert marker.exists()


def test_prefects_json_serializer_imports_whatever_the_data_names_and_ours_does_not(tmp_path):
    """Why Prefect's JSONSerializer is not data-only: ``{"__class__": "module.Name"}`` imports the module."""
    from prefect.serializers import JSONSerializer

    prefect_marker, our_marker = tmp_path / "imported-by-prefect", tmp_path / "imported-by-us"
    plant_importable_module(tmp_path / "site", "cflab_planted_a", prefect_marker)
    plant_importable_module(tmp_path / "site", "cflab_planted_b", our_marker)
    try:
        JSONSerializer().loads(b'{"__class__": "cflab_planted_a.Thing", "data": {}}')
    except Exception:  # noqa: BLE001 - building the class may fail; the import already ran
        pass
    assert prefect_marker.exists()
    with pytest.raises(UntrustedResultError, match="not a cflab.generation-records record"):
        decode_generation_result(b'{"__class__": "cflab_planted_b.Thing", "data": {}}')
    assert not our_marker.exists() and "cflab_planted_b" not in sys.modules


@pytest.mark.parametrize(
    "blob, reason",
    [
        (json.dumps({"format": "cflab.generation-records", "version": 2, "key": None, "records": [{"__class__": "x"}],
                     "checksum": records_checksum(None, [{"__class__": "x"}])}).encode(), "malformed"),
        (b'{"format": "cflab.generation-records", "version": 9, "records": []}', "version 9"),
        (b'{"format": "cflab.generation-records", "version": 1, "records": []}', "version 1, not 2"),
        (b'{"format": "cflab.generation-records", "version": 2, "key": null, "records": [], "extra": 1}', "has fields"),
        (b'{"format": "cflab.generation-records", "version": 2, "records": [NaN]}', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b" " * (16 * 2**20 + 1), "over the"),
    ],
)
def test_anything_but_our_exact_record_is_refused(blob, reason):
    with pytest.raises(UntrustedResultError, match=reason):
        decode_generation_result(blob)


def test_an_edited_record_or_one_moved_to_another_key_does_not_match_its_checksum():
    """Issue 17: a record edited in place (a failed item made generated) is refused, as is a valid
    record copied under another batch's cache key."""
    blob = json.loads(GenerationRecordsSerializer().dumps(RECORDS))
    blob["key"] = "k" * 64
    blob["checksum"] = records_checksum(blob["key"], blob["records"])
    assert decode_generation_result(json.dumps(blob).encode(), "k" * 64) == RECORDS
    edited = json.loads(json.dumps(blob))
    edited["records"][1].update(status="generated", error=None, image_uri="out/images/b.png")
    with pytest.raises(UntrustedResultError, match="does not match its checksum"):
        decode_generation_result(json.dumps(edited).encode())
    with pytest.raises(UntrustedResultError, match="written for cache key k+, not j+"):
        decode_generation_result(json.dumps(blob).encode(), "j" * 64)


def test_a_cache_record_must_name_our_serializer_and_its_own_result():
    key = "f" * 64
    ours = {"storage_key": f"/results/{key}", "expiration": None, "serializer": {"type": SERIALIZER_TYPE},
            "prefect_version": "3.9.1", "storage_block_id": None}
    assert check_cache_record(json.dumps(ours).encode(), key, "keys/x") == f"/results/{key}"
    refused = {
        "serializer 'pickle'": {**ours, "serializer": {"type": "pickle", "picklelib": "cloudpickle"}},
        "serializer 'json'": {**ours, "serializer": {"type": "json", "object_decoder": "os.system"}},
        "points at a storage block": {**ours, "storage_block_id": "8c1f0c9e-2ad0-4a51-9a53-6a1b1c1d1e1f"},
        "is not the result of": {**ours, "storage_key": "/etc/passwd"},
        "not a Prefect result record": {**ours, "result": "gASV"},
    }
    for reason, record in refused.items():
        with pytest.raises(UntrustedResultError, match=f"refused cache record keys/x: .*{reason}"):
            check_cache_record(json.dumps(record).encode(), key, "keys/x")
    with pytest.raises(UntrustedResultError, match="not JSON"):
        check_cache_record(pickle.dumps(ours), key, "keys/x")


# ---- the audit's generation task against a planted payload ----


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory, tiny_models):
    """(config, store, the 4 work items of one generation batch) of the small audit."""
    from audit_runs import audit_home, write_config

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.ingest.validation import ingest_and_validate

    inputs = audit_home(tmp_path_factory, tiny_models)
    root = tmp_path_factory.mktemp("planted")
    config = AuditConfig.from_yaml(write_config(root / "audit.yaml", inputs, str(root / "out")))
    spec = config.dataset_spec()
    store = ImageStore(str(root / "out"))
    outcome = ingest_and_validate(spec, image_store=store)
    items = plan_work_items(outcome.valid, config, spec)[: config.generation.batch_size]
    return config, store, items


def cache_files(config, store, items) -> tuple[Path, Path]:
    """(cache record, stored result) of the batch ``items``, where Prefect keeps them."""
    from counterfactual_lab.tasks.generate import generate_counterfactual_batch

    policy = generate_counterfactual_batch.cache_policy
    key = policy.compute_key(
        task_ctx=SimpleNamespace(task=SimpleNamespace(name=generate_counterfactual_batch.name)),
        inputs={"items": items, "generation": config.generation, "store": store, "device": "cpu"},
        flow_parameters={},
    )
    record = Path(policy.key_storage.inner.basepath) / key
    assert record.is_file(), "the batch has no cache record: the key computed here is not the task's"
    return record, Path(json.loads(record.read_bytes())["storage_key"])


@contextlib.contextmanager
def warnings_logged():
    """Warnings of task runs logged inside the block, as text. (Entered after a first flow run:
    Prefect configures logging then, replacing the handlers of its loggers.)"""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler, logger = Collect(), logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def run_generate(config, store, items) -> list[GenerationRecord]:
    from prefect import flow

    from counterfactual_lab.flows.fan_out import generate_batches as _generate

    @flow
    def generate_one_batch(items: list) -> list:
        return _generate(items, config, store, "cpu")

    return generate_one_batch(items)


def plant_pickle(record: Path, result: Path, marker: Path) -> None:
    """Replace the batch's cache record and result with a pickle that touches ``marker``, and
    show the pair is live: Prefect's own decoding of exactly these bytes runs the command."""
    from prefect._internal.result_records import ResultRecord

    metadata = json.loads(record.read_bytes())
    metadata["serializer"] = {"type": "pickle", "picklelib": "pickle", "picklelib_version": None}
    control = marker.with_name(marker.name + "-control")
    ResultRecord.deserialize_from_result_and_metadata(result=pickle_payload(control), metadata=json.dumps(metadata).encode())
    assert control.exists(), "the planted payload must be one Prefect itself would run"
    record.write_text(json.dumps(metadata))
    result.write_bytes(pickle_payload(marker))


@pytest.mark.prefect
@pytest.mark.slow
def test_a_pickle_planted_in_the_result_storage_is_refused_and_the_batch_made_again(prefect_server, one_batch, tmp_path):
    from audit_runs import generate_batch_calls, pipeline_calls

    config, store, items = one_batch
    with pipeline_calls() as calls:
        first = run_generate(config, store, items)
    assert [r.status for r in first] == ["generated"] * len(items) and len(calls) == 1
    record, result = cache_files(config, store, items)

    # 1. The whole entry replaced: a cache record naming the pickle serializer, a pickle result.
    marker = tmp_path / "ran-1"
    plant_pickle(record, result, marker)
    with pipeline_calls() as calls, generate_batch_calls() as batches, warnings_logged() as warnings:
        again = run_generate(config, store, items)
    assert not marker.exists()  # refused unread
    assert len(batches) == 1 and calls == []  # a cache miss: the task ran, and found every image in the store
    assert [r.status for r in again] == ["cached"] * len(items)
    assert [r.image_uri for r in again] == [r.image_uri for r in first]
    refusals = [w for w in warnings if "refused cache record" in w]
    assert refusals and str(record) in refusals[0] and "'pickle'" in refusals[0]
    # The entry was rewritten as data: the next run is served by the cache again.
    assert json.loads(record.read_bytes())["serializer"] == {"type": SERIALIZER_TYPE}
    assert json.loads(result.read_bytes())["format"] == RECORDS_FORMAT
    with generate_batch_calls() as batches:
        assert [r.status for r in run_generate(config, store, items)] == ["cached"] * len(items)
    assert batches == []

    # 2. Only the result replaced (the record still names our serializer): refused as well.
    marker = tmp_path / "ran-2"
    result.write_bytes(pickle_payload(marker))
    with generate_batch_calls() as batches, warnings_logged() as warnings:
        again = run_generate(config, store, items)
    assert not marker.exists() and len(batches) == 1
    assert [r.status for r in again] == ["cached"] * len(items)
    refusals = [w for w in warnings if "refused stored result" in w]
    assert refusals and str(result) in refusals[0] and "not JSON" in refusals[0]
    assert json.loads(result.read_bytes())["format"] == RECORDS_FORMAT


@pytest.mark.prefect
@pytest.mark.slow
def test_prefect_json_naming_a_class_is_refused_without_importing_it(prefect_server, one_batch, tmp_path):
    from audit_runs import generate_batch_calls

    config, store, items = one_batch
    run_generate(config, store, items)
    record, result = cache_files(config, store, items)
    marker = tmp_path / "imported"
    plant_importable_module(tmp_path / "site", "cflab_planted_c", marker)
    metadata = json.loads(record.read_bytes())
    metadata["serializer"] = {"type": "json"}
    record.write_text(json.dumps(metadata))
    result.write_text(json.dumps({"__class__": "cflab_planted_c.Thing", "data": {}}))
    with generate_batch_calls() as batches:
        again = run_generate(config, store, items)
    assert not marker.exists() and "cflab_planted_c" not in sys.modules
    assert len(batches) == 1 and [r.status for r in again] == ["cached"] * len(items)


@pytest.mark.prefect
@pytest.mark.slow
def test_an_edited_result_is_refused_by_its_checksum_and_the_batch_made_again(prefect_server, one_batch):
    """Issue 17: a stored result edited in place (one record's status) with no checksum recomputed."""
    from audit_runs import generate_batch_calls

    config, store, items = one_batch
    run_generate(config, store, items)
    record, result = cache_files(config, store, items)
    stored = json.loads(result.read_bytes())
    assert stored["key"] == record.name  # written for the cache key it is stored under
    stored["records"][0]["seconds"] = 99.0
    result.write_text(json.dumps(stored))
    with generate_batch_calls() as batches, warnings_logged() as warnings:
        again = run_generate(config, store, items)
    assert len(batches) == 1 and [r.status for r in again] == ["cached"] * len(items)
    refusals = [w for w in warnings if "refused stored result" in w]
    assert refusals and str(result) in refusals[0] and "does not match its checksum" in refusals[0]
    assert json.loads(result.read_bytes())["records"][0]["seconds"] != 99.0  # rewritten


@pytest.mark.prefect
@pytest.mark.slow
def test_a_hostile_cache_record_is_refused_unread_and_the_batch_made_again(prefect_server, one_batch):
    """A FIFO, a symlink to /dev/zero, an oversized file where the batch's cache record is: each
    refused without being read (a warning naming it), the batch made again, the record rewritten."""
    from audit_runs import generate_batch_calls
    from hang_guard import call_within
    from hostile_files import HOSTILE, expected_words, plant

    from counterfactual_lab.tasks.result_serialization import MAX_RECORD_BYTES

    config, store, items = one_batch
    run_generate(config, store, items)
    record, _ = cache_files(config, store, items)
    for kind in HOSTILE:
        plant(record, kind, MAX_RECORD_BYTES)
        with generate_batch_calls() as batches, warnings_logged() as warnings:
            again = call_within(60, lambda: run_generate(config, store, items), fifos=[record], what="the generation task")
        assert len(batches) == 1 and [r.status for r in again] == ["cached"] * len(items), kind
        refusals = [w for w in warnings if "refused cache record" in w]
        assert refusals and str(record) in refusals[0] and all(word in refusals[0] for word in expected_words(kind))
        assert record.is_file() and json.loads(record.read_bytes())["serializer"] == {"type": SERIALIZER_TYPE}
