"""Bad input: every case ends in quarantine with its own reason, none crashes, none is dropped.

One dataset holds every case (one row each, named by id) and is validated once per module;
each test then checks its own row. The same dataset, copied to S3, must validate identically.
Special files (FIFOs, sockets, devices), other buckets and a stalled S3 object have tests of
their own below: they cannot be copied to S3, or need their own bucket or endpoint.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import os
import socket
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hang_guard import call_within

from counterfactual_lab.ingest import validation as v
from counterfactual_lab.errors import TransientStorageError
from counterfactual_lab.config.dataset_spec import DatasetSpec, ValidationLimits
from counterfactual_lab.storage.files import ImageStore, is_transient

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
LIMITS = ValidationLimits(max_pixels=64 * 64, max_image_bytes=20_000, caption_max_chars=200)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def small_png(seed: int) -> bytes:
    return png(Image.new("RGB", (32, 32), (seed * 40 % 256, 120, 200)))


def bomb_png(side: int) -> bytes:
    """A ~60-byte PNG that claims side x side pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def row(id_, image, caption="a photo of a man in a white coat", gender="male", label="doctor"):
    return {"id": id_, "image": image, "caption": caption, "gender": gender, "label": label}


def inline(data: bytes | None):
    return {"bytes": data, "path": None}


def by_path(path: str):
    return {"bytes": None, "path": path}


# id -> expected reason (None: valid). Order = row order in the file.
CASES: dict[str, str | None] = {
    "ok-inline": None,
    "ok-by-path": None,
    "ok-capitalised-attribute": None,
    "undecodable": v.REASON_UNDECODABLE,
    "truncated": v.REASON_TRUNCATED,
    "empty-bytes": v.REASON_EMPTY_IMAGE,
    "bomb": v.REASON_DECOMPRESSION_BOMB,
    "too-many-pixels": v.REASON_TOO_MANY_PIXELS,
    "too-large": v.REASON_IMAGE_TOO_LARGE,
    "null-image": v.REASON_MISSING_IMAGE,
    "not-found": v.REASON_IMAGE_NOT_FOUND,
    "escape-relative": v.REASON_PATH_ESCAPES_ROOT,
    "escape-absolute": v.REASON_PATH_ESCAPES_ROOT,
    "escape-uri": v.REASON_PATH_ESCAPES_ROOT,
    # data-evil/ shares the root's name as a prefix: only a component-wise check keeps it out.
    "escape-sibling-prefix": v.REASON_PATH_ESCAPES_ROOT,
    "invalid-path-nul": v.REASON_INVALID_IMAGE_PATH,
    "invalid-path-control": v.REASON_INVALID_IMAGE_PATH,
    "invalid-path-too-long": v.REASON_INVALID_IMAGE_PATH,
    "null-caption": v.REASON_MISSING_CAPTION,
    "blank-caption": v.REASON_BLANK_CAPTION,
    "long-caption": v.REASON_CAPTION_TOO_LONG,
    "unknown-gender": v.REASON_UNKNOWN_ATTRIBUTE,
    "dup": None,  # first occurrence stays valid
}


