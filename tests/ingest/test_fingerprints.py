"""The dataset's content fingerprint: copies agree, any changed byte or referenced image does not.

The watcher's cheap listing fingerprint (size + mtime) is shown beside it where the two differ
on purpose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import counterfactual_lab.storage.file_hashes as file_hashes
from counterfactual_lab.ingest.watch import listing_fingerprint
from counterfactual_lab.ingest.fingerprints import dataset_fingerprint
from counterfactual_lab.demo.sample_dataset import write_sample_dataset
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.ingest.validation import ingest_and_validate
from datasets_on_disk import path_dataset


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CFLAB_CACHE_DIR", str(tmp_path / "hash-cache"))


def fingerprint(uri: str | Path, **spec) -> str:
    return dataset_fingerprint(DatasetSpec(uri=str(uri), **spec)).value


def count_hashes(monkeypatch) -> list[str]:
    """Record every file whose bytes are read to hash them."""
    read: list[str] = []
    original = file_hashes.sha256_file

    def spy(path, *args):
        read.append(str(path))
        return original(path, *args)

    monkeypatch.setattr(file_hashes, "sha256_file", spy)
    return read


def test_byte_identical_copies_get_one_fingerprint_unlike_the_watchers_listing(tmp_path):
    first = write_sample_dataset(tmp_path / "a", rows=4)
    copies = [first]
    for day, name in enumerate(("b", "c"), start=1):
        copy = shutil.copytree(first, tmp_path / name)
        for part in copy.glob("*.parquet"):
            os.utime(part, ns=(day * 86_400 * 10**9,) * 2)  # copied another day: same bytes, new mtime
        copies.append(copy)
    assert len({fingerprint(c) for c in copies}) == 1
    # The watcher's listing fingerprint is size + mtime: to it each copy looks like new data.
    assert len({listing_fingerprint(str(c)) for c in copies}) == 3


def test_any_changed_added_or_removed_parquet_file_changes_it_and_rewriting_the_same_bytes_does_not(tmp_path):
    data = write_sample_dataset(tmp_path / "d", rows=4, files=2)
    original = fingerprint(data)
    part = data / "part-00001.parquet"
    content = part.read_bytes()
    part.write_bytes(content)  # rewritten, same bytes: a new mtime only
    assert fingerprint(data) == original
    other = write_sample_dataset(tmp_path / "other", rows=4, seed=9, files=2)
    shutil.copy(other / "part-00001.parquet", part)
    changed = fingerprint(data)
    part.unlink()
    removed = fingerprint(data)
    shutil.copy(data / "part-00000.parquet", data / "part-00002.parquet")
    added = fingerprint(data)
    assert len({original, changed, removed, added}) == 4
    # Hidden folders are not data for ingest, nor for the fingerprint.
    (data / "_temporary").mkdir()
    shutil.copy(other / "part-00000.parquet", data / "_temporary" / "x.parquet")
    assert fingerprint(data) == added


def test_a_glob_and_its_folder_cover_the_same_files(tmp_path):
    data = write_sample_dataset(tmp_path / "d", rows=4, files=2)
    folder = dataset_fingerprint(DatasetSpec(uri=str(data)))
    glob = dataset_fingerprint(DatasetSpec(uri=str(data / "part-*.parquet")))
    assert (folder.value, folder.parquet_files) == (glob.value, glob.parquet_files) == (folder.value, 2)


@pytest.mark.parametrize("layout", ["string", "struct"])
def test_corrupting_one_referenced_image_or_deleting_another_changes_it(tmp_path, layout):
    """Issue 9: the Parquet files are unchanged, the images they point at are not."""
    data = path_dataset(tmp_path / "d", layout=layout)
    details = dataset_fingerprint(DatasetSpec(uri=str(data)))
    assert (details.referenced_images, details.unresolved_images) == (4, 0)
    original = details.value
    images = sorted((data / "images").iterdir())
    good = images[0].read_bytes()
    images[0].write_bytes(good[: len(good) // 2])  # truncated
    corrupted = fingerprint(data)
    images[1].unlink()
    deleted = dataset_fingerprint(DatasetSpec(uri=str(data)))
    assert len({original, corrupted, deleted.value}) == 3
    assert deleted.unresolved_images == 1
    images[0].write_bytes(good)
    images[1].write_bytes((tmp_path / "d" / "images" / images[2].name).read_bytes())  # another image's bytes
    assert fingerprint(data) not in (original, corrupted, deleted.value)


def test_a_copy_with_its_images_matches_and_an_unreferenced_file_does_not_count(tmp_path):
    data = path_dataset(tmp_path / "d")
    copy = shutil.copytree(data, tmp_path / "copy")
    assert fingerprint(copy) == fingerprint(data)
    (copy / "images" / "notes.png").write_bytes(b"not referenced by any row")
    (copy / "README.md").write_text("not data")
    assert fingerprint(copy) == fingerprint(data)


def test_inline_images_with_name_only_paths_reference_nothing(tmp_path):
    """The Hugging Face layout: every row has bytes; its paths are names, not references."""
    data = write_sample_dataset(tmp_path / "d", rows=4)
    details = dataset_fingerprint(DatasetSpec(uri=str(data)))
    assert (details.referenced_images, details.unresolved_images) == (0, 0)


def test_a_fifo_a_folder_and_an_escaping_path_are_recorded_without_being_opened(tmp_path):
    """A FIFO would block a reader forever: the fingerprint only stats it."""
    data = path_dataset(tmp_path / "d")
    table = pq.read_table(data / "part-0.parquet")
    os.mkfifo(data / "images" / "pipe.png")
    (data / "images" / "folder.png").mkdir()
    refs = table["image"].to_pylist()
    refs[:3] = ["images/pipe.png", "images/folder.png", "../outside.png"]
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(refs)), data / "part-0.parquet")
    details = dataset_fingerprint(DatasetSpec(uri=str(data)))
    assert (details.referenced_images, details.unresolved_images) == (4, 3)


def test_a_second_fingerprint_reads_no_file_again(tmp_path, monkeypatch):
    data = path_dataset(tmp_path / "d")
    read = count_hashes(monkeypatch)
    first = fingerprint(data)
    assert len(read) == 5  # one Parquet file, four images
    read.clear()
    assert fingerprint(data) == first and read == []
    # Touching a file (same bytes, new mtime) costs one read of that file, and nothing else.
    image = next((data / "images").iterdir())
    os.utime(image, ns=(10**18, 10**18))
    assert fingerprint(data) == first and read == [os.path.realpath(image)]


def test_relative_and_absolute_dataset_uris_agree(tmp_path, monkeypatch):
    data = path_dataset(tmp_path / "d")
    absolute = fingerprint(data)
    monkeypatch.chdir(tmp_path)
    assert fingerprint("d") == fingerprint("./d/") == absolute


def test_a_change_that_changes_what_ingest_sees_changes_the_fingerprint(tmp_path):
    """The stale-run case: same Parquet bytes, one image broken; ingest quarantines it, so the
    audit's answer differs, and so must the fingerprint (and with it the run id)."""
    data = path_dataset(tmp_path / "d")
    spec = DatasetSpec(uri=str(data))
    before = (ingest_and_validate(spec).quarantined, fingerprint(data))
    next((data / "images").iterdir()).write_bytes(b"not an image")
    after = (ingest_and_validate(spec).quarantined, fingerprint(data))
    assert before[0] == 0 and after[0] == 1
    assert before[1] != after[1]


