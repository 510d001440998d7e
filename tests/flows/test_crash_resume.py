"""Crash and resume: SIGKILL ``cflab audit`` in the middle of generation, run it again.

The rerun finishes the same run folder, makes only the images the killed run had not
stored, and publishes the same tables as an audit that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from counterfactual_lab.flows.cli import main
from counterfactual_lab.runs.publisher import MANIFEST_NAME
from counterfactual_lab.runs.reader import read_run
from audit_runs import assert_accounting_closes, assert_same_tables, audit_home, run_audit, write_config

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
# One item per batch: a resumed item is made exactly as an uninterrupted run makes it, and
# 24 tasks (per row a reconstruction, a counterfactual and a control) take long enough that the
# kill lands in the middle of generation. Three steps (the other tests use two) give these items
# content keys of their own, so nothing this process cached for another test (the judge's
# embeddings) stands in for the subprocess's images.
GENERATION = {"steps": 3, "seeds_per_target": 1, "batch_size": 1}


def start_audit(config: str, out: Path, log: Path) -> subprocess.Popen:
    """``cflab audit`` in a subprocess of its own session (to SIGKILL it), reporting to the test's Prefect server."""
    import torch

    # The same number of torch threads as this process: CPU kernels sum in another order with
    # another thread count, and the images must match the reference run's bit for bit.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    assert env.get("PREFECT_API_URL"), "the prefect_server fixture exports PREFECT_API_URL"
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "counterfactual_lab.flows.cli", "audit", "--config", config, "--out", str(out)],
            cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )


def stored(out: Path, keys: set[str]) -> set[str]:
    """Which of ``keys`` have an image under ``out/images``."""
    try:
        names = os.listdir(out / "images")
    except FileNotFoundError:
        return set()
    return {name.removesuffix(".png") for name in names if name.endswith(".png")} & keys


def test_killed_audit_resumes_without_generating_any_image_twice(prefect_server, tiny_models, tmp_path_factory):
    inputs = audit_home(tmp_path_factory, tiny_models)
    config_dir = tmp_path_factory.mktemp("crash-config")
    config = write_config(config_dir / "audit.yaml", inputs, "./unused", generation=GENERATION)

    # The uninterrupted audit, into another output folder.
    reference_out = str(tmp_path_factory.mktemp("crash-reference"))
    reference = run_audit(config, reference_out)
    keys = set(reference.counterfactuals["content_key"])
    planned = len(keys)

    out = tmp_path_factory.mktemp("crash-out")
    run_dir = out / reference.run_id  # same config and data: same run id, whatever the output
    log = config_dir / "killed.log"
    process = start_audit(config, out, log)
    try:
        deadline = time.monotonic() + 90
        while not stored(out, keys):
            assert process.poll() is None, f"the audit ended before generating anything:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no image generated in 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = stored(out, keys)
    assert 0 < len(before) < planned, f"generation finished before the kill ({len(before)} of {planned} images)"
    assert not (run_dir / MANIFEST_NAME).exists()  # the killed run is marked incomplete

    # The same command again, in this process (no second interpreter start-up to pay for).
    assert main(["audit", "--config", config, "--out", str(out)]) == 0

    resumed = read_run(str(run_dir))
    counts = resumed.manifest["generation_counts"]
    assert counts["generated"] == planned - len(before)  # only what the killed run had not stored
    assert counts["generated"] + counts["cache_hits"] == planned and counts["failed"] == 0
    assert stored(out, keys) == keys
    for key in keys:  # the killed run's images and the resumed run's are the reference run's, bit for bit
        assert (out / "images" / f"{key}.png").read_bytes() == Path(reference_out, "images", f"{key}.png").read_bytes()
    assert_accounting_closes(resumed)
    assert_same_tables(reference, resumed, reference_out, str(out))
