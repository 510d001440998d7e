"""prefect.yaml: every deployment builds from an entrypoint that exists, registers on a
real Prefect server, and the event trigger starts an audit of the announced dataset."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from prefect_harness import prefect_yaml_deployment, wait_for

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
EVENT = "counterfactual-lab.dataset.updated"
STORE_EVENT = "counterfactual-lab.store.changed"
PULL_STEP = "counterfactual_lab.flows.project.use_project_directory"
EXPECTED = {
    "nightly-audit": "flows/audit.py:nightly_audit",
    "audit-on-new-data": "flows/audit.py:dataset_audit",
    "watch-datasets": "flows/watch.py:watch_datasets",
}


def deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def watch_interval() -> int:
    """``watch.interval`` in prefect.yaml: seconds between the watcher's looks."""
    return yaml.safe_load(PREFECT_YAML.read_text())["definitions"]["watch"]["interval"]


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
        assert found["watch-datasets"].schedules[0].schedule.interval.total_seconds() == watch_interval() == 60
        owned = client.read_resource_related_automations(f"prefect.deployment.{found['audit-on-new-data'].id}")
        watcher_triggers = client.read_resource_related_automations(f"prefect.deployment.{found['watch-datasets'].id}")
        pull_steps = {name: found[name].pull_steps for name in EXPECTED}
    assert [a.trigger.expect for a in owned] == [{EVENT}]
    assert [a.trigger.expect for a in watcher_triggers] == [{STORE_EVENT}]
    # Every deployment finds the project on its worker at run time, not in the folder deployed from.
    assert all(steps == [{PULL_STEP: {}}] for steps in pull_steps.values()), pull_steps


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


# ---- deployments that run on a worker elsewhere ----

PROJECT_FILES = ("prefect.yaml", "flows", "configs", "datasets")


def copy_project(folder: Path) -> Path:
    """A copy of the files a deployment needs (what a clone or the image holds), no caches."""
    folder.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    return folder


def _absolute_paths(value) -> list[str]:
    if isinstance(value, str):
        return [value] if Path(value).is_absolute() else []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_deployment_parameter_or_default_names_a_folder_of_the_machine_it_was_deployed_from(name):
    """The UI's "Run" form is filled from the parameter schema `prefect deploy` stores: its
    defaults must be relative to the project too, or a worker elsewhere gets this clone's paths."""
    from prefect.utilities.callables import parameter_schema

    spec = prefect_yaml_deployment(name, str(PREFECT_YAML))
    assert _absolute_paths(spec.get("parameters") or {}) == []
    schema = parameter_schema(load_entrypoint_flow(spec["entrypoint"]))
    defaults = {key: prop.get("default") for key, prop in schema.properties.items()}
    assert _absolute_paths(defaults) == [], f"{name}: absolute defaults {defaults}"


def test_the_pull_step_finds_the_project_named_by_the_environment_else_the_installed_clone(tmp_path, monkeypatch):
    from counterfactual_lab.errors import UserError
    from counterfactual_lab.flows import project

    (step,) = yaml.safe_load(PREFECT_YAML.read_text())["pull"]
    assert step == {PULL_STEP: {}}

    clone = copy_project(tmp_path / "clone")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(project.PROJECT_DIR_ENV, str(clone))
    assert project.use_project_directory() == {"directory": str(clone)}
    assert Path.cwd() == clone  # the flow run then resolves configs/audit.yaml, ./out, ... here

    (tmp_path / "not-a-project").mkdir()
    monkeypatch.setenv(project.PROJECT_DIR_ENV, str(tmp_path / "not-a-project"))
    with pytest.raises(UserError, match="CFLAB_PROJECT_DIR.*has no prefect.yaml, flows, configs, datasets"):
        project.use_project_directory()
    # The step's own argument (a git_clone step's folder) wins over the environment.
    assert project.use_project_directory(str(clone)) == {"directory": str(clone)}

    monkeypatch.delenv(project.PROJECT_DIR_ENV)
    assert project.find_project_directory() == REPO  # this editable install's clone
    # A wheel install (the package in site-packages) and no variable: say how to name the project.
    monkeypatch.setattr(project, "installed_checkout", lambda: None)
    with pytest.raises(UserError, match="set CFLAB_PROJECT_DIR to a clone"):
        project.find_project_directory()


def _wait_for_worker_run(client_filter, timeout: float, log_path: Path, what: str):
    def finished():
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            runs = client_filter(client)
        done = [r for r in runs if r.state and r.state.is_final()]
        if done:
            return done
        return None

    try:
        return wait_for(finished, timeout=timeout, interval=1, what=what)
    except BaseException:
        print(log_path.read_text()[-6000:])
        raise


@pytest.mark.prefect
@pytest.mark.slow
def test_a_deployment_made_in_one_folder_runs_from_a_worker_started_in_another_on_a_store_event(prefect_server, tmp_path):
    """`prefect deploy` in one folder, which is then deleted; a worker started in another clone
    runs the watcher there when the store reports a new Parquet part (S3 notification →
    flows/store_events.py → counterfactual-lab.store.changed → watch-datasets), and the watcher
    announces the dataset it found under that clone's ./data/incoming."""
    import threading

    import httpx
    import pyarrow as pa
    import pyarrow.parquet as pq
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from counterfactual_lab.flows.project import PROJECT_DIR_ENV
    from counterfactual_lab.flows.store_events import build_server
    from prefect_harness import read_events

    pool = f"elsewhere-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", PROJECT_DIR_ENV)}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)

    deployed_from = copy_project(tmp_path / "deployed-from")
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "watch-datasets", "--pool", pool],
        cwd=deployed_from, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shutil.rmtree(deployed_from)  # nothing of the folder deployed from is left

    clone = copy_project(tmp_path / "worker-clone")
    dataset = clone / "data" / "incoming" / "batch-1"
    dataset.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "caption": ["a photo of a man"]}), dataset / "part-0.parquet")

    with get_client(sync_client=True) as client:
        (deployment,) = [d for d in client.read_deployments() if d.work_pool_name == pool]
        wait_for(lambda: client.read_resource_related_automations(f"prefect.deployment.{deployment.id}"),
                 timeout=60, what="the watcher's store-event trigger")

    log_path = tmp_path / "worker.log"
    token = uuid.uuid4().hex
    receiver = build_server("127.0.0.1", 0, token)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
            cwd=clone, env={**env, PROJECT_DIR_ENV: str(clone)}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # What MinIO's webhook target (or S3 via SNS raw delivery) posts when the part lands.
        notification = {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {
            "bucket": {"name": "cflab"}, "object": {"key": "incoming/batch-1/part-0.parquet", "size": 1024}}}]}
        answer = httpx.post(f"http://127.0.0.1:{receiver.server_port}/", json=notification,
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"forwarded": 1}, answer.text

        def watcher_runs(client):
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))

        runs = _wait_for_worker_run(watcher_runs, 180, log_path, "a watcher run started by the store event")
        assert any(r.state.is_completed() for r in runs), [(r.name, r.state.message) for r in runs]
        assert any(r.created_by and r.created_by.type == "AUTOMATION" for r in runs), [r.created_by for r in runs]
    finally:
        receiver.shutdown()
        try:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(worker.pid, signal.SIGKILL)

    # Relative parameters resolved in the worker's clone: its ./data/incoming, its ./out.
    state = json.loads((clone / "out" / "_watch" / "state.json").read_text())
    assert list(state["datasets"]) == [str(dataset)]
    assert read_events(EVENT, str(dataset)), "the watcher announced nothing"
