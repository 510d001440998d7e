"""The generation cache policy: keyed on work items' content keys, never on large inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from counterfactual_lab.plan.work_items import WorkItem, work_item_key
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.cache import GENERATION_CACHE_VERSION, WorkItemsCachePolicy, generation_cache_policy


def item(seed: int, target: str = "female") -> WorkItem:
    source_key = "a" * 64
    caption = f"a photo of a {'woman' if target == 'female' else 'man'}"
    return WorkItem(
        source_id="row-1", source_key=source_key, source_image_uri=f"out/images/{source_key}.png",
        caption="a photo of a man", attribute="gender", source_value="male", target_value=target,
        seed=seed, counterfactual_caption=caption, explanation="man -> woman", instruction="make the man a woman",
        generator="g" * 16,
        content_key=work_item_key(source_key, "gender", "male", target, seed, caption, "g" * 16),
    )


class Unhashable:
    """Stands for a loaded pipeline: hashing or pickling it must never be attempted."""

    def __reduce__(self):
        raise AssertionError("the cache policy tried to serialise a large input")

    def __hash__(self):
        raise AssertionError("the cache policy tried to hash a large input")


def key(policy, task_name="generate", **inputs):
    ctx = SimpleNamespace(task=SimpleNamespace(name=task_name))
    return policy.compute_key(task_ctx=ctx, inputs=inputs, flow_parameters={})


def test_key_is_the_content_keys_plus_version_and_small_inputs():
    policy = WorkItemsCachePolicy()
    items = [item(0), item(1)]
    base = key(policy, items=items, out="s3://b/out")
    # Only the content key identifies an item: other fields do not change the key.
    assert key(policy, items=[replace(i, explanation="reworded") for i in items], out="s3://b/out") == base
    assert key(policy, items=[i.to_dict() for i in items], out="s3://b/out") == base
    changed = {
        "other items": key(policy, items=[item(0), item(2)], out="s3://b/out"),
        "item order": key(policy, items=items[::-1], out="s3://b/out"),
        "version": key(WorkItemsCachePolicy(version=GENERATION_CACHE_VERSION + "-next"), items=items, out="s3://b/out"),
        "task": key(policy, task_name="judge", items=items, out="s3://b/out"),
        "small input": key(policy, items=items, out="s3://b/elsewhere"),
        "dataclass input": key(policy, items=items, out="s3://b/out", store=ImageStore("s3://b/out")),
    }
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def test_large_or_opaque_inputs_are_never_hashed():
    policy = WorkItemsCachePolicy()
    items = [item(0)]
    base = key(policy, items=items)
    assert key(policy, items=items, pipeline=Unhashable()) == base
    assert key(policy, items=items, image_bytes=b"\x00" * 10_000_000) == base
    assert key(policy, items=items, big_list=list(range(100_000))) == base


def test_missing_items_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="has no parameter 'batch'"):
        key(WorkItemsCachePolicy(items_parameter="batch"), items=[item(0)])
    with pytest.raises(TypeError, match="no content_key"):
        key(WorkItemsCachePolicy(), items=[{"seed": 1}])


def test_key_storage_is_always_set_and_always_verified(tmp_path):
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    from counterfactual_lab.tasks.result_serialization import VerifiedKeyStorage

    def inner(policy):
        assert isinstance(policy.key_storage, VerifiedKeyStorage)
        return policy.key_storage.inner

    assert isinstance(inner(WorkItemsCachePolicy()), LocalFileSystem)
    assert inner(generation_cache_policy(str(tmp_path / "keys"))).basepath == str(tmp_path / "keys")
    # One "/" in a str would be read by Prefect as a block slug: it must stay a local folder.
    assert inner(generation_cache_policy("out/keys")).basepath == "out/keys"
    remote = inner(generation_cache_policy("s3://bucket/cache-keys"))
    assert isinstance(remote, RemoteFileSystem) and remote.basepath == "s3://bucket/cache-keys"
    # Already verified: not wrapped twice.
    verified = generation_cache_policy(tmp_path).key_storage
    assert generation_cache_policy(verified).key_storage is verified


def test_a_lock_manager_makes_the_policy_serializable_and_survives_configure(tmp_path):
    from counterfactual_lab.storage.locks import StoreLockManager

    locks = StoreLockManager(str(tmp_path / "locks"))
    policy = generation_cache_policy(tmp_path / "keys", lock_manager=locks)
    assert (policy.isolation_level, policy.lock_manager) == ("SERIALIZABLE", locks)
    assert generation_cache_policy(tmp_path / "keys").isolation_level is None
    # Prefect deep-copies policies in configure(); the lock manager is shared, not copied.
    assert policy.configure(isolation_level="SERIALIZABLE").lock_manager is locks
    with pytest.raises(ValueError, match="needs a lock_manager"):
        WorkItemsCachePolicy(isolation_level="SERIALIZABLE")


def records_for(items: list[WorkItem], out: str) -> list:
    from counterfactual_lab.generation.records import GenerationRecord

    return [GenerationRecord(i.content_key, f"{out}/images/{i.content_key}.png", "generated", seconds=0.25) for i in items]


@pytest.mark.prefect
def test_real_task_is_cached_on_content_keys_and_lookups_use_key_storage(prefect_server, tmp_path):
    from prefect import flow, task

    from counterfactual_lab.tasks.result_serialization import GenerationRecordsSerializer, RECORDS_FORMAT

    calls: list[list[str]] = []
    key_dir, result_dir = tmp_path / "cache-keys", tmp_path / "results"

    @task(cache_policy=generation_cache_policy(key_dir), persist_result=True, result_storage=result_dir,
          result_serializer=GenerationRecordsSerializer())
    def generate(items: list[WorkItem], out: str, pipeline: object) -> list:
        calls.append([i.content_key for i in items])
        return records_for(items, out)

    @flow
    def run_batches(out: str):
        pipeline = Unhashable()
        first = generate([item(0), item(1)], out, pipeline, return_state=True)
        again = generate([item(0), item(1)], out, pipeline, return_state=True)
        other = generate([item(0), item(2)], out, pipeline, return_state=True)
        return first, again, other

    first, again, other = run_batches(str(tmp_path / "out"))
    assert (first.name, again.name, other.name) == ("Completed", "Cached", "Completed")
    assert again.result() == first.result() == records_for([item(0), item(1)], str(tmp_path / "out"))
    assert calls == [[item(0).content_key, item(1).content_key], [item(0).content_key, item(2).content_key]]

    # The cache record (metadata) sits in key storage, apart from the result: a lookup
    # reads a small record that does not contain the result.
    records = sorted(p.name for p in key_dir.iterdir())
    assert len(records) == 2 and sorted(p.name for p in result_dir.iterdir()) == records
    for name in records:
        record = json.loads((key_dir / name).read_bytes())
        assert "result" not in record and record["storage_key"].endswith(name)
        assert record["serializer"] == {"type": "cflab-generation-records"}
        # The result itself is plain JSON data: the records, nothing that names code.
        stored = json.loads((result_dir / name).read_bytes())
        assert stored["format"] == RECORDS_FORMAT and len(stored["records"]) == 2
        assert "__class__" not in (result_dir / name).read_text()


def test_credentials_never_enter_the_key():
    """Rotating a credential keeps every cached batch; the store's root (which store) still counts."""
    policy = WorkItemsCachePolicy()
    items = [item(0), item(1)]

    def store(root: str, secret: str) -> ImageStore:
        return ImageStore(root, {"key": "AKIA-1", "secret": secret, "endpoint_url": "http://minio:9000",
                                 "client_kwargs": {"aws_session_token": secret}})

    before = key(policy, items=items, store=store("s3://b/out", "old-secret-1234"))
    assert key(policy, items=items, store=store("s3://b/out", "rotated-secret-5678")) == before
    assert key(policy, items=items, store=ImageStore("s3://b/out")) == before  # options say how, not which store
    assert key(policy, items=items, store=store("s3://b/elsewhere", "old-secret-1234")) != before
    # A secret given as a plain input or inside a URI is no identity either.
    assert key(policy, items=items, token="tok-1111") == key(policy, items=items, token="tok-2222")
    assert key(policy, items=items, out="s3://u:pw-1@h/b") == key(policy, items=items, out="s3://u:pw-2@h/b")
