"""Benchmark: what `cflab audit` pays before any stage runs: the config check and locating the run.

``cflab audit`` checks the config (``preflight.check_audit``) and locates the run
(``audit_run.locate_run``: the dataset's content fingerprint, the models' identities, the run
id), and the flow it starts in the same process does both again (the flow must check what a
deployment or the UI hands it). This times the pair twice in one process, as the CLI and then
the flow call it, for

* ``demo``: the demo's 24-row sample dataset (inline image bytes, one Parquet file);
* ``paths``: a dataset of ``--images`` rows (20 000 by default) whose images are PNG files
  referenced by path, so the fingerprint reads the path column and stats and hashes each image.

Each dataset is measured in two fresh processes sharing one hash cache folder: **cold** (an
empty cache: every file is hashed) and **warm** (the cache holds every hash, as on any rerun).
``first_s`` is the CLI's call, ``second_s`` the flow's. The models are the tiny ones of the demo.

    python bench/locate_run.py              # prints one JSON line per (dataset, phase), then a summary

Last line JSON: ``{"bench": "locate_run", "load_average": [...], "results": {dataset: {phase: {"first_s", "second_s"}}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CHILD = """
import json, sys, time
from counterfactual_lab.runs.location import locate_run
from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.runs.preflight import check_audit
import torch  # imported before timing: the CLI has it loaded by then too
config = AuditConfig.from_yaml(sys.argv[1])
times = []
for _ in range(2):
    started = time.perf_counter()
    check_audit(config)
    location = locate_run(config)
    times.append(time.perf_counter() - started)
print(json.dumps({"first_s": round(times[0], 3), "second_s": round(times[1], 3), "run_id": location.run_id}))
"""


def write_path_dataset(root: Path, images: int) -> Path:
    """``images`` rows, each referencing its own 16×16 PNG under ``root/images`` by relative path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(images):
        path = f"images/{index:06d}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(root / path)
        paths.append(path)
    table = pa.table({
        "id": [f"row-{i:06d}" for i in range(images)],
        "image": paths,
        "caption": ["a photo of a man reading"] * images,
        "gender": ["male"] * images,
    })
    pq.write_table(table, root / "part-0.parquet")
    return root


def measure(config: Path, cache_dir: Path) -> dict:
    env = {**os.environ, "CFLAB_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", CHILD, str(config)], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="rows (and image files) of the path dataset")
    args = parser.parse_args()

    import yaml

    from counterfactual_lab.demo.inputs import prepare_demo

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cflab-bench-locate-") as tmp:
        tmp_path = Path(tmp)
        inputs = prepare_demo(home=tmp_path / "home", out_uri=str(tmp_path / "out"))
        demo = yaml.safe_load(inputs.config_path.read_text())
        started = time.perf_counter()
        paths_root = write_path_dataset(tmp_path / "paths", args.images)
        print(f"# wrote {args.images} images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        configs = {"demo": inputs.config_path}
        paths_config = dict(demo, dataset={"name": "paths", "uri": str(paths_root)}, attributes={"gender": ["female", "male"]})
        configs["paths"] = tmp_path / "paths.yaml"
        configs["paths"].write_text(yaml.safe_dump(paths_config))
        for name, config in configs.items():
            cache_dir = tmp_path / f"hash-cache-{name}"
            for phase in ("cold", "warm"):
                timing = measure(config, cache_dir)
                results.setdefault(name, {})[phase] = {k: timing[k] for k in ("first_s", "second_s")}
                print(json.dumps({"dataset": name, "phase": phase, **timing}), flush=True)
    print(json.dumps({"bench": "locate_run", "images": args.images, "load_average": [round(x, 2) for x in os.getloadavg()],
                      "results": results}))


if __name__ == "__main__":
    main()
