"""``labels.parquet``: one row per (reviewer, set, member), written whole and atomically on every
answer, under a lock, so concurrent writers lose nothing and a killed one leaves a readable file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from counterfactual_lab.errors import UserError
from counterfactual_lab.review.labels import LABELS_SCHEMA, LabelStore, answer_problem, check_reviewer, read_labels


def test_an_answer_replaces_the_same_reviewers_earlier_one_and_undo_takes_back_the_latest(tmp_path):
    store = LabelStore(str(tmp_path / "run"))
    assert read_labels(str(tmp_path / "run")).schema == pl.Schema(LABELS_SCHEMA)
    store.answer("ana", "set1", "m1", "yes", "none", None, 0)
    store.answer("bob", "set1", "m1", "no", "none", "still a man", 0)
    store.answer("ana", "set1", "m1", "cant_tell", "background", None, 0)  # ana changes her mind
    store.answer("ana", "set2", "m2", "yes", "none", None, 0)
    labels = store.read()
    assert labels.height == 3
    assert labels.filter(pl.col("reviewer") == "ana").sort("set_id")["target_shown"].to_list() == ["cant_tell", "yes"]
    assert labels.filter(pl.col("reviewer") == "bob")["note"].to_list() == ["still a man"]
    assert store.take_back_latest("ana")["set_id"] == "set2"
    assert store.take_back_latest("ana")["set_id"] == "set1"
    assert store.take_back_latest("ana") is None
    assert store.read()["reviewer"].to_list() == ["bob"], "undo takes back only the reviewer's own answers"


def test_answers_outside_the_vocabularies_are_named():
    assert answer_problem("yes", "none") is None
    assert "target_shown 'maybe'" in answer_problem("maybe", "none")
    assert "other_change 'hair'" in answer_problem("yes", "hair")
    assert "note" in answer_problem("yes", "none", "x" * 5000)
    with pytest.raises(UserError, match="--reviewer"):
        check_reviewer("  ")


def test_threads_answering_at_once_lose_nothing(tmp_path):
    store = LabelStore(str(tmp_path / "run"))

    def answer(reviewer: str) -> None:
        for i in range(15):
            store.answer(reviewer, f"set{i}", "m", "yes", "none", None, 0)

    threads = [threading.Thread(target=answer, args=(name,)) for name in ("ana", "bob", "cy")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.read().height == 45


WRITER = textwrap.dedent("""
    import sys
    from counterfactual_lab.review.labels import LabelStore
    store = LabelStore(sys.argv[1])
    for i in range(int(sys.argv[3])):
        store.answer(sys.argv[2], f"set{i}", "m", "yes", "none", None, 0)
        print(i, flush=True)
""")


def writer(run: Path, reviewer: str, answers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(run), reviewer, str(answers)], stdout=subprocess.PIPE,
                            text=True)


def test_processes_share_the_file_and_a_killed_writer_leaves_it_readable(tmp_path):
    run = tmp_path / "run"
    first, second = writer(run, "ana", 20), writer(run, "bob", 20)
    assert first.wait(60) == 0 and second.wait(60) == 0
    assert read_labels(str(run)).height == 40, "two servers of one run never lose each other's answers"

    for attempt in range(2):
        killed = writer(run, f"killed{attempt}", 10_000)
        acknowledged = -1
        deadline = time.monotonic() + 30
        while acknowledged < 5 + 7 * attempt and time.monotonic() < deadline:
            acknowledged = int(killed.stdout.readline())
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        labels = read_labels(str(run))  # whole: the old file or the new one, never half of one
        assert labels.filter(pl.col("reviewer") == f"killed{attempt}").height >= acknowledged + 1
    assert LabelStore(str(run)).upsert(labels.head(0)).height == labels.height, "and the next writer carries on"


def test_a_damaged_labels_file_is_one_line(tmp_path):
    (tmp_path / "run" / "review").mkdir(parents=True)
    (tmp_path / "run" / "review" / "labels.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="labels.parquet is not a readable labels file"):
        read_labels(str(tmp_path / "run"))
