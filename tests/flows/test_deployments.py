"""prefect.yaml: every deployment builds from an entrypoint that exists, registers on a
real Prefect server, and the event trigger starts an audit of the announced dataset."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefect_harness import prefect_yaml_deployment, wait_for

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
EVENT = "counterfactual-lab.dataset.updated"
EXPECTED = {
    "nightly-audit": "flows/audit.py:nightly_audit",
    "audit-on-new-data": "flows/audit.py:dataset_audit",
    "watch-datasets": "flows/watch.py:watch_datasets",
}


def deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def load_entrypoint_flow(entrypoint: str):
    """Import the flow an entrypoint names; fail with the reason when it cannot."""
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    path, _, function = entrypoint.partition(":")
    assert (REPO / path).is_file(), f"prefect.yaml entrypoint {entrypoint}: {path} does not exist"
    cwd = os.getcwd()
    os.chdir(REPO)  # entrypoints are relative to the repository root, as for `prefect deploy`
    try:
        # What a worker does with the entrypoint ...
        assert isinstance(load_flow_from_entrypoint(entrypoint), Flow), f"{entrypoint}: {function} is not a Prefect flow"
    finally:
        os.chdir(cwd)
    # ... and the same flow imported as a module of this package (to build deployments from).
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    assert isinstance(flow, Flow), f"{entrypoint}: {function} is not a Prefect flow"
    return flow


def build_deployment(spec: dict):
    """The RunnerDeployment that prefect.yaml's entry describes (schedules, triggers, parameters)."""
    from prefect.events import DeploymentTriggerTypes
    from prefect.schedules import Cron, Interval
    from pydantic import TypeAdapter

    schedules = []
    for schedule in spec.get("schedules") or []:
        if "cron" in schedule:
            schedules.append(Cron(schedule["cron"], timezone=schedule.get("timezone")))
        else:
            schedules.append(Interval(schedule["interval"], timezone=schedule.get("timezone")))
    triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in spec.get("triggers") or []]
    flow = load_entrypoint_flow(spec["entrypoint"])
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return flow, _to_deployment(flow, spec, schedules, triggers)
    finally:
        os.chdir(cwd)


def _to_deployment(flow, spec, schedules, triggers):
    return flow.to_deployment(
        name=spec["name"],
        schedules=schedules,
        triggers=triggers,
        parameters=spec.get("parameters") or {},
        concurrency_limit=spec.get("concurrency_limit"),
        tags=spec.get("tags"),
        work_pool_name=spec["work_pool"]["name"],
        description=spec.get("description"),
    )


def test_prefect_yaml_is_valid_for_the_prefect_cli():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    assert {d.name: d.entrypoint for d in model.deployments} == EXPECTED
    assert {d.work_pool.name for d in model.deployments} == {"local-process"}
    schedules = {d.name: d.schedules for d in model.deployments}
    assert schedules["nightly-audit"][0].cron and schedules["watch-datasets"][0].interval
    assert not schedules["audit-on-new-data"]


