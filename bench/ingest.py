"""Benchmark: streaming ingest + validation against the bare loop a user would write.

    python bench/ingest.py                 # 20,000 rows of ~50 KB JPEGs, and 80,000 for the 4x memory run
    python bench/ingest.py --rows 2000     # a quick run

It generates a Parquet dataset (Hugging Face image layout) of ``--rows`` rows and one four
times larger, then runs, each in its own subprocess so peak RSS is measured cleanly:

* baseline: ``pyarrow.dataset`` scan + Pillow decode to RGB + sha256, the loop a user writes;
* ours: :func:`counterfactual_lab.ingest.validation.ingest_and_validate` on the same rows (the
  same decode and hash, plus header checks, per-row frames and the Great Expectations suite);
* ours on the 4x dataset, for ``peak_rss_mb_4x``.

Times exclude interpreter start and imports (Great Expectations alone takes seconds to
import; that one-off cost is printed separately). The last line is JSON::

    {"bench": "ingest", "ours_s": ..., "baseline_s": ..., "ratio": baseline/ours,
     "peak_rss_mb": ..., "peak_rss_mb_4x": ...}

Targets: ratio >= 0.8 and peak_rss_mb_4x <= 1.2 x peak_rss_mb.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_ROWS_PER_FILE = 5_000  # the 1x dataset has at least 4 files, so 1x and 4x share one file layout
ROW_GROUP_ROWS = 500  # ~25 MB row groups, about what `datasets` writes for image data
DISTINCT_IMAGES = 64  # base JPEGs; each row appends a unique trailer so every content key differs


def make_dataset(root: Path, rows: int, image_kb: int, rows_per_file: int, seed: int = 0) -> None:
    """``rows`` rows of ~``image_kb`` KB JPEGs (busy, photo-like content) in files of ``rows_per_file``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = []
    side = 320
    quality = None
    for i in range(DISTINCT_IMAGES):
        # A smooth gradient plus noise: compresses like a busy photo.
        yy, xx = np.mgrid[0:side, 0:side]
        base = np.stack([(xx + i * 7) % 256, (yy + i * 13) % 256, (xx + yy + i) % 256], axis=-1).astype(np.float64)
        noisy = np.clip(base + rng.normal(0, 28, base.shape), 0, 255).astype(np.uint8)
        quality = quality or _quality_for(noisy, image_kb * 1024)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
        bases.append(buffer.getvalue())
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("image", image_type), ("caption", pa.string()),
                        ("gender", pa.string()), ("label", pa.string())])
    genders = ["female", "male"]
    for start in range(0, rows, rows_per_file):
        n = min(rows_per_file, rows - start)
        ids = [f"r{start + i:08d}" for i in range(n)]
        images = [
            {"bytes": bases[(start + i) % DISTINCT_IMAGES] + f"row{start + i:012d}".encode(), "path": f"{ids[i]}.jpg"}
            for i in range(n)
        ]
        table = pa.table(
            {
                "id": ids,
                "image": pa.array(images, image_type),
                "caption": [f"a photo of a {'woman' if (start + i) % 2 else 'man'} at work" for i in range(n)],
                "gender": [genders[(start + i) % 2] for i in range(n)],
                "label": ["doctor"] * n,
            },
            schema=schema,
        )
        pq.write_table(table, root / f"part-{start // rows_per_file:05d}.parquet", row_group_size=min(ROW_GROUP_ROWS, n))


def _quality_for(pixels, target_bytes: int) -> int:
    """The JPEG quality whose output size is closest to ``target_bytes``."""
    from PIL import Image

    def size(quality: int) -> int:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        return buffer.tell()

    return min(range(10, 100), key=lambda q: abs(size(q) - target_bytes))


def run_baseline(uri: str) -> dict:
    """The bare loop: pyarrow dataset scan + Pillow decode + sha256."""
    import hashlib

    import pyarrow.dataset as ds
    from PIL import Image

    start = time.perf_counter()
    rows = 0
    for batch in ds.dataset(uri, format="parquet").to_batches(columns=["image"]):
        for item in batch.column("image").to_pylist():
            data = item["bytes"]
            with Image.open(io.BytesIO(data)) as image:
                image.convert("RGB")
            hashlib.sha256(data).hexdigest()
            rows += 1
    return {"seconds": time.perf_counter() - start, "rows": rows}


