"""Benchmark: how soon a new dataset part is audited, with the default deployment settings.

Everything real and as the README's "Run it in the Prefect UI" sets it up: ``prefect server
start`` (its own PREFECT_HOME in a temporary folder, production settings), the
``local-process`` pool, ``prefect deploy --all`` from a copy of the project, and ``prefect
worker start`` run with ``CFLAB_PROJECT_DIR`` set to that copy (worker poll: Prefect's default
10 s). ``watch.interval`` is prefect.yaml's (60 s). A new part is the sample dataset
(``--rows`` rows) written to ``data/incoming/<name>/part-00000.parquet``; per path it measures,
from the moment the part is written:

* ``announced_s``: the watcher's ``counterfactual-lab.dataset.updated`` event for it;
* ``audit_started_s``: the ``audit-on-new-data`` run for it starts on the worker;
* ``audited_s``: that run is Completed (its report is written).

Paths: ``poll`` (the watcher's schedule finds the part; the part lands at a random moment of
the interval, so repeat with ``--trials`` to see the spread), ``poll-worst`` (the part lands
just after a look of the watcher ended: the next look is a whole interval away) and ``event``
(the store's notification, posted at once to ``flows/store_events.py`` as MinIO's webhook
target would).

    python bench/landing_latency.py                         # one trial per path, about 5 minutes
    python bench/landing_latency.py --trials 3 --home .cflab  # reuse built tiny models
    python bench/landing_latency.py --paths poll-worst         # the polling path's worst case

One JSON line per trial, then ``{"bench": "landing_latency", "load_average_start", "load_average_end", "results"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

PROJECT_FILES = ("prefect.yaml", "flows", "configs", "datasets")
DATASET_UPDATED = "counterfactual-lab.dataset.updated"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_project(folder: Path, home: Path | None) -> Path:
    folder.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    (folder / ".cflab").mkdir()
    if home is not None:
        (folder / ".cflab" / "models").symlink_to(home.resolve() / "models", target_is_directory=True)
    else:
        from counterfactual_lab.demo.tiny_models import build_tiny_models

        build_tiny_models(folder / ".cflab" / "models")
    from counterfactual_lab.demo.sample_dataset import write_sample_dataset

    write_sample_dataset(folder / ".cflab" / "sample-dataset", rows=24)  # the nightly's catalogue dataset
    (folder / "data" / "incoming").mkdir(parents=True)
    return folder


def start(command: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def run(command: list[str], cwd: Path, env: dict) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def announced_at(uri: str) -> float | None:
    """When the watcher's event for ``uri`` occurred (epoch seconds), or None before it is stored."""
    import datetime as dt

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    now = dt.datetime.now(dt.timezone.utc)
    event_filter = EventFilter(occurred=EventOccurredFilter(since=now - dt.timedelta(hours=1), until=now + dt.timedelta(minutes=5)),
                               event=EventNameFilter(name=[DATASET_UPDATED]), resource=EventResourceFilter(id=[uri]))
    with get_client(sync_client=True) as client:
        events = list(client.read_events(filter=event_filter, limit=10).events)
    return min(e.occurred.timestamp() for e in events) if events else None


def audit_run(uri: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["audit-on-new-data"])))
    mine = [r for r in runs if r.parameters.get("dataset_uri") == uri]
    return mine[0] if mine else None


def _watcher_finished_since(since: float) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["watch-datasets"])))
    return any(r.end_time and r.end_time.timestamp() > since and r.state.is_completed() for r in runs)