def test_audit_on_new_data_passes_the_event_resource_as_dataset_uri():
    from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes
    from pydantic import TypeAdapter

    (raw,) = prefect_yaml_deployment("audit-on-new-data", str(PREFECT_YAML))["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(raw)
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.expect == {EVENT}
    assert trigger.parameters == {"dataset_uri": "{{ event.resource.id }}"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_deployment_builds_from_an_existing_flow(name):
    spec = prefect_yaml_deployment(name, str(PREFECT_YAML))
    flow, deployment = build_deployment(spec)
    accepted = set(flow.parameters.properties)
    assert set(spec.get("parameters") or {}) <= accepted, f"{name}: unknown parameters"
    for trigger in spec.get("triggers") or []:
        assert set(trigger.get("parameters") or {}) <= accepted, f"{name}: trigger passes unknown parameters"
    assert deployment.entrypoint.endswith(spec["entrypoint"].split(":", 1)[1])
    required = set(flow.parameters.required or [])
    assert required <= set(spec.get("parameters") or {}) | {
        p for t in spec.get("triggers") or [] for p in t.get("parameters") or {}
    }, f"{name}: required parameters {required} have no value in prefect.yaml"


def _api_env(api_url: str) -> dict[str, str]:
    env = dict(os.environ, PREFECT_API_URL=api_url, PYTHONPATH=str(REPO), PREFECT_RUNNER_POLL_FREQUENCY="1")
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    return env


@pytest.mark.prefect
@pytest.mark.slow
def test_prefect_deploy_all_registers_every_deployment(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        if not any(p.name == "local-process" for p in client.read_work_pools()):
            client.create_work_pool(WorkPoolCreate(name="local-process", type="process"))
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=REPO, env=_api_env(prefect_server), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with get_client(sync_client=True) as client:
        found = {d.name: d for d in client.read_deployments()}
        assert set(EXPECTED) <= set(found)
        assert found["nightly-audit"].schedules[0].schedule.cron == "0 2 * * *"
        assert found["watch-datasets"].schedules[0].schedule.interval.total_seconds() == 600
        owned = client.read_resource_related_automations(f"prefect.deployment.{found['audit-on-new-data'].id}")
    assert [a.trigger.expect for a in owned] == [{EVENT}]


STAND_IN_FLOW = '''
from prefect import flow

@flow(name="dataset-audit")
def dataset_audit(config_uri: str = "configs/audit.yaml", dataset_uri: str | None = None,
                  output_uri: str | None = None, evaluate: bool = True) -> str:
    return dataset_uri
'''


@pytest.mark.prefect
@pytest.mark.slow
def test_dataset_event_starts_audit_on_new_data_with_that_dataset(prefect_server, tmp_path):
    """The watcher announces a new dataset; the served `audit-on-new-data` deployment
    starts a flow run whose dataset_uri is that dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

    from counterfactual_lab.flows.watch import watch_datasets

    command = [sys.executable, str(REPO / "tests" / "prefect_harness.py"), "serve", "audit-on-new-data"]
    if not (REPO / "flows" / "audit.py").exists():  # until the real audit flow lands
        (tmp_path / "stand_in.py").write_text(STAND_IN_FLOW)
        command.append(f"{tmp_path / 'stand_in.py'}:dataset_audit")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(command, cwd=REPO, env=_api_env(prefect_server), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def served_log() -> str:
        return (tmp_path / "serve.log").read_text()[-4000:]

    try:
        def deployment_with_trigger():
            assert server.poll() is None, f"serve exited early:\n{served_log()}"
            with get_client(sync_client=True) as client:
                found = [d for d in client.read_deployments() if d.name == "audit-on-new-data"]
                if not found or "Your flow 'dataset-audit' is being served" not in served_log():
                    return None
                if client.read_resource_related_automations(f"prefect.deployment.{found[0].id}"):
                    return found[0]
            return None

        deployment = wait_for(deployment_with_trigger, timeout=180, interval=1, what="the served deployment")

        dataset = tmp_path / "incoming" / "new-ds"
        dataset.mkdir(parents=True)
        pq.write_table(pa.table({"id": ["a"], "caption": ["a photo of a man"]}), dataset / "part-0.parquet")
        assert watch_datasets(prefixes=[str(tmp_path / "incoming")], output_uri=str(tmp_path / "out")) == [str(dataset)]

        def started_run():
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["audit-on-new-data"])),
                    flow_run_filter=FlowRunFilter(),
                )
            mine = [r for r in runs if r.deployment_id == deployment.id and r.parameters.get("dataset_uri") == str(dataset)]
            # Picked up by the served process: no longer waiting in Scheduled.
            return [r for r in mine if r.state and r.state.name not in ("Scheduled", "Late")]

        (run,) = wait_for(started_run, timeout=90, interval=1, what=f"a flow run of audit-on-new-data for {dataset}")
        assert run.parameters["dataset_uri"] == str(dataset)
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