@pytest.mark.s3
def test_on_s3_copies_share_their_etag_fingerprint_and_a_changed_image_changes_it(tmp_path, s3_bucket):
    import s3fs

    data = path_dataset(tmp_path / "d")
    fs = s3fs.S3FileSystem()
    for prefix in ("one", "two"):
        for path in data.rglob("*"):
            if path.is_file():
                fs.pipe_file(f"{s3_bucket}/{prefix}/{path.relative_to(data).as_posix()}", path.read_bytes())
    one = dataset_fingerprint(DatasetSpec(uri=f"s3://{s3_bucket}/one"))
    two = dataset_fingerprint(DatasetSpec(uri=f"s3://{s3_bucket}/two"))
    assert one.method == "etag" and one.value == two.value
    assert (one.parquet_files, one.referenced_images, one.unresolved_images) == (1, 4, 0)

    fs.pipe_file(f"{s3_bucket}/two/images/sample-00000.png", b"corrupted")
    changed = dataset_fingerprint(DatasetSpec(uri=f"s3://{s3_bucket}/two"))
    fs.rm_file(f"{s3_bucket}/two/images/sample-00001.png")
    deleted = dataset_fingerprint(DatasetSpec(uri=f"s3://{s3_bucket}/two"))
    assert len({one.value, changed.value, deleted.value}) == 3
    assert deleted.unresolved_images == 1


