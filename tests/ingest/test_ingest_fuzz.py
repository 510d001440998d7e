"""Fuzz: random datasets through ingest and validation; every row ends valid or quarantined.

Each case is a small dataset written from a seeded generator: a random Arrow type per column
(from pools of types the input contract accepts and types it does not) and random values per
row — image bytes that are valid, truncated, empty, bombs or noise; image paths that are fine,
missing, ``..``, absolute, sibling-prefixed, other schemes, NUL-laden, over-long, FIFOs, sockets,
folders, symlinks out of the root; blank, huge and null captions; unknown, blank and oddly cased
attribute values; duplicate and null ids. Every case must either

* validate, with rows in = valid + quarantined, every reason a known one and every detail a
  short single line, and every valid row carrying a decoded image; or
* when the test put a type no row can use in a column, stop with a one-line
  :class:`DatasetUnreadable` naming that column;

and nothing else may happen: no other exception, no hang (each case runs under a deadline that
releases a reader blocked on a FIFO and fails). Deterministic: the generator is seeded and the
case count fixed, so a failure names a case that fails again.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hang_guard import call_within

from counterfactual_lab.ingest import validation as v
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.config.dataset_spec import DatasetSpec, ValidationLimits
from counterfactual_lab.storage.files import ImageStore

SEED = 20_261_129
ROW_CASES = 8  # every column of an accepted type: the rows are what is random
ROWS_PER_FILE = 24
CASE_DEADLINE_S = 60
LIMITS = ValidationLimits(max_pixels=64 * 64, max_image_bytes=20_000, caption_max_chars=500)


# -- values ------------------------------------------------------------------------------------


def _png(rng: random.Random, side: int | None = None, mode: str = "RGB") -> bytes:
    side = side or rng.randint(2, 40)
    image = Image.new("RGB", (side, side), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((rng.randint(8, 48), rng.randint(8, 48)), 40).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def _bomb(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


GOOD_IMAGE_BYTES: list[Callable[[random.Random], bytes]] = [
    _png,
    lambda r: _png(r, mode=r.choice(["L", "RGBA", "P", "I;16", "1", "LA"])),
    _jpeg,
]
BAD_IMAGE_BYTES: list[Callable[[random.Random], bytes]] = [
    lambda r: _png(r)[: r.randint(0, 60)],  # truncated
    lambda r: b"",
    lambda r: r.randbytes(r.randint(1, 300)),  # noise
    lambda r: b"\x89PNG\r\n\x1a\n" + r.randbytes(r.randint(0, 100)),  # a PNG signature, then noise
    lambda r: _bomb(r.choice([20_000, 100_000, 2**31 - 1])),
    lambda r: _png(r, side=r.randint(65, 90)),  # more pixels than the limit
    lambda r: Image.effect_noise((100, 100), 90).convert("RGB").tobytes()[:25_000],  # more bytes than the limit
]


def image_bytes(r: random.Random) -> bytes:
    """Valid image bytes about half the time, so the decode-and-store path runs as often as the rejections."""
    return r.choice(GOOD_IMAGE_BYTES if r.random() < 0.5 else BAD_IMAGE_BYTES)(r)


@dataclass
class Layout:
    """The files a case's paths point at, under ``base`` (the dataset root is ``base/data``)."""

    base: Path
    root: Path
    fifos: list[Path] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def path(self, rng: random.Random) -> str:
        """A reference that names a valid image about 40% of the time, else a hostile one."""
        return rng.choice(self.good_paths() if rng.random() < 0.4 else self.bad_paths(rng))

    def good_paths(self) -> list[str]:
        return [
            "images/ok-0.png",
            "images/ok-1.png",
            "./images/ok-2.png",
            "images/../images/ok-0.png",
            str(self.root / "images" / "ok-1.png"),  # absolute, inside the root
            f"file://{self.root / 'images' / 'ok-2.png'}",
            "link-inside.png",
            "images/ünïcödé-😀.png",
        ]

    def bad_paths(self, rng: random.Random) -> list[str]:
        huge = "a/" * rng.randint(2050, 3000) + "x.png"
        return [
            "images/missing.png",
            "../outside.png",
            "../data-evil/x.png",
            str(self.base / "outside.png"),
            "link-outside.png",
            "link-to-fifo.png",
            "fifo.png",
            "socket.png",
            "images",
            ".",
            "images/ok-0.png\x00.txt",
            "\x00",
            "images/\tok-0.png",
            "images/ok\x1b.png",
            huge,
            "x" * 300 + ".png",
            "s3://some-bucket/images/ok-0.png",
            "http://example.com/a.png",
            "~/a.png",
            "",
            "   ",
            "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 40))),
        ]