def build_bad_dataset(base: Path) -> Path:
    """``base/data`` (the dataset root), ``base/outside.png`` and ``base/data-evil/x.png``
    (valid images outside it)."""
    root = base / "data"
    (root / "images").mkdir(parents=True)
    outside = base / "outside.png"
    outside.write_bytes(small_png(9))
    (base / "data-evil").mkdir()
    (base / "data-evil" / "x.png").write_bytes(small_png(12))
    (root / "images" / "ok.png").write_bytes(small_png(2))
    noise = png(Image.effect_noise((64, 64), 80).convert("RGB"))
    rows = [
        row("ok-inline", inline(small_png(1))),
        row("ok-by-path", by_path("images/ok.png")),
        row("ok-capitalised-attribute", inline(small_png(3)), gender="  Female "),
        row("undecodable", inline(b"GIF89a but not really an image")),
        row("truncated", inline(noise[: len(noise) // 2])),
        row("empty-bytes", inline(b"")),
        row("bomb", inline(bomb_png(20_000))),
        row("too-many-pixels", inline(png(Image.new("RGB", (128, 128), (10, 20, 30))))),
        row("too-large", inline(png(Image.effect_noise((96, 96), 90).convert("RGB")))),
        row("null-image", None),
        row("not-found", by_path("images/missing.png")),
        row("escape-relative", by_path("../outside.png")),
        row("escape-absolute", by_path(str(outside))),
        row("escape-uri", by_path("http://example.com/cat.png")),
        row("null-caption", inline(small_png(4)), caption=None),
        row("blank-caption", inline(small_png(5)), caption="   \t "),
        row("long-caption", inline(small_png(6)), caption="a man " * 60),
        row("unknown-gender", inline(small_png(7)), gender="robot"),
        row("dup", inline(small_png(8))),
        row("dup", inline(small_png(10))),
        row(None, inline(small_png(11))),
        row("escape-sibling-prefix", by_path("../data-evil/x.png")),
        row("invalid-path-nul", by_path("images/ok.png\x00.txt")),
        row("invalid-path-control", by_path("images/o\x1bk.png")),
        row("invalid-path-too-long", by_path("a/" * 2600 + "ok.png")),
    ]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema([("id", pa.string()), ("image", IMAGE_TYPE), ("caption", pa.string()),
                          ("gender", pa.string()), ("label", pa.string())]),
    )
    pq.write_table(table, root / "part-0.parquet")
    (root / "README.md").write_text("# not data\n")
    return root


def spec_for(uri: str) -> DatasetSpec:
    return DatasetSpec(name="bad", uri=uri, limits=LIMITS)


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> Path:
    return build_bad_dataset(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def outcome(bad_root, tmp_path_factory) -> v.ValidationOutcome:
    store = ImageStore(str(tmp_path_factory.mktemp("store")))
    return v.ingest_and_validate(spec_for(str(bad_root)), image_store=store, batch_rows=7)


def reason_of(outcome: v.ValidationOutcome, id_: str) -> str | None:
    found = outcome.quarantine.filter(pl.col("id") == id_)
    return found["reason"][0] if found.height else None


@pytest.mark.parametrize("case", [c for c, reason in CASES.items() if reason])
def test_each_bad_row_is_quarantined_with_its_reason(outcome, case):
    assert reason_of(outcome, case) == CASES[case]
    assert case not in outcome.valid["id"].to_list()


@pytest.mark.parametrize("case", [c for c, reason in CASES.items() if not reason])
def test_good_rows_stay_valid(outcome, case):
    assert case in outcome.valid["id"].to_list()


def test_duplicate_id_keeps_the_first_occurrence(outcome):
    dup = outcome.quarantine.filter(pl.col("id") == "dup")
    assert dup.height == 1
    assert dup["reason"][0] == v.REASON_DUPLICATE_ID
    assert dup["row_index"][0] == 19  # the second "dup" row
    assert "row 18 of part-0.parquet" in dup["detail"][0]
    kept = outcome.valid.filter(pl.col("id") == "dup")
    assert kept.height == 1


def test_null_id_is_quarantined(outcome):
    missing = outcome.quarantine.filter(pl.col("row_index") == 20)
    assert missing["reason"].to_list() == [v.REASON_MISSING_ID]


def test_nothing_is_lost(outcome):
    assert outcome.rows_in == 25
    assert outcome.valid.height + outcome.quarantined == outcome.rows_in
    assert sum(outcome.by_reason.values()) == outcome.quarantined
    assert outcome.quarantine["row_index"].n_unique() == outcome.quarantined  # one line per row


def test_quarantine_rows_name_their_source(outcome):
    assert set(outcome.quarantine.columns) >= {"id", "reason", "detail", "source_file", "row_index"}
    assert set(outcome.quarantine["source_file"]) == {"part-0.parquet"}
    assert outcome.quarantine["detail"].null_count() == 0
    bomb = outcome.quarantine.filter(pl.col("id") == "bomb")
    assert "20000x20000" in bomb["detail"][0] or "decompression bomb" in bomb["detail"][0]
    long = outcome.quarantine.filter(pl.col("id") == "long-caption")
    assert "360 characters; the limit is 200" in long["detail"][0]


def test_unknown_attribute_detail_names_the_value_and_vocabulary(outcome):
    detail = outcome.quarantine.filter(pl.col("id") == "unknown-gender")["detail"][0]
    assert "'robot'" in detail and "female, male, non-binary" in detail


def test_attribute_values_use_the_vocabulary_spelling(outcome):
    gender = outcome.valid.filter(pl.col("id") == "ok-capitalised-attribute")["gender"][0]
    assert gender == "female"


def test_escaping_paths_are_never_read(bad_root, outcome):
    # outside.png is a perfectly valid image: only the path check can reject it.
    for case in ("escape-relative", "escape-absolute", "escape-sibling-prefix"):
        assert "escapes the dataset root" in outcome.quarantine.filter(pl.col("id") == case)["detail"][0]


def test_invalid_paths_say_why_in_one_short_line(outcome):
    detail = dict(outcome.quarantine.filter(pl.col("reason") == v.REASON_INVALID_IMAGE_PATH).select("id", "detail").rows())
    assert "NUL byte" in detail["invalid-path-nul"]
    assert "U+001B" in detail["invalid-path-control"]
    assert "5,206 bytes long" in detail["invalid-path-too-long"]
    assert all("\n" not in d and len(d) < 300 for d in detail.values())  # the 5 kB path is cut


def test_symlink_leading_outside_the_root_is_not_followed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(small_png(1))
    os.symlink(secret, root / "link.png")
    rows = [row("link", by_path("link.png"))]
    pq.write_table(pa.Table.from_pylist(rows), root / "d.parquet")
    outcome = v.ingest_and_validate(spec_for(str(root)))
    assert outcome.quarantine["reason"].to_list() == [v.REASON_PATH_ESCAPES_ROOT]


def test_row_failing_several_checks_is_quarantined_once_with_every_problem(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = [row("both", inline(b""), caption="  ", gender="robot")]
    pq.write_table(pa.Table.from_pylist(rows), root / "d.parquet")
    outcome = v.ingest_and_validate(spec_for(str(root)))
    assert outcome.quarantine.height == 1
    assert outcome.quarantine["reason"][0] == v.REASON_EMPTY_IMAGE  # image checks come first
    detail = outcome.quarantine["detail"][0]
    assert "0 bytes" in detail and "blank" in detail and "'robot'" in detail


@pytest.mark.s3
def test_local_and_s3_copies_validate_identically(bad_root, outcome, s3_bucket, tmp_path):
    import boto3

    client = boto3.client("s3")
    for path in bad_root.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), s3_bucket, f"datasets/bad/{path.relative_to(bad_root)}")
    store = ImageStore(f"s3://{s3_bucket}/out")
    remote = v.ingest_and_validate(spec_for(f"s3://{s3_bucket}/datasets/bad"), image_store=store, batch_rows=7)

    assert remote.rows_in == outcome.rows_in
    assert remote.by_reason == outcome.by_reason
    assert remote.quarantine.equals(outcome.quarantine)
    assert remote.valid.drop("image_uri").equals(outcome.valid.drop("image_uri"))
    assert all(uri.startswith(f"s3://{s3_bucket}/out/images/") for uri in remote.valid["image_uri"])
    stored = {k["Key"] for k in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/images/")["Contents"]}
    assert {f"out/images/{key}.png" for key in remote.valid["content_key"]} <= stored


# -- special files: never opened, never hang -------------------------------------------------


def validate_within(spec: DatasetSpec, seconds: float, fifos: list[Path]) -> v.ValidationOutcome:
    """``ingest_and_validate(spec)``, failing the test (never hanging it) after ``seconds``."""
    return call_within(seconds, lambda: v.ingest_and_validate(spec), fifos, what="validation")


def test_special_files_are_quarantined_without_being_opened(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.png").write_bytes(small_png(1))
    os.mkfifo(root / "fifo.png")
    (root / "folder.png").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    with contextlib.chdir(root):  # a relative name: AF_UNIX paths are limited to ~100 bytes
        sock.bind("socket.png")
    os.symlink(root / "fifo.png", root / "link-to-fifo.png")  # a symlink inside the root is followed, then checked
    rows = [row(name, by_path(f"{name}.png")) for name in ("ok", "fifo", "folder", "socket", "link-to-fifo")]
    pq.write_table(pa.Table.from_pylist(rows), root / "d.parquet")
    try:
        outcome = validate_within(spec_for(str(root)), 60, [root / "fifo.png"])
    finally:
        sock.close()
    assert outcome.rows_in == 5 and outcome.valid["id"].to_list() == ["ok"]
    quarantined = {r["id"]: r for r in outcome.quarantine.to_dicts()}
    assert {i: r["reason"] for i, r in quarantined.items()} == {
        name: v.REASON_NOT_A_REGULAR_FILE for name in ("fifo", "folder", "socket", "link-to-fifo")
    }
    assert "is a FIFO (named pipe), not a regular file" in quarantined["fifo"]["detail"]
    assert "is a directory" in quarantined["folder"]["detail"]
    assert "is a socket" in quarantined["socket"]["detail"]


def test_character_device_inside_the_root_is_quarantined(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    try:  # /dev/zero's numbers: endless zeros, size 0 — read today as a valid row without an image
        os.mknod(root / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (root); test_regular_files covers the check")
    pq.write_table(pa.Table.from_pylist([row("device", by_path("zero.png"))]), root / "d.parquet")
    outcome = validate_within(spec_for(str(root)), 60, [])
    assert outcome.valid.height == 0
    assert outcome.quarantine.select("reason", "detail").row(0) == (
        v.REASON_NOT_A_REGULAR_FILE,
        "image 'zero.png' is a character device, not a regular file; only regular files are read",
    )


# -- S3: other buckets and stalled objects ----------------------------------------------------


@pytest.mark.s3
def test_cross_bucket_reference_is_refused(s3_bucket):
    import boto3

    client = boto3.client("s3")
    other = f"{s3_bucket}-other"
    client.create_bucket(Bucket=other)
    # A valid image the same credentials can read: only the root check stands in the way.
    client.put_object(Bucket=other, Key="images/secret.png", Body=small_png(3))
    client.put_object(Bucket=s3_bucket, Key="data/images/ok.png", Body=small_png(4))
    rows = [
        row("cross-bucket", by_path(f"s3://{other}/images/secret.png")),
        row("cross-bucket-s3a", by_path(f"s3a://{other}/images/secret.png")),
        row("same-bucket-uri", by_path(f"s3://{s3_bucket}/data/images/ok.png")),
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    client.put_object(Bucket=s3_bucket, Key="data/d.parquet", Body=buffer.getvalue())

    outcome = v.ingest_and_validate(spec_for(f"s3://{s3_bucket}/data"))
    assert outcome.valid["id"].to_list() == ["same-bucket-uri"]
    for case in ("cross-bucket", "cross-bucket-s3a"):
        reason, detail = outcome.quarantine.filter(pl.col("id") == case).select("reason", "detail").row(0)
        assert reason == v.REASON_PATH_ESCAPES_ROOT
        assert f"it is in bucket {other!r}, not {s3_bucket!r}" in detail


class StallingS3Proxy:
    """An HTTP proxy in front of the moto server that never answers a GET of one key.

    Everything else (listings, HEAD, the Parquet file) passes through, so only reading that
    image's bytes stalls, as an object on a failing disk of an S3-compatible store would.
    """

    def __init__(self, upstream: str, stalled_key: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.release = threading.Event()
        release = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            stalled = 0

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and self.path.split("?")[0].endswith(stalled_key):
                    Handler.stalled += 1
                    release.wait(120)
                    self.close_connection = True
                    return
                upstream_conn = http.client.HTTPConnection(host, int(port), timeout=30)
                upstream_conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                response = upstream_conn.getresponse()
                data = response.read()
                upstream_conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        self.handler = Handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_remote_read_deadline_follows_the_timeouts():
    from counterfactual_lab.storage.files import S3_TIMEOUTS, read_deadline_seconds, storage_options_for

    assert read_deadline_seconds("s3://b/data") == 3 * (10 + 30) == 120
    assert read_deadline_seconds("/local/data") is None
    mine = {"config_kwargs": {"read_timeout": 5, "retries": {"max_attempts": 2}}}  # botocore: 2 retries
    assert read_deadline_seconds("s3://b/data", mine) == 3 * (10 + 5)
    merged = storage_options_for("s3://b/data", mine)["config_kwargs"]
    assert merged == {**S3_TIMEOUTS, "read_timeout": 5, "retries": {"max_attempts": 2}}
    merged["retries"]["mode"] = "legacy"  # botocore edits this dict in place: nothing shared changes
    assert mine["config_kwargs"]["retries"] == {"max_attempts": 2}
    assert S3_TIMEOUTS["retries"] == {"total_max_attempts": 3, "mode": "standard"}


@pytest.mark.s3
def test_a_stalled_s3_image_ends_the_read_within_its_deadline(s3_bucket, s3_endpoint):
    import boto3

    client = boto3.client("s3")
    for key in ("data/images/ok.png", "data/images/stalled.png"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=small_png(5))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row("ok", by_path("images/ok.png")), row("stalled", by_path("images/stalled.png"))]), buffer)
    client.put_object(Bucket=s3_bucket, Key="data/d.parquet", Body=buffer.getvalue())
    proxy = StallingS3Proxy(s3_endpoint, "images/stalled.png")
    # 1 s per request and one botocore attempt: a 2 s deadline for the whole read, s3fs's own retries included.
    options = {"endpoint_url": proxy.url, "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"total_max_attempts": 1}}}
    spec = DatasetSpec(name="stall", uri=f"s3://{s3_bucket}/data", limits=LIMITS, storage_options=options)
    started = time.monotonic()
    try:
        with pytest.raises(TransientStorageError) as info:
            v.ingest_and_validate(spec, workers=1)
    finally:
        proxy.close()
    elapsed = time.monotonic() - started
    assert proxy.handler.stalled >= 1  # the read really reached the stalled object
    assert "image 'images/stalled.png' could not be read: no complete read within 2 s" in str(info.value)
    assert elapsed < 30, f"a 2 s read deadline took {elapsed:.0f} s"
    assert is_transient(info.value)  # the task's retry policy tries the stage again
