"""One writer per batch: two audits of the same config at once share each batch.

The lock under it (``counterfactual_lab.storage.locks.StoreLockManager``) is tested on its own
first, on local disk and on a real HTTP S3 endpoint (moto's server): exclusive, leased,
renewed while held, and taken over at once when its holder was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from counterfactual_lab.storage.locks import StoreLockManager


def assert_exclusive(root: str, storage_options: dict[str, Any] | None = None, workers: int = 4, rounds: int = 3) -> None:
    """``workers`` threads, each with its own manager (as separate processes would be), take
    the same key ``rounds`` times: never two inside at once, and every one gets in."""
    inside, most, entries = [0], [0], []
    guard = threading.Lock()
    start = threading.Barrier(workers)

    def worker(n: int) -> None:
        locks = StoreLockManager(root, storage_options, poll_seconds=0.02)
        start.wait()
        for r in range(rounds):
            holder = f"worker-{n}-{r}"
            assert locks.acquire_lock("batch-key", holder)
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with guard:
                inside[0] -= 1
                entries.append(holder)
            locks.release_lock("batch-key", holder)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert most[0] == 1
    assert len(entries) == workers * rounds
    assert not StoreLockManager(root, storage_options).is_locked("batch-key")


def test_a_lock_has_one_holder_at_a_time_on_local_disk(tmp_path):
    assert_exclusive(str(tmp_path / "locks"))


@pytest.mark.s3
def test_a_lock_has_one_holder_at_a_time_on_s3(s3_bucket):
    # Conditional PUT (If-None-Match: *): of two racing creators, S3 accepts exactly one.
    assert_exclusive(f"s3://{s3_bucket}/out/.locks")


def lock_record(locks: StoreLockManager, key: str) -> dict[str, Any] | None:
    """The lock file of ``key`` as its holders wrote it (None when there is none)."""
    return locks._read(locks.lock_path(key))


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition()`` until it is truthy: waits on events, not on how long they take."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


# Leases of seconds, not fractions of one: on two busy cores a heartbeat thread can lose a
# second. The tests assert the order of what happened (renewed before the old expiry, taken
# over only after it), never how many seconds it took.
LEASE_SECONDS = 3.0


def test_a_held_lock_is_renewed_and_an_abandoned_one_expires(tmp_path):
    holder = StoreLockManager(str(tmp_path), lease_seconds=LEASE_SECONDS, poll_seconds=0.05)
    other = StoreLockManager(str(tmp_path), lease_seconds=LEASE_SECONDS, poll_seconds=0.05)
    assert holder.acquire_lock("k", "a")
    first = lock_record(other, "k")["expires_at"]
    # The heartbeat pushes the expiry forward: two renewals, each later than the one before.
    renewed = wait_until(lambda: (r := lock_record(other, "k")) and r["expires_at"] > first and r, "a first renewal")
    wait_until(lambda: lock_record(other, "k")["expires_at"] > renewed["expires_at"], "a second renewal")
    # Past the first lease's end the lock is still held, by "a" alone.
    wait_until(lambda: time.time() > first, "the first lease's end")
    assert not other.acquire_lock("k", "b", acquire_timeout=0)
    assert other.is_locked("k") and other.is_lock_holder("k", "a") and not other.is_lock_holder("k", "b")
    holder.release_lock("k", "a")
    assert lock_record(other, "k") is None
    assert other.acquire_lock("k", "b", acquire_timeout=0)
    other.release_lock("k", "b")

    # A fixed lease (hold_timeout) is not renewed: once it runs out, another takes over.
    assert holder.acquire_lock("k", "a", hold_timeout=1.0)
    fixed = lock_record(other, "k")
    assert not other.acquire_lock("k", "b", acquire_timeout=0)  # still within its lease
    assert other.acquire_lock("k", "b", acquire_timeout=60)
    taken_at = time.time()
    assert taken_at >= fixed["expires_at"]  # taken over only after the lease ran out ...
    assert lock_record(other, "k")["holder"] == "b"  # ... which nobody had renewed
    # The old holder's release must not free the new holder's key.
    holder.release_lock("k", "a")
    assert other.is_locked("k") and other.is_lock_holder("k", "b")
    other.release_lock("k", "b")


HOLD_AND_WAIT = """
import sys, time
from counterfactual_lab.storage.locks import StoreLockManager
locks = StoreLockManager(sys.argv[1], lease_seconds=600)
assert locks.acquire_lock("batch-key", "killed-holder")
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_whose_holder_was_killed_is_taken_over_at_once(tmp_path):
    """kill -9 mid-batch: the next audit on this machine does not wait out a 10-minute lease."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        locks = StoreLockManager(str(tmp_path))
        assert not locks.acquire_lock("batch-key", "next", acquire_timeout=0)  # alive: it is respected
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        killed = lock_record(locks, "batch-key")
        assert killed["holder"] == "killed-holder"
        # Well within the dead holder's 10-minute lease, the lock is taken over: its process is gone.
        assert locks.acquire_lock("batch-key", "next", acquire_timeout=60)
        assert time.time() < killed["expires_at"]
        assert lock_record(locks, "batch-key")["holder"] == "next"
    finally:
        if holder.poll() is None:
            holder.kill()
    locks.release_lock("batch-key", "next")


def test_a_lock_key_must_be_a_plain_name(tmp_path):
    locks = StoreLockManager(str(tmp_path))
    for key in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="plain name"):
            locks.acquire_lock(key, "h", acquire_timeout=0)


# ---- two audits at once ----


@pytest.mark.prefect
@pytest.mark.slow
def test_two_audits_of_the_same_config_at_once_generate_each_item_once(prefect_server, tiny_models, tmp_path_factory):
    """Started together (two threads, two flow runs on the temporary Prefect server): every batch
    is generated by one of them and read from the cache by the other."""
    from audit_runs import assert_accounting_closes, audit_home, pipeline_calls, write_config

    from counterfactual_lab.tasks import generate as generate_task
    from counterfactual_lab.runs.reader import read_run
    from counterfactual_lab.flows.audit import dataset_audit

    inputs = audit_home(tmp_path_factory, tiny_models)
    root = tmp_path_factory.mktemp("concurrent")
    out = str(root / "out")
    config = write_config(root / "audit.yaml", inputs, out)

    made: list[str] = []  # content keys a generation task generated (not found in the store)
    real_generate_batch = generate_task.generate_batch

    def recording_generate_batch(*args: Any, **kwargs: Any):
        records = real_generate_batch(*args, **kwargs)
        made.extend(r.content_key for r in records if r.status == "generated")
        return records

    start = threading.Barrier(2)
    results: dict[int, Any] = {}

    def audit(n: int) -> None:
        start.wait()
        try:
            results[n] = dataset_audit(config_uri=config, output_uri=out)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[n] = exc

    with pipeline_calls() as calls, pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate_task, "generate_batch", recording_generate_batch)
        threads = [threading.Thread(target=audit, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
    assert all(isinstance(r, str) for r in results.values()), results
    assert results[0] == results[1]

    run = read_run(results[0])
    acc = assert_accounting_closes(run)
    planned = acc["planned"]
    assert planned == 40  # 8 rows × (reconstruction + counterfactual) × 2 seeds + 8 controls
    # Each work item generated exactly once, by one of the two audits; each batch one pipeline call.
    assert len(made) == planned and set(Counter(made).values()) == {1}
    assert set(made) == set(run.counterfactuals["content_key"])
    assert len(calls) == planned // 4
    assert not any(Path(out, ".locks").glob("*.lock"))  # every lock released
