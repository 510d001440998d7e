"""Test fixtures for Prefect and Ray: one temporary Prefect server per test session.

Use from ``tests/conftest.py``::

    from prefect_harness import local_ray, prefect_server  # noqa: F401  (fixtures)

``prefect_server`` starts Prefect's own ``prefect_test_harness`` (a real API server in a
subprocess, SQLite in a temporary folder) once per session and also exports its URL as
``PREFECT_API_URL`` in ``os.environ``, so subprocesses (a served deployment, ``prefect
deploy``) and Ray workers report to the same server. Several test modules may import the
fixture: the server is shared (reference counted), never started twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

# Faster event persistence and trigger evaluation than the production defaults, so event
# tests wait seconds, not tens of seconds. Read by the server subprocess at start.
SERVER_TEST_ENV = {
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # A served deployment polls for scheduled runs this often (seconds).
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
}

_lock = threading.Lock()
_state: dict[str, Any] = {"users": 0, "stack": None, "api_url": None, "saved_env": {}}


def start_shared_server() -> str:
    """Start (or reuse) the session's temporary Prefect server; returns its API URL."""
    with _lock:
        if _state["stack"] is None:
            from prefect.settings import PREFECT_API_URL
            from prefect.testing.utilities import prefect_test_harness

            saved = {k: os.environ.get(k) for k in [*SERVER_TEST_ENV, "PREFECT_API_URL"]}
            for key, value in SERVER_TEST_ENV.items():
                os.environ.setdefault(key, value)
            stack = ExitStack()
            stack.enter_context(prefect_test_harness(server_startup_timeout=60))
            api_url = PREFECT_API_URL.value()
            os.environ["PREFECT_API_URL"] = api_url
            _state.update(stack=stack, api_url=api_url, saved_env=saved)
        _state["users"] += 1
        return _state["api_url"]


def stop_shared_server() -> None:
    with _lock:
        _state["users"] -= 1
        if _state["users"] > 0 or _state["stack"] is None:
            return
        stack, saved = _state["stack"], _state["saved_env"]
        _state.update(stack=None, api_url=None, saved_env={})
        try:
            stack.close()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A temporary Prefect API server for the whole session; yields its ``PREFECT_API_URL``."""
    api_url = start_shared_server()
    try:
        yield api_url
    finally:
        stop_shared_server()


@pytest.fixture(scope="session")
def local_ray(prefect_server):
    """A local Ray instance (2 CPUs, no dashboard) whose workers report to ``prefect_server``."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            namespace="prefect",
            runtime_env={"env_vars": {"PREFECT_API_URL": prefect_server, "DO_NOT_TRACK": "1"}},
            log_to_driver=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def read_events(event_name: str, resource_id: str | None = None) -> list[Any]:
    """Events named ``event_name`` (optionally about one resource) stored by the server."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
    from prefect.types._datetime import now

    import datetime as dt

    event_filter = EventFilter(
        # The default window is the last hour: widen it so a long session misses nothing.
        occurred=EventOccurredFilter(since=now("UTC") - dt.timedelta(days=1), until=now("UTC") + dt.timedelta(minutes=5)),
        event=EventNameFilter(name=[event_name]),
        resource=EventResourceFilter(id=[resource_id]) if resource_id else None,
    )
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=event_filter, limit=50)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events.extend(page.events)
    return events


def prefect_yaml_deployment(name: str, prefect_yaml: str = "prefect.yaml") -> dict[str, Any]:
    """The entry of deployment ``name`` in prefect.yaml."""
    import yaml

    with open(prefect_yaml) as handle:
        deployments = yaml.safe_load(handle)["deployments"]
    for deployment in deployments:
        if deployment["name"] == name:
            return deployment
    raise KeyError(f"prefect.yaml has no deployment named {name!r}")


def serve_from_prefect_yaml(name: str, entrypoint: str | None = None) -> None:
    """Serve deployment ``name`` as prefect.yaml defines it (schedules aside), triggers included.

    ``entrypoint`` replaces the one in prefect.yaml (a stand-in flow). Run it in a
    subprocess: ``python tests/prefect_harness.py serve NAME [ENTRYPOINT]``.
    """
    from prefect.events import DeploymentTriggerTypes
    from prefect.flows import load_flow_from_entrypoint
    from pydantic import TypeAdapter

    spec = prefect_yaml_deployment(name)
    flow = load_flow_from_entrypoint(entrypoint or spec["entrypoint"])
    triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in spec.get("triggers") or []]
    flow.serve(name=name, triggers=triggers, parameters=spec.get("parameters") or {}, print_starting_message=True)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "serve":
        raise SystemExit("usage: python tests/prefect_harness.py serve DEPLOYMENT_NAME [ENTRYPOINT]")
    serve_from_prefect_yaml(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
