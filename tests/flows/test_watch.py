"""The dataset watcher: listing, fingerprints, state, and the events it emits."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from counterfactual_lab.ingest.watch import (
    changed_datasets,
    check_output_outside_prefixes,
    listing_fingerprint,
    list_datasets,
    read_state,
    record_seen,
    watch_state_uri,
)
from counterfactual_lab.errors import UserError
from prefect_harness import read_events, wait_for

EVENT = "counterfactual-lab.dataset.updated"


def write_parquet(path, rows: int = 3, fs=None) -> None:
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "caption": ["a photo of a man"] * rows})
    if fs is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path)
    else:
        with fs.open(path, "wb") as handle:
            pq.write_table(table, handle)


# ---- the library: listing, fingerprints, state (no Prefect) ----


def test_lists_folders_with_parquet_files_and_skips_bookkeeping(tmp_path):
    write_parquet(tmp_path / "a" / "part-0.parquet")
    write_parquet(tmp_path / "a" / "part-1.parquet")
    write_parquet(tmp_path / "b" / "nested" / "c" / "data.parquet")
    write_parquet(tmp_path / "hive" / "year=2024" / "month=1" / "x.parquet")
    write_parquet(tmp_path / "hive" / "year=2025" / "month=2" / "y.parquet")
    write_parquet(tmp_path / "a" / "_temporary" / "junk.parquet")
    write_parquet(tmp_path / ".cache" / "junk.parquet")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not data")

    assert list_datasets([str(tmp_path)]) == [
        str(tmp_path / "a"),
        str(tmp_path / "b" / "nested" / "c"),
        str(tmp_path / "hive"),
    ]


def test_single_parquet_file_is_a_dataset(tmp_path):
    path = tmp_path / "one.parquet"
    write_parquet(path)
    assert list_datasets([str(path)]) == [str(path)]
    assert len(listing_fingerprint(str(path))) == 64


def test_a_glob_is_one_dataset(tmp_path):
    write_parquet(tmp_path / "ds" / "a.parquet")
    write_parquet(tmp_path / "ds" / "b.parquet")
    pattern = str(tmp_path / "ds" / "*.parquet")
    assert list_datasets([pattern]) == [pattern]
    before = listing_fingerprint(pattern)
    write_parquet(tmp_path / "ds" / "c.parquet")
    assert listing_fingerprint(pattern) != before
    with pytest.raises(UserError, match="matches no .parquet files"):
        listing_fingerprint(str(tmp_path / "ds" / "*.csv"))


def test_fingerprint_changes_with_any_file_and_only_then(tmp_path):
    write_parquet(tmp_path / "ds" / "a.parquet", rows=2)
    first = listing_fingerprint(str(tmp_path / "ds"))
    assert listing_fingerprint(str(tmp_path / "ds")) == first

    write_parquet(tmp_path / "ds" / "b.parquet", rows=2)  # a file added
    added = listing_fingerprint(str(tmp_path / "ds"))
    write_parquet(tmp_path / "ds" / "a.parquet", rows=5)  # a file rewritten
    rewritten = listing_fingerprint(str(tmp_path / "ds"))
    os.remove(tmp_path / "ds" / "b.parquet")  # a file removed
    removed = listing_fingerprint(str(tmp_path / "ds"))
    assert len({first, added, rewritten, removed}) == 4


def test_fingerprint_matches_the_one_seen_by_the_prefix_listing(tmp_path):
    write_parquet(tmp_path / "ds" / "year=2024" / "a.parquet")
    changed = dict(changed_datasets([str(tmp_path)], watch_state_uri(str(tmp_path / "out"))))
    assert changed == {str(tmp_path / "ds"): listing_fingerprint(str(tmp_path / "ds"))}


def test_changed_datasets_reports_new_and_changed_until_recorded(tmp_path):
    data, state = tmp_path / "data", watch_state_uri(str(tmp_path / "out"))
    write_parquet(data / "a" / "x.parquet")
    write_parquet(data / "b" / "x.parquet")
    first = changed_datasets([str(data)], state)
    assert [uri for uri, _ in first] == [str(data / "a"), str(data / "b")]
    assert changed_datasets([str(data)], state) == first  # listing alone records nothing

    for uri, fp in first:
        record_seen(state, uri, fp)
    assert changed_datasets([str(data)], state) == []
    assert set(read_state(state)) == {str(data / "a"), str(data / "b")}

    write_parquet(data / "b" / "x.parquet", rows=7)
    assert [uri for uri, _ in changed_datasets([str(data)], state)] == [str(data / "b")]


def test_state_lives_under_the_output_uri_as_json(tmp_path):
    state = watch_state_uri(str(tmp_path / "out"))
    assert state == f"{tmp_path}/out/_watch/state.json"
    record_seen(state, "s3://bucket/ds", "f" * 64)
    saved = json.loads((tmp_path / "out" / "_watch" / "state.json").read_text())
    assert saved["version"] == 1
    assert saved["datasets"]["s3://bucket/ds"]["fingerprint"] == "f" * 64


def test_user_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_datasets([str(tmp_path / "missing")])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="not a .parquet file"):
        list_datasets([str(tmp_path / "x.csv")])
    with pytest.raises(UserError, match="not a single string"):
        list_datasets(str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="inside the watched prefix"):
        check_output_outside_prefixes(str(tmp_path / "data" / "out"), [str(tmp_path / "data")])
    check_output_outside_prefixes(str(tmp_path / "out"), [str(tmp_path / "data")])
    state = tmp_path / "out" / "_watch" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        read_state(str(state))


@pytest.mark.s3
def test_lists_and_fingerprints_on_s3_with_etags(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    write_parquet(f"{s3_bucket}/incoming/a/part-0.parquet", fs=fs)
    write_parquet(f"{s3_bucket}/incoming/b/part-0.parquet", fs=fs)
    write_parquet(f"{s3_bucket}/incoming/_watch/junk.parquet", fs=fs)
    prefix = f"s3://{s3_bucket}/incoming"
    assert list_datasets([prefix]) == [f"{prefix}/a", f"{prefix}/b"]
    assert list_datasets([f"s3://{s3_bucket}/nothing-yet"]) == []  # an empty prefix is normal on S3
    with pytest.raises(UserError, match="does not exist"):
        list_datasets([f"s3://{s3_bucket}-missing/incoming"])
    before = listing_fingerprint(f"{prefix}/a")
    write_parquet(f"{s3_bucket}/incoming/a/part-0.parquet", rows=9, fs=fs)
    fs.invalidate_cache()
    assert listing_fingerprint(f"{prefix}/a") != before


# ---- the flow: one event per new or changed dataset, against a real Prefect server ----


def _fingerprints_announced(uri: str, count: int) -> list[str]:
    """Fingerprints in the events stored for ``uri``, oldest first, once ``count`` are there."""
    events = wait_for(
        lambda: (found := read_events(EVENT, uri)) and len(found) >= count and found,
        timeout=30,
        what=f"{count} {EVENT} event(s) for {uri}",
    )
    events = sorted(events, key=lambda e: e.occurred)
    assert all(e.payload["dataset_uri"] == uri for e in events)
    return [e.payload["fingerprint"] for e in events]


def _watch_new_unchanged_changed(prefix: str, out: str, dataset_uri: str, rewrite) -> None:
    from counterfactual_lab.flows.watch import watch_datasets

    assert watch_datasets(prefixes=[prefix], output_uri=out) == [dataset_uri]
    first_fp = read_state(watch_state_uri(out))[dataset_uri]["fingerprint"]
    assert _fingerprints_announced(dataset_uri, 1) == [first_fp]

    assert watch_datasets(prefixes=[prefix], output_uri=out) == []  # unchanged: no event

    rewrite()
    assert watch_datasets(prefixes=[prefix], output_uri=out) == [dataset_uri]
    second_fp = read_state(watch_state_uri(out))[dataset_uri]["fingerprint"]
    assert second_fp != first_fp
    # Exactly two events: had the unchanged run emitted, first_fp would appear twice.
    assert _fingerprints_announced(dataset_uri, 2) == [first_fp, second_fp]


@pytest.mark.prefect
@pytest.mark.slow
def test_watcher_emits_once_per_new_or_changed_local_dataset(prefect_server, tmp_path):
    data = tmp_path / "incoming"
    write_parquet(data / "ds" / "part-0.parquet")
    _watch_new_unchanged_changed(
        str(data), str(tmp_path / "out"), str(data / "ds"),
        rewrite=lambda: write_parquet(data / "ds" / "part-1.parquet"),
    )


@pytest.mark.prefect
@pytest.mark.s3
@pytest.mark.slow
def test_watcher_emits_once_per_new_or_changed_s3_dataset(prefect_server, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    write_parquet(f"{s3_bucket}/incoming/ds/part-0.parquet", fs=fs)

    def rewrite():
        write_parquet(f"{s3_bucket}/incoming/ds/part-0.parquet", rows=11, fs=fs)
        s3fs.S3FileSystem.clear_instance_cache()

    prefix = f"s3://{s3_bucket}/incoming"
    _watch_new_unchanged_changed(prefix, f"s3://{s3_bucket}/out", f"{prefix}/ds", rewrite)


@pytest.mark.prefect
def test_state_is_not_updated_when_the_event_is_not_emitted(prefect_server, tmp_path, monkeypatch):
    from counterfactual_lab.flows import watch as flows_watch

    # Failure injection: Prefect refusing the event (emit_event returns None).
    monkeypatch.setattr(flows_watch, "emit_event", lambda **kwargs: None)
    write_parquet(tmp_path / "incoming" / "ds" / "part-0.parquet")
    out = str(tmp_path / "out")
    state = flows_watch.watch_datasets(prefixes=[str(tmp_path / "incoming")], output_uri=out, return_state=True)
    assert state.is_failed()
    with pytest.raises(flows_watch.EventNotEmitted, match="did not accept"):
        state.result()
    assert read_state(watch_state_uri(out)) == {}