def run_ours(uri: str, batch_rows: int, workers: int | None) -> dict:
    started = time.perf_counter()
    import great_expectations  # noqa: F401  (one-off import cost, reported apart)

    from counterfactual_lab.config.dataset_spec import DatasetSpec
    from counterfactual_lab.ingest.validation import ingest_and_validate

    import_s = time.perf_counter() - started
    rss_after_import = _peak_rss_mb()
    start = time.perf_counter()
    outcome = ingest_and_validate(DatasetSpec(name="bench", uri=uri), batch_rows=batch_rows, workers=workers)
    seconds = time.perf_counter() - start
    if outcome.quarantined:
        raise SystemExit(f"benchmark data should be valid, got {outcome.by_reason}")
    return {"seconds": seconds, "rows": outcome.rows_in, "import_s": import_s, "rss_after_import_mb": rss_after_import}


def _peak_rss_mb() -> float:
    """Peak RSS of this process since exec.

    Linux keeps ru_maxrss across fork and exec, so a child would inherit its parent's peak;
    VmHWM belongs to the current address space and starts fresh at exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)


def child(kind: str, uri: str, batch_rows: int, workers: int | None) -> None:
    result = run_baseline(uri) if kind == "baseline" else run_ours(uri, batch_rows, workers)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def in_subprocess(kind: str, uri: str, batch_rows: int, workers: int | None) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--uri", uri, "--batch-rows", str(batch_rows)]
    if workers:
        command += ["--workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the 1x dataset (default: %(default)s)")
    parser.add_argument("--image-kb", type=int, default=50, help="approximate image size in KB (default: %(default)s)")
    parser.add_argument("--batch-rows", type=int, default=1024, help="ingest batch size (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="our decoding threads (default: CPU count, at most 8)")
    parser.add_argument("--workdir", help="where to write the datasets (default: a temporary folder, removed after)")
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.uri, args.batch_rows, args.workers)
        return

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cflab-bench-ingest-"))
    try:
        one, four = workdir / "1x", workdir / "4x"
        t0 = time.perf_counter()
        rows_per_file = max(1, min(MAX_ROWS_PER_FILE, args.rows // 4))
        make_dataset(one, args.rows, args.image_kb, rows_per_file)
        make_dataset(four, 4 * args.rows, args.image_kb, rows_per_file)
        size_mb = sum(p.stat().st_size for p in one.glob("*.parquet")) / 2**20
        print(f"datasets: {args.rows} rows ({size_mb:.0f} MB, ~{size_mb * 1024 / args.rows:.0f} KB/row) and "
              f"{4 * args.rows} rows, made in {time.perf_counter() - t0:.0f} s", flush=True)

        baseline = in_subprocess("baseline", str(one), args.batch_rows, None)
        print(f"baseline: {baseline['seconds']:.1f} s, {baseline['rows'] / baseline['seconds']:.0f} rows/s, "
              f"peak RSS {baseline['peak_rss_mb']:.0f} MB", flush=True)
        ours = in_subprocess("ours", str(one), args.batch_rows, args.workers)
        print(f"ours:     {ours['seconds']:.1f} s, {ours['rows'] / ours['seconds']:.0f} rows/s, peak RSS "
              f"{ours['peak_rss_mb']:.0f} MB ({ours['rss_after_import_mb']:.0f} MB after imports; "
              f"imports took {ours['import_s']:.1f} s, not timed)", flush=True)
        ours4 = in_subprocess("ours", str(four), args.batch_rows, args.workers)
        print(f"ours 4x:  {ours4['seconds']:.1f} s, {ours4['rows'] / ours4['seconds']:.0f} rows/s, peak RSS "
              f"{ours4['peak_rss_mb']:.0f} MB ({ours4['rss_after_import_mb']:.0f} MB after imports)", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print(json.dumps({
        "bench": "ingest",
        "ours_s": round(ours["seconds"], 3),
        "baseline_s": round(baseline["seconds"], 3),
        "ratio": round(baseline["seconds"] / ours["seconds"], 3),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "peak_rss_mb_4x": round(ours4["peak_rss_mb"], 1),
    }))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
