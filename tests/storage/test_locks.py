"""The output store's batch locks: one holder at a time, and a holder never frees another's lock."""

from __future__ import annotations

import time

from counterfactual_lab.storage.locks import StoreLockManager


def test_a_release_by_a_holder_whose_lock_was_taken_over_leaves_the_new_holders_lock(tmp_path):
    """A mutation check removed the holder check from release_lock and the suite missed it: holder
    a's lease expired, b took the lock over, then a (still running) released. b must still hold it,
    as a fresh lock manager (another process) reading the store sees."""
    root = str(tmp_path / "locks")
    a, b = StoreLockManager(root), StoreLockManager(root)
    assert a.acquire_lock("batch", holder="a", hold_timeout=0.05)  # a fixed lease, not renewed
    time.sleep(0.1)
    assert b.acquire_lock("batch", holder="b", acquire_timeout=5)  # a's lease expired: taken over
    a.release_lock("batch", holder="a")
    fresh = StoreLockManager(root)
    assert fresh.is_locked("batch") and fresh.is_lock_holder("batch", "b")
    assert not fresh.acquire_lock("batch", holder="c", acquire_timeout=0)
    b.release_lock("batch", holder="b")
    assert not StoreLockManager(root).is_locked("batch")
