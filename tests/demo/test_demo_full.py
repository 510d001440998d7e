"""`cflab demo --full` end to end: every audit design in one run, and the family of comparisons
counted over all of them (intersections, phrasings, modalities and the answer-change measures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_demo_run(tmp_path_factory) -> Path:
    """The run folder of one `cflab demo --full` from an empty home (it builds its own models)."""
    root = tmp_path_factory.mktemp("demo-full")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.endswith("DATABASE_CONNECTION_URL")}
    env["PREFECT_HOME"] = str(root / "user-prefect")
    done = subprocess.run(
        [sys.executable, "-m", "counterfactual_lab.flows.cli", "demo", "--full", "--home", str(root / ".cflab"),
         "--out", str(root / "out")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run_line = next(line for line in done.stdout.splitlines() if line.startswith("run: "))
    return Path(run_line.removeprefix("run: "))


def test_the_full_demo_completes_with_every_design_in_its_metrics(full_demo_run):
    manifest = json.loads((full_demo_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    metrics = pl.read_parquet(full_demo_run / "metrics.parquet")

    assert set(metrics["modality"].drop_nulls()) == {"image", "text", "both"}  # modality attribution
    attributes = set(metrics["attribute"].drop_nulls())
    assert {"gender", "age", "gender+age"} <= attributes  # joint edits
    assert any(a.startswith("gender | age=") for a in attributes)  # cells of the other attribute
    assert any(a.startswith("age | gender=") for a in attributes)
    phrasings = metrics["phrasing"].drop_nulls().unique()
    assert phrasings.len() == 4  # two phrasings of the choice and two of the yes/no question
    assert metrics.filter(pl.col("metric") == "phrasing_spread").height > 0
    assert {"rouge_l", "embedding_cosine"} <= set(metrics["measure"].drop_nulls())  # answer change
    assert metrics.filter(pl.col("metric") == "synthetic_shift").height > 0


def test_the_full_demos_family_is_counted_once_over_every_design(full_demo_run):
    metrics = pl.read_parquet(full_demo_run / "metrics.parquet")
    family = metrics.filter(pl.col("in_family"))
    m = family.height
    assert m > 0
    # m is the number of rows in the family, the same on every one of them.
    assert family["comparisons"].unique().to_list() == [m]
    assert metrics.filter(~pl.col("in_family"))["comparisons"].null_count() == metrics.height - m
    # The pooled row of a probe asked in several phrasings is compared, never one phrasing's row.
    assert family["phrasing"].null_count() == m
    assert metrics.filter(pl.col("phrasing").is_not_null() & pl.col("in_family")).is_empty()
    # Observational rows are never compared; intersection cells, joint edits and every modality are.
    assert set(family["stratum"]) == {"generated"}
    attributes = set(family["attribute"])
    assert "gender+age" in attributes and any(" | " in a for a in attributes)
    assert set(family["modality"].drop_nulls()) == {"image", "text", "both"}
    # Holm's adjusted p-values are at least the raw ones, and m of them are computed.
    assert family["p_value"].null_count() == 0 and family["p_adjusted"].null_count() == 0
    assert (family["p_adjusted"] >= family["p_value"] - 1e-12).all()
