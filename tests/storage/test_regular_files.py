"""Only regular files are read: anything else is named, never opened, never waited on."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from counterfactual_lab.storage.regular_files import NotARegularFile, file_kind, read_regular_file


def test_a_regular_file_is_read_up_to_the_limit(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(str(path), 100) == (b"x" * 100, 100)
    assert read_regular_file(str(path), 99) == (None, 100)  # over the limit: size only, not read


def test_a_symlink_to_a_regular_file_is_followed(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    assert read_regular_file(str(tmp_path / "link.png"), 10) == (b"abc", 3)


@pytest.mark.parametrize("path, kind", [("/dev/zero", "character device"), ("/dev/null", "character device")])
def test_devices_are_refused(path, kind):
    # /dev/zero never ends and reports size 0: read, it would look like an empty but valid file.
    with pytest.raises(NotARegularFile) as info:
        read_regular_file(path, 1000)
    assert info.value.kind == kind


def test_fifo_socket_and_directory_are_refused_without_opening(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock, contextlib.chdir(tmp_path):
        sock.bind("sock")  # a relative name: AF_UNIX paths are limited to ~100 bytes
        kinds = {}
        for name in ("fifo", "sock", "."):
            with pytest.raises(NotARegularFile) as info:
                read_regular_file(str(tmp_path / name), 1000)  # a FIFO opened for reading would block here
            kinds[name] = info.value.kind
    assert kinds == {"fifo": "FIFO (named pipe)", "sock": "socket", ".": "directory"}


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_regular_file(str(tmp_path / "nope.png"), 10)


def test_file_kind_names():
    assert file_kind(os.stat("/").st_mode) == "directory"
    assert file_kind(os.lstat("/dev/null").st_mode) == "character device"


def test_a_file_swapped_for_a_fifo_after_the_check_is_not_waited_on(tmp_path, monkeypatch):
    """The race: stat sees a regular file, then the path becomes a FIFO before it is opened."""
    import threading

    from counterfactual_lab.storage import regular_files

    path = tmp_path / "a.png"
    path.write_bytes(b"abc")
    real_open = os.open

    def swap_then_open(name, flags, *args):
        os.remove(path)
        os.mkfifo(path)
        return real_open(name, flags, *args)

    monkeypatch.setattr(regular_files.os, "open", swap_then_open)
    outcome: dict[str, BaseException] = {}

    def read() -> None:
        try:
            read_regular_file(str(path), 10)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        os.close(real_open(path, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
        pytest.fail("the swapped-in FIFO was opened in blocking mode")
    assert isinstance(outcome.get("error"), NotARegularFile)
    assert "FIFO (named pipe) swapped in" in str(outcome["error"])


def test_a_regular_file_replaced_by_another_between_the_check_and_the_open_is_read(tmp_path, monkeypatch):
    """An atomic replace (os.replace of a finished file, as a lock's renewal or a new holder's
    lock does) between the stat and the open: the new content is read, never refused. Refusing
    it made the lock manager delete a live holder's lock (two holders at once)."""
    from counterfactual_lab.storage import regular_files

    path = tmp_path / "key.lock"
    path.write_bytes(b'{"holder": "a"}')
    replacement = tmp_path / "key.lock.tmp"
    replacement.write_bytes(b'{"holder": "b", "longer": true}')
    real_open = os.open

    def replace_then_open(name, flags, *args):
        if replacement.exists():
            os.replace(replacement, path)
        return real_open(name, flags, *args)

    monkeypatch.setattr(regular_files.os, "open", replace_then_open)
    assert read_regular_file(str(path), 100) == (b'{"holder": "b", "longer": true}', 31)
    # A caller that asked for one inode (the hash cache's key) still refuses another file.
    replacement.write_bytes(b"c")
    inode = os.stat(path).st_ino
    with pytest.raises(NotARegularFile, match="replaced"):
        with regular_files.open_regular_file(path, inode=inode):
            pass


# ---- every local read of a named path goes through the one reader ----


def test_there_is_one_not_a_regular_file_exception():
    from counterfactual_lab.storage import file_hashes
    from counterfactual_lab.ingest import fingerprints
    from counterfactual_lab.ingest import read as ingest

    assert file_hashes.NotARegularFile is fingerprints.NotARegularFile is ingest.NotARegularFile is NotARegularFile


def test_a_fifo_named_config_json_in_a_model_folder_is_refused_not_waited_on(tmp_path):
    from hang_guard import call_within

    from counterfactual_lab.errors import UnsafeModelError
    from counterfactual_lab.models.safety import check_no_custom_code

    model = tmp_path / "model"
    (model / "text_encoder").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionImg2ImgPipeline"}')
    fifo = model / "text_encoder" / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeModelError, match=r"text_encoder/config.json is a FIFO \(named pipe\), not a regular file"):
        call_within(20, lambda: check_no_custom_code(str(model)), fifos=[fifo], what="the custom-code check")


def test_a_referenced_image_swapped_for_a_fifo_after_its_stat_does_not_hang_the_fingerprint(tmp_path, monkeypatch):
    """The race of issue 9 for the fingerprint: the image is a regular file when it is listed and
    stat'ed, and a FIFO by the time its bytes are hashed. It ends up unreadable, not waited on."""
    from hang_guard import call_within
    from datasets_on_disk import path_dataset

    from counterfactual_lab.storage import file_hashes
    from counterfactual_lab.ingest.fingerprints import dataset_fingerprint
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    monkeypatch.setenv("CFLAB_CACHE_DIR", str(tmp_path / "hash-cache"))
    data = path_dataset(tmp_path / "d")
    victim = sorted((data / "images").iterdir())[0]
    lookup = file_hashes._Cache.lookup

    def swap_after_stat(self, keys):
        keys = list(keys)
        if any(key.path == os.path.realpath(victim) for key in keys) and not victim.is_fifo():
            victim.unlink()
            os.mkfifo(victim)
        return lookup(self, keys)

    monkeypatch.setattr(file_hashes._Cache, "lookup", swap_after_stat)
    details = call_within(30, lambda: dataset_fingerprint(DatasetSpec(uri=str(data))), fifos=[victim],
                          what="the dataset fingerprint")
    assert (details.referenced_images, details.unresolved_images) == (4, 1)


def test_a_generation_source_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    from hang_guard import call_within

    from counterfactual_lab.generation.batch import load_source
    from counterfactual_lab.plan.work_items import WorkItem
    from counterfactual_lab.storage.files import ImageStore

    fifo = tmp_path / "source.png"
    os.mkfifo(fifo)
    item = WorkItem(source_id="r", source_key="k" * 64, source_image_uri=str(fifo), caption="c", attribute="gender",
                    source_value="male", target_value="female", seed=0, counterfactual_caption="c", explanation="",
                    instruction="", generator="g", content_key="c" * 64)
    with pytest.raises(NotARegularFile):
        call_within(20, lambda: load_source(item, ImageStore(str(tmp_path / "out"))), fifos=[fifo], what="load_source")