def build_layout(base: Path, rng: random.Random) -> Layout:
    root = base / "data"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        (root / "images" / f"ok-{i}.png").write_bytes(_png(rng))
    (root / "images" / "ünïcödé-😀.png").write_bytes(_png(rng))
    (base / "outside.png").write_bytes(_png(rng))
    (base / "data-evil").mkdir()
    (base / "data-evil" / "x.png").write_bytes(_png(rng))
    os.symlink(base / "outside.png", root / "link-outside.png")
    os.symlink(root / "images" / "ok-0.png", root / "link-inside.png")
    layout = Layout(base, root)
    os.mkfifo(root / "fifo.png")
    layout.fifos.append(root / "fifo.png")
    os.symlink(root / "fifo.png", root / "link-to-fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    with contextlib.chdir(root):  # a relative name: AF_UNIX paths are limited to ~100 bytes
        sock.bind("socket.png")
    layout.sockets.append(sock)
    return layout


CAPTIONS: list[Callable[[random.Random], str | None]] = [
    lambda r: r.choice(["a photo of a man in a white coat", "a woman reading", "an elderly Asian man"]),
    lambda r: None,
    lambda r: "",
    lambda r: " \t\n ",
    lambda r: "a" * r.choice([499, 500, 501, 200_000]),
    lambda r: "a caption with a NUL \x00 inside",
    lambda r: "😀 ünïcödé " * r.randint(1, 20),
    lambda r: "".join(chr(r.randint(1, 0xFFFF)) for _ in range(r.randint(1, 50))).encode("utf-8", "replace").decode("utf-8", "replace"),
]

GENDERS: list[Callable[[random.Random], str | None]] = [
    lambda r: r.choice(["female", "male", "non-binary"]),
    lambda r: r.choice([" FeMale ", "MALE", "Non-Binary"]),
    lambda r: r.choice(["robot", "f", "0", "femme"]),
    lambda r: None,
    lambda r: "",
    lambda r: "x" * 100_000,
]


# -- column types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    """An Arrow type for one column, whether the input contract accepts it, and value makers:
    ``value`` anything the type can hold, ``clean`` (accepted types) a value that passes, given
    a number unique in the dataset (for ids)."""

    name: str
    type: pa.DataType
    accepted: bool
    value: Callable[[random.Random, Layout], Any]
    clean: Callable[[random.Random, Layout, int], Any] | None = None


def _image_ref(r: random.Random, layout: Layout) -> dict[str, Any] | None:
    choice = r.random()
    if choice < 0.1:
        return None  # the whole struct is null
    if choice < 0.45:
        return {"bytes": image_bytes(r), "path": None}
    if choice < 0.9:
        return {"bytes": None, "path": layout.path(r)}
    if choice < 0.95:
        return {"bytes": image_bytes(r), "path": layout.path(r)}  # bytes win
    return {"bytes": None, "path": None}


def _clean_image_ref(r: random.Random, layout: Layout) -> dict[str, Any]:
    if r.random() < 0.5:
        return {"bytes": r.choice(GOOD_IMAGE_BYTES)(r), "path": None}
    return {"bytes": None, "path": r.choice(layout.good_paths())}


def _nullable(make: Callable[[random.Random, Layout], Any], share: float = 0.1) -> Callable[[random.Random, Layout], Any]:
    return lambda r, layout: None if r.random() < share else make(r, layout)


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
IMAGE_TYPES = [
    ColumnType("struct", HF_IMAGE, True, _image_ref, lambda r, layout, n: _clean_image_ref(r, layout)),
    ColumnType(
        "large-struct", pa.struct([("bytes", pa.large_binary()), ("path", pa.large_string())]), True,
        _image_ref, lambda r, layout, n: _clean_image_ref(r, layout),
    ),
    ColumnType(
        "path-only-struct", pa.struct([("path", pa.string())]), True,
        _nullable(lambda r, layout: {"path": layout.path(r)}), lambda r, layout, n: {"path": r.choice(layout.good_paths())},
    ),
    ColumnType("binary", pa.binary(), True, _nullable(lambda r, layout: image_bytes(r)), lambda r, layout, n: r.choice(GOOD_IMAGE_BYTES)(r)),
    ColumnType("string", pa.string(), True, _nullable(lambda r, layout: layout.path(r)), lambda r, layout, n: r.choice(layout.good_paths())),
    ColumnType("all-null", pa.null(), True, lambda r, layout: None),
    ColumnType(
        "struct<bytes: string, path: int64>", pa.struct([("bytes", pa.string()), ("path", pa.int64())]), False,
        _nullable(lambda r, layout: {"bytes": "not bytes", "path": r.randint(-5, 5)}),
    ),
    ColumnType(
        "struct<bytes: binary, path: int64>", pa.struct([("bytes", pa.binary()), ("path", pa.int64())]), False,
        _nullable(lambda r, layout: {"bytes": r.randbytes(4), "path": r.randint(0, 9)}),
    ),
    ColumnType("int64", pa.int64(), False, _nullable(lambda r, layout: r.randint(-(2**40), 2**40))),
    ColumnType("list<binary>", pa.list_(pa.binary()), False, _nullable(lambda r, layout: [r.randbytes(3)])),
    ColumnType("struct<a: int32>", pa.struct([("a", pa.int32())]), False, _nullable(lambda r, layout: {"a": 1})),
]

CAPTION_TYPES = [
    ColumnType("string", pa.string(), True, lambda r, layout: r.choice(CAPTIONS)(r), lambda r, layout, n: CAPTIONS[0](r)),
    ColumnType("large_string", pa.large_string(), True, lambda r, layout: r.choice(CAPTIONS)(r), lambda r, layout, n: CAPTIONS[0](r)),
    ColumnType("all-null", pa.null(), True, lambda r, layout: None),
    ColumnType("int64", pa.int64(), False, _nullable(lambda r, layout: r.randint(0, 99))),
    ColumnType("binary", pa.binary(), False, _nullable(lambda r, layout: r.randbytes(8))),
]

ID_TYPES = [
    ColumnType("string", pa.string(), True, _nullable(lambda r, layout: r.choice(["a", "", " ", "x" * 5000, "\x00", *map(str, range(60))])), lambda r, layout, n: f"clean-{n}"),
    ColumnType("int64", pa.int64(), True, _nullable(lambda r, layout: r.randrange(-2, 60)), lambda r, layout, n: 10_000 + n),
    ColumnType(
        "dictionary", pa.dictionary(pa.int32(), pa.string()), True, _nullable(lambda r, layout: f"id-{r.randrange(60)}"),
        lambda r, layout, n: f"clean-{n}",
    ),
    ColumnType("all-null", pa.null(), True, lambda r, layout: None),
    ColumnType("binary", pa.binary(), False, _nullable(lambda r, layout: r.randbytes(6))),
    ColumnType("list<int64>", pa.list_(pa.int64()), False, _nullable(lambda r, layout: [1, 2])),
]

GENDER_TYPES = [
    ColumnType("string", pa.string(), True, lambda r, layout: r.choice(GENDERS)(r), lambda r, layout, n: GENDERS[r.randrange(2)](r)),
    ColumnType("int64", pa.int64(), True, _nullable(lambda r, layout: r.randrange(3))),
    ColumnType("all-null", pa.null(), True, lambda r, layout: None),
    ColumnType("large_binary", pa.large_binary(), False, _nullable(lambda r, layout: b"male")),
    ColumnType("list<string>", pa.list_(pa.string()), False, _nullable(lambda r, layout: ["male"])),
]

COLUMN_TYPES = {"id": ID_TYPES, "image": IMAGE_TYPES, "caption": CAPTION_TYPES, "gender": GENDER_TYPES}


@dataclass
class Case:
    index: int
    types: dict[str, ColumnType]
    files: int

    @property
    def rejected_columns(self) -> list[str]:
        return [name for name, kind in self.types.items() if not kind.accepted]

    def __str__(self) -> str:
        return f"case {self.index} (seed {SEED}): " + ", ".join(f"{c}: {t.name}" for c, t in self.types.items())


def draw_case(rng: random.Random, index: int, bad_column: str | None) -> Case:
    """Random types: accepted ones for every column but ``bad_column``, which gets one no row can use.

    Cases without a bad column take the accepted image types in turn, so every image layout
    (struct, binary, paths, all-null) meets the random rows whatever the seed draws.
    """
    types = {}
    for column, pool in COLUMN_TYPES.items():
        candidates = [t for t in pool if t.accepted != (column == bad_column)]
        if column == "image" and bad_column is None:
            types[column] = candidates[index % len(candidates)]
            continue
        # An all-null column makes every row fail the same way: draw it rarely.
        weights = [0.2 if t.name == "all-null" else 1.0 for t in candidates]
        types[column] = rng.choices(candidates, weights)[0]
    return Case(index, types, files=rng.choice([1, 1, 2]))


def write_case(case: Case, layout: Layout, rng: random.Random) -> int:
    """Write the case's files; returns the number of rows. About a third of the rows are drawn
    clean in every column (so rows also end valid), the rest at random column by column."""
    rows = 0
    schema = pa.schema([(column, kind.type) for column, kind in case.types.items()])
    for part in range(case.files):
        clean = [rng.random() < 0.35 for _ in range(ROWS_PER_FILE)]
        values = {
            column: [
                kind.clean(rng, layout, rows + i) if clean[i] and kind.clean else kind.value(rng, layout)
                for i in range(ROWS_PER_FILE)
            ]
            for column, kind in case.types.items()
        }
        pq.write_table(pa.table({c: pa.array(values[c], schema.field(c).type) for c in values}, schema=schema), layout.root / f"part-{part}.parquet")
        rows += ROWS_PER_FILE
    return rows


# -- the test ----------------------------------------------------------------------------------


def _cases() -> list[tuple[Case, int]]:
    """ROW_CASES cases of accepted types, then one case per column with a type no row can use."""
    rng = random.Random(SEED)
    bad_columns = [None] * ROW_CASES + list(COLUMN_TYPES)
    return [(draw_case(rng, i, bad), rng.randrange(2**32)) for i, bad in enumerate(bad_columns)]


def test_the_cases_are_the_same_every_run():
    assert [str(case) for case, _ in _cases()] == [str(case) for case, _ in _cases()]
    assert [case.rejected_columns for case, _ in _cases()][ROW_CASES:] == [[c] for c in COLUMN_TYPES]


@pytest.mark.parametrize("case, case_seed", _cases(), ids=lambda x: f"case-{x.index}" if isinstance(x, Case) else "")
def test_random_rows_end_valid_or_quarantined(case: Case, case_seed: int, tmp_path):
    rng = random.Random(case_seed)
    layout = build_layout(tmp_path, rng)
    rows_in = write_case(case, layout, rng)
    spec = DatasetSpec(name="fuzz", uri=str(layout.root), limits=LIMITS)
    store = ImageStore(str(tmp_path / "out"))

    def validate() -> v.ValidationOutcome:
        return v.ingest_and_validate(spec, image_store=store, batch_rows=7)

    try:
        if case.rejected_columns:
            with pytest.raises(DatasetUnreadable) as info:
                call_within(CASE_DEADLINE_S, validate, layout.fifos, what=str(case))
            message = str(info.value)
            assert "\n" not in message, f"{case}: {message}"
            assert f"'{case.rejected_columns[0]}'" in message, f"{case}: the error names another column: {message}"
            return
        outcome = call_within(CASE_DEADLINE_S, validate, layout.fifos, what=str(case))
    finally:
        for sock in layout.sockets:
            sock.close()

    assert outcome.rows_in == rows_in, case
    assert outcome.valid.height + outcome.quarantined == rows_in, case
    quarantine = outcome.quarantine
    assert quarantine.select("source_file", "row_index").n_unique() == quarantine.height, f"{case}: a row quarantined twice"
    assert set(quarantine["reason"]) <= set(v.REASONS), case
    for detail in quarantine["detail"]:
        assert detail and "\n" not in detail and len(detail) < 2_000, f"{case}: detail {detail[:200]!r}…"
    valid = outcome.valid
    assert valid["id"].null_count() == 0 and valid["id"].is_unique().all(), case
    assert valid["content_key"].str.len_chars().eq(64).all() if valid.height else True, case
    assert (valid["width"] > 0).all() and (valid["height"] > 0).all(), case
    assert (valid["width"] * valid["height"] <= LIMITS.max_pixels).all(), case
    assert valid["caption"].str.strip_chars().str.len_chars().ge(1).all() if valid.height else True, case
    for uri, key in zip(valid["image_uri"], valid["content_key"]):  # every valid row's image is stored, decodable
        assert uri == store.uri(key) and store.get(key).mode == "RGB", case
