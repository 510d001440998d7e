"""`cflab demo` keeps its Prefect state under its own home (.cflab/prefect): after it, the
user's own PREFECT_HOME (what `prefect server start` and `prefect flow-run ls` read) holds no
flow run of the demo's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def flow_runs(database: Path) -> list[tuple[str, str]]:
    """(flow name, state type) of every flow run in a Prefect SQLite database; [] without one."""
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
        if "flow_run" not in tables:
            return []
        return connection.execute("select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id").fetchall()


@pytest.mark.slow
def test_cflab_demo_leaves_the_users_prefect_home_empty(tiny_models, tmp_path):
    from counterfactual_lab.demo.sample_dataset import write_sample_dataset

    # A demo home whose inputs exist (the session's tiny models, a small sample): only the audit runs.
    home = tmp_path / ".cflab"
    home.mkdir()
    (home / "models").symlink_to(next(iter(tiny_models.values())).parent, target_is_directory=True)
    write_sample_dataset(home / "sample-dataset", rows=8, seed=0)

    user_home = tmp_path / "user-prefect"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.endswith("DATABASE_CONNECTION_URL")}
    # The user's own settings: their home, and a database named in it (as a profile or .env might).
    env.update(PREFECT_HOME=str(user_home),
               PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{user_home / 'prefect.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "counterfactual_lab.flows.cli", "demo", "--home", str(home), "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"its state under {home / 'prefect'}" in done.stderr

    assert flow_runs(user_home / "prefect.db") == []
    assert ("dataset-audit", "COMPLETED") in flow_runs(home / "prefect" / "prefect.db")