def trial(path: str, project: Path, receiver_url: str | None, token: str, rows: int, timeout: float) -> dict:
    import httpx

    from counterfactual_lab.demo.sample_dataset import write_sample_dataset

    name = f"{path}-{uuid.uuid4().hex[:6]}"
    staging = project / "staging" / name
    write_sample_dataset(staging, rows=rows, seed=random.randrange(1000))
    dataset = project / "data" / "incoming" / name
    if path == "poll-worst":  # land just after a look: the next one is a whole interval away
        since = time.time()
        wait(lambda: _watcher_finished_since(since), 180, "a scheduled look of the watcher", interval=0.5)
    landed = time.time()
    staging.rename(dataset)  # one atomic move: the part lands whole
    uri = str(dataset)
    if path == "event":
        # What MinIO's webhook target posts for the new object (here the bucket stands for the folder).
        key = f"incoming/{name}/part-00000.parquet"
        body = {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "cflab"}, "object": {"key": key}}}]}
        answer = httpx.post(receiver_url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        answer.raise_for_status()
    announced = wait(lambda: announced_at(uri), timeout, f"the {DATASET_UPDATED} event for {uri}", interval=1)
    started = wait(lambda: (r := audit_run(uri)) and r.start_time and r, timeout, "the audit run to start", interval=1)
    finished = wait(lambda: (r := audit_run(uri)) and r.state and r.state.is_final() and r, timeout * 2,
                    "the audit run to finish", interval=1)
    return {
        "path": path, "rows": rows,
        "announced_s": round(announced - landed, 1),
        "audit_started_s": round(started.start_time.timestamp() - landed, 1),
        "audited_s": round(finished.end_time.timestamp() - landed, 1),
        "audit_run_s": round(finished.total_run_time.total_seconds(), 1),
        "state": finished.state.name,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1, help="trials per path (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=12, help="rows of each new part (default: %(default)s)")
    parser.add_argument("--home", type=Path, help="a demo home (.cflab) whose tiny models to reuse; default: build them")
    parser.add_argument("--paths", default="event,poll", help="which paths, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]

    from counterfactual_lab.flows.project import PROJECT_DIR_ENV

    results = []
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="cflab-bench-landing-") as tmp:
        tmp_path = Path(tmp)
        project = copy_project(tmp_path / "project", args.home)
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "PYTHONPATH"}
        env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
        os.environ.update(PREFECT_API_URL=api_url)
        client_env = {**env, "PREFECT_API_URL": api_url}
        token = uuid.uuid4().hex
        try:
            processes.append(start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   tmp_path, env, tmp_path / "server.log"))
            import httpx

            wait(lambda: _healthy(httpx, api_url), 180, "the Prefect server")
            run([sys.executable, "-m", "prefect", "work-pool", "create", "local-process", "--type", "process"], project, client_env)
            run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], project, client_env)
            processes.append(start([sys.executable, "-m", "prefect", "worker", "start", "--pool", "local-process"],
                                   project, {**client_env, PROJECT_DIR_ENV: str(project)}, tmp_path / "worker.log"))
            receiver_port = free_port()
            processes.append(start([sys.executable, "-m", "counterfactual_lab.flows.store_events", "--port", str(receiver_port)],
                                   project, {**client_env, "CFLAB_STORE_EVENTS_TOKEN": token}, tmp_path / "receiver.log"))
            receiver_url = f"http://127.0.0.1:{receiver_port}/"
            wait(lambda: _healthy(httpx, receiver_url), 60, "the store-events receiver")
            # Let the first scheduled looks and their (empty) runs pass: the worker and the schedule are warm.
            time.sleep(random.uniform(5, 65))
            for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
                for _ in range(args.trials):
                    result = trial(path, project, receiver_url, token, args.rows, timeout=600)
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    if path == "poll":
                        time.sleep(random.uniform(0, _watch_interval()))  # land at another moment of the interval
        except BaseException:
            for log in ("worker.log", "server.log", "receiver.log"):
                if (tmp_path / log).exists():
                    print(f"---- {log}\n{(tmp_path / log).read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            for process in reversed(processes):
                stop(process)
    print(json.dumps({"bench": "landing_latency", "watch_interval_s": _watch_interval(),
                      "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
                      "results": results}))


def _healthy(httpx, url: str) -> bool:
    try:
        return httpx.get(url.rstrip("/") + ("/health" if url.endswith("/api") else "/"), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _watch_interval() -> int:
    import yaml

    return yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["definitions"]["watch"]["interval"]


if __name__ == "__main__":
    main()
