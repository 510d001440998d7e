"""The answer cache at audit scale: one shard per batch, an index by image, nothing asked twice
across batchings, runs and crashes, atomic writes, and at most one object per 100 answers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from counterfactual_lab.evaluate.auditees.answer_cache import (
    COMPACT_SEGMENTS,
    AnswerCache,
    CallCounts,
    answer_key,
    value_problem,
)
from counterfactual_lab.evaluate.auditees.probes import cached_answers
from hang_guard import call_within
from hostile_files import HOSTILE, expected_words, plant

PROMPTS = ["Is this a doctor?", "Is this a nurse?", "Is this a pilot?", "Is this a cook?"]


def ask(cache: AnswerCache, images: list[str], counts: CallCounts) -> list[dict]:
    """The yes/no answers of ``images`` × PROMPTS through ``cache`` (computed: a fixed function)."""
    fields = [{"probe": "yes_no", "content_key": image, "prompt": p, "model": "sha256:m"} for image in images for p in PROMPTS]
    return cached_answers("yes_no", fields, lambda todo: [{"sums": [0.25, 0.5]} for _ in todo], cache, counts)


def run(root: Path, images: list[str], batch: int) -> CallCounts:
    """One audit's evaluation as the flow does it: read the index, one view per batch, one index segment."""
    counts = CallCounts()
    cache = AnswerCache(str(root), counts=counts)
    index = cache.read_index()
    written = {}
    for start in range(0, len(images), batch):
        group = images[start : start + batch]
        view = cache.view(subjects=group, shards=index.shards_for(group), counts=counts)
        ask(view, group, counts)
        view.flush()
        written.update(view.written)
    cache.write_index(written, index)
    return counts


def images_of(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(n)]


def test_one_object_per_batch_and_nothing_asked_twice_under_another_batching(tmp_path):
    images = images_of(1000)
    first = run(tmp_path, images, batch=250)
    answers = len(images) * len(PROMPTS)
    assert first.computed == answers and first.objects_written == 4 + 1  # 4 shards, 1 index segment
    assert first.objects_written <= answers / 100
    again = run(tmp_path, images, batch=64)  # another batching: found through the index
    assert (again.computed, again.cached, again.objects_written) == (0, answers, 0)


def test_a_crash_before_the_index_write_loses_no_answer(tmp_path):
    images = images_of(40)
    counts = CallCounts()
    view = AnswerCache(str(tmp_path), subjects=images[:20], counts=counts)
    ask(view, images[:20], counts)
    view.flush()  # the task wrote its shard; the run died before writing its index segment
    assert not (tmp_path / "_auditee_cache" / "v2" / "index").exists()
    again = run(tmp_path, images, batch=8)  # found by listing the shards, then indexed
    assert again.computed == 20 * len(PROMPTS) and again.cached == 20 * len(PROMPTS)
    index = AnswerCache(str(tmp_path)).read_index()
    assert index.unindexed == {} and len(index.shards) == 1 + 3


def test_two_machines_writing_one_batch_leave_one_valid_shard(tmp_path):
    images = images_of(16)

    def machine() -> None:
        counts = CallCounts()
        view = AnswerCache(str(tmp_path), subjects=images, shards=[], counts=counts)
        ask(view, images, counts)
        view.flush()

    threads = [threading.Thread(target=machine) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = list((tmp_path / "_auditee_cache" / "v2" / "shards").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # one name per request, no temp files left
    counts = CallCounts()
    ask(AnswerCache(str(tmp_path), subjects=images), images, counts)
    assert counts.cached == 16 * len(PROMPTS)


def test_a_shard_copied_under_another_name_or_an_edited_index_is_not_trusted(tmp_path):
    images = images_of(8)
    run(tmp_path, images[:4], batch=4)
    run(tmp_path, images[4:], batch=4)
    shards = sorted((tmp_path / "_auditee_cache" / "v2" / "shards").iterdir())
    shards[1].write_bytes(shards[0].read_bytes())  # a valid shard, under the other batch's name
    counts = CallCounts()
    ask(AnswerCache(str(tmp_path), subjects=images), images, counts)
    assert counts.computed == 4 * len(PROMPTS)
    segment = next((tmp_path / "_auditee_cache" / "v2" / "index").iterdir())
    document = json.loads(segment.read_text())
    document["shards"]["0" * 64] = ["x"]
    segment.write_text(json.dumps(document))
    assert segment.as_posix() not in AnswerCache(str(tmp_path)).read_index().segments


def test_index_segments_are_merged_past_the_limit(tmp_path):
    for i in range(COMPACT_SEGMENTS + 1):
        run(tmp_path, [f"{i:064x}"], batch=1)
    folder = tmp_path / "_auditee_cache" / "v2" / "index"
    assert len(list(folder.iterdir())) == 1  # the 33rd write merged the 32 segments before it
    index = AnswerCache(str(tmp_path)).read_index()
    assert len(index.shards) == COMPACT_SEGMENTS + 1 and index.unindexed == {}


def test_answer_keys_are_the_hash_of_their_fields():
    assert answer_key({"b": 1, "a": "x"}) == answer_key({"a": "x", "b": 1}) != answer_key({"a": "y", "b": 1})


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_file_in_place_of_a_shard_is_refused_unread_and_its_answers_recomputed(tmp_path, caplog, kind):
    from counterfactual_lab.evaluate.auditees.answer_cache import SHARD_MAX_BYTES

    images = images_of(4)
    run(tmp_path, images, batch=4)
    [shard] = (tmp_path / "_auditee_cache" / "v2" / "shards").iterdir()
    plant(shard, kind, SHARD_MAX_BYTES)
    counts = CallCounts()
    call_within(20, lambda: ask(AnswerCache(str(tmp_path), subjects=images), images, counts), fifos=[shard],
                what="the answer cache")
    assert counts.computed == 4 * len(PROMPTS)
    refusals = [r.message for r in caplog.records if "refused" in r.message]
    assert len(refusals) == 1 and str(shard) in refusals[0] and all(w in refusals[0] for w in expected_words(kind))


def test_a_generated_text_may_hold_any_character():
    from counterfactual_lab.evaluate.auditees.answer_cache import value_problem

    fields = {"probe": "generation", "max_new_tokens": 4}
    assert value_problem("generation", fields, {"text": "a\x00b\x1b[2J", "tokens": 4}) is None
    assert value_problem("generation", fields, {"text": "a", "tokens": 5}) is not None
    assert value_problem("toxicity", {}, {"toxicity": 1.0000001}) is not None
    assert value_problem("choice", {}, {"loglik": float("nan")}) is not None



def test_sentiment_and_embedding_scores_are_trusted_only_in_range():
    """A shard with a sentiment score or a text embedding is read back (not refused as an unknown
    probe, which would recompute every answer of the shard), and an out-of-range one is refused."""
    assert value_problem("sentiment", {}, {"sentiment": -0.8}) is None
    assert value_problem("sentiment", {}, {"sentiment": 1.5}) is not None
    assert value_problem("sentiment", {}, {"sentiment": float("nan")}) is not None
    assert value_problem("text_embedding", {}, {"text_embedding": [0.6, -0.8]}) is None
    assert value_problem("text_embedding", {}, {"text_embedding": []}) is not None
    assert value_problem("text_embedding", {}, {"text_embedding": [0.6, 2.0]}) is not None
    assert value_problem("text_embedding", {}, {"text_embedding": "0.6,0.8"}) is not None