@contextlib.contextmanager
def sqlite_statements():
    """Every SQL statement the hash cache runs meanwhile."""
    statements: list[str] = []
    original = file_hashes._Cache.open

    def traced(cls):
        cache = original()
        if cache.connection is not None:
            cache.connection.set_trace_callback(statements.append)
        return cache

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(file_hashes._Cache, "open", classmethod(traced))
        yield statements


def test_hash_cache_lookups_are_batched_not_one_query_per_file(tmp_path):
    files = []
    for index in range(file_hashes.LOOKUP_BATCH * 2 + 1):
        path = tmp_path / "files" / f"{index}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(str(index).encode())
        files.append(path)
    first = file_hashes.sha256_files(files)
    file_hashes.forget_memo()  # as a new process would: only the SQLite cache knows them
    with sqlite_statements() as statements:
        assert file_hashes.sha256_files(files) == first
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3  # 1001 paths, 500 per query


def test_a_second_fingerprint_in_one_process_asks_no_cache_and_reads_no_file(tmp_path, monkeypatch):
    """``cflab audit`` fingerprints the dataset twice (the CLI, then the flow): the second time
    every file costs a stat and a memo lookup. The memo is keyed on the stat tuple, so a file
    changed meanwhile is still read again."""
    data = path_dataset(tmp_path / "d")
    first = fingerprint(data)
    read = count_hashes(monkeypatch)
    with sqlite_statements() as statements:
        assert fingerprint(data) == first
    assert read == [] and statements == []
    image = next((data / "images").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    assert fingerprint(data) != first and read == [os.path.realpath(image)]


@pytest.mark.parametrize("memo", ["same process", "next process"])
def test_an_image_rewritten_in_place_with_same_size_mtime_and_inode_changes_it(tmp_path, memo):
    """Issue 17: the hash cache keyed on path, size, mtime and inode called such a file unchanged;
    its ctime (which ``os.utime`` cannot set back) says otherwise."""
    data = path_dataset(tmp_path / "d", layout="string")
    image = sorted((data / "images").iterdir())[0]
    before = os.stat(image)
    first = fingerprint(data)
    old_hash = file_hashes.sha256_files([image])[str(image)]
    with open(image, "r+b") as handle:  # same inode, same size, different bytes
        handle.write(bytes(b ^ 0xFF for b in handle.read(16)))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(image)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    if memo == "next process":
        file_hashes.forget_memo()  # only the SQLite cache remembers the old hash
    assert file_hashes.sha256_files([image])[str(image)] != old_hash
    assert fingerprint(data) != first


def test_without_a_ctime_a_file_is_hashed_every_time_never_cached(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 100)
    real_stat_key = file_hashes.stat_key
    monkeypatch.setattr(file_hashes, "stat_key", lambda p, real=None: file_hashes.StatKey(
        *dataclasses.astuple(real_stat_key(p, real))[:4], ctime_ns=0))
    read = count_hashes(monkeypatch)
    file_hashes.sha256_files([path])
    file_hashes.sha256_files([path])
    assert read == [str(path), str(path)]
