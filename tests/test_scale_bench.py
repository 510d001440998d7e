"""bench/scale.py cannot rot: its main runs a few hundred work items end to end and prints its JSON line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.prefect
def test_the_scale_bench_audits_a_few_hundred_items_and_ends_with_its_json_line(tmp_path, prefect_server):
    batch_size = 32
    proc = subprocess.run(
        [sys.executable, "bench/scale.py", "--sizes", "300", "--batch-size", str(batch_size),
         "--work", str(tmp_path), "--api-url", prefect_server],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(result)[:3] == ["bench", "overhead_ms_per_task", "sizes"]
    assert result["bench"] == "scale"
    assert list(result["sizes"]) == ["300"]
    size = result["sizes"]["300"]
    assert size["not_measured"] == []  # every stage the bench times still exists under its name
    assert size["items"] == 300 and size["planned"] >= 300 and size["rows"] >= 1
    assert size["wall_s"] > 0 and size["peak_rss_mb"] > size["rss_after_imports_mb"] > 0
    # Generation tasks of whole batches, sized by runtime.tasks_per_worker (flows/task_sizes.py), each seen by the bench.
    per_task = batch_size * math.ceil(math.ceil(size["planned"] / (2 * 16)) / batch_size)
    assert size["tasks"]["generate"] == math.ceil(size["generated"] / per_task)
    assert size["tasks"]["evaluate"] >= 1
    assert result["overhead_ms_per_task"] == size["overhead_ms_per_task"] >= 0
    assert 0 < size["orchestration_share"] < 1 and result["orchestration_share"] == size["orchestration_share"]
    assert result["auditee"] == "clip" and "answers" not in result
    assert all(size["noop_ms_per_task"][k] > 0 for k in ("plain", "tagged", "generation_path"))
    assert {"validate", "plan", "generate", "judge", "evaluate", "metrics", "publish"} <= set(size["stages_s"])
