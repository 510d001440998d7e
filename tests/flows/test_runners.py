"""Task runner selection: threads, or Ray with every worker reporting to one Prefect server."""

from __future__ import annotations

import os
import sys

import pytest
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from counterfactual_lab.config.audit_config import AuditConfig, RuntimeSection
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.tasks.runners import check_ray_prefect_api, make_task_runner, require_ray_extra, with_runtime_retries


def test_threads_runner_has_the_configured_worker_cap():
    runner = make_task_runner(RuntimeSection(task_runner="threads", max_workers=3))
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 3


def test_ray_without_a_prefect_server_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="PREFECT_API_URL is not set.*prefect server start"):
        check_ray_prefect_api(None, None)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ConfigError, match="PREFECT_API_URL is not set"):
            make_task_runner(RuntimeSection(task_runner="ray"))


@pytest.mark.parametrize("module", ["ray", "prefect_ray"])
def test_ray_without_the_extra_installed_names_the_extra(monkeypatch, module):
    # A None entry in sys.modules makes `import module` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, module, None)
    expected = (
        f"runtime.task_runner 'ray' needs Ray, an optional extra that is not installed (no module {module!r}): "
        "pip install 'counterfactual-lab[ray]', or use runtime.task_runner 'threads'"
    )
    with pytest.raises(ConfigError) as err:
        make_task_runner(RuntimeSection(task_runner="ray"))  # refused before the API URL is even looked at
    assert str(err.value) == expected and "\n" not in str(err.value)
    assert isinstance(make_task_runner(RuntimeSection(task_runner="threads")), ThreadPoolTaskRunner)


def test_ray_extra_check_passes_where_it_is_installed():
    require_ray_extra()  # the test extra includes the ray extra


@pytest.mark.parametrize(
    ("ray_address", "api_url", "ok"),
    [
        (None, "http://127.0.0.1:4200/api", True),  # local Ray, local server
        ("auto", "http://localhost:4200/api", True),
        ("ray://127.0.0.1:10001", "http://127.0.0.1:4200/api", True),
        ("ray://ray-head:10001", "http://prefect:4200/api", True),
        ("ray://ray-head:10001", "http://127.0.0.1:4200/api", False),  # workers cannot reach it
        ("10.0.0.5:6379", "http://localhost:4200/api", False),
    ],
)
def test_remote_ray_cluster_needs_a_reachable_api_url(ray_address, api_url, ok):
    if ok:
        assert check_ray_prefect_api(ray_address, api_url) == api_url
    else:
        with pytest.raises(ConfigError, match="loopback"):
            check_ray_prefect_api(ray_address, api_url)


def test_ray_runner_targets_the_address_and_passes_the_api_url(prefect_server):
    from prefect_ray import RayTaskRunner

    remote = make_task_runner(RuntimeSection(task_runner="ray", ray_address="ray://127.0.0.1:10001"))
    assert isinstance(remote, RayTaskRunner) and remote.address == "ray://127.0.0.1:10001"
    assert "num_cpus" not in remote.init_kwargs  # an existing cluster sizes itself
    assert remote.init_kwargs["runtime_env"]["env_vars"]["PREFECT_API_URL"] == prefect_server

    local = make_task_runner(RuntimeSection(task_runner="ray", max_workers=2))
    assert local.address is None and local.init_kwargs["num_cpus"] == 2


@pytest.mark.parametrize(
    ("device", "cluster_gpus", "expected"),
    [
        ("cuda", 0.0, {"num_gpus": 0.5}),  # asked for: an autoscaling cluster adds GPU workers
        ("auto", 2.0, {"num_gpus": 0.5}),
        ("auto", 0.0, {}),
        ("cpu", 2.0, {}),
    ],
)
def test_ray_runner_gives_gpu_tagged_tasks_their_gpus(prefect_server, device, cluster_gpus, expected):
    runner = make_task_runner(RuntimeSection(task_runner="ray", device=device), gpus_per_task=0.5)
    runner._cluster_gpus = cluster_gpus  # what __enter__ reads from the cluster
    assert runner.remote_options_for_task(gpu_square) == expected
    assert runner.remote_options_for_task(square) == {}  # CPU work never asks for a GPU
    assert runner.duplicate() == runner


@task
def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@task(tags=["gpu"])
def gpu_square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@flow
def squares(values: list[int]) -> list[tuple[int, int]]:
    return square.map(values).result() + gpu_square.map(values).result()


@pytest.mark.ray
@pytest.mark.slow
def test_mapped_flow_on_ray_matches_threads_and_reports_to_the_server(prefect_server, local_ray):
    import cloudpickle
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Ray workers cannot import this test module by name: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    values = [1, 2, 3, 4, 5]
    threads = squares.with_options(task_runner=make_task_runner(RuntimeSection(task_runner="threads", max_workers=2)))
    ray_runtime = RuntimeSection(task_runner="ray", max_workers=2)
    on_ray = squares.with_options(task_runner=make_task_runner(ray_runtime))

    threads_results = threads(values)
    state = on_ray(values, return_state=True)
    ray_results = state.result()

    assert [v for v, _ in ray_results] == [v for v, _ in threads_results] == [v * v for v in values] * 2
    assert {pid for _, pid in threads_results} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid in ray_results}  # ran in Ray worker processes

    # Each Ray worker recorded its task run on the session's server, not a private one.
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert sorted(r.state.name for r in runs) == ["Completed"] * 2 * len(values)


def test_a_quoted_batch_survives_the_pickle_ray_makes_of_task_parameters():
    """Ray pickles parameters; Prefect's own quote comes back as a quote of a 1-tuple."""
    import pickle

    import cloudpickle
    from prefect.utilities.collections import visit_collection

    from counterfactual_lab.tasks.runners import picklable_quote

    batch = [{"id": "a"}, {"id": "b"}]
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        assert loads(dumps(picklable_quote(batch))).unwrap() == batch
    # Prefect still treats it as an annotation: a task receives the batch itself
    resolved = visit_collection({"items": picklable_quote(batch)}, visit_fn=lambda x: x,
                                return_data=True, remove_annotations=True)
    assert resolved == {"items": batch}


def test_a_cluster_that_refuses_the_client_names_the_token_settings(prefect_server, monkeypatch):
    """Ray 2.60: a driver without RAY_AUTH_MODE=token got 30 s of gcs_client retries and
    "Failed to connect"; the runner says what to set, in one line."""
    import prefect_ray

    def refused(self):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")

    monkeypatch.setattr(prefect_ray.RayTaskRunner, "__enter__", refused)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    runner = make_task_runner(RuntimeSection(task_runner="ray", ray_address="127.0.0.1:6379"))
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:6379.*Failed to connect.*RAY_AUTH_MODE=token.*RAY_AUTH_TOKEN"):
        runner.__enter__()
    assert type(sys.stdout).__name__ != "RayDriverOutput"  # stdout restored


def test_rays_driver_lines_become_one_warning_each_and_stdout_is_restored(caplog):
    import logging

    from counterfactual_lab.tasks.runners import RAY_LOGGER, RayDriverOutput

    before = sys.stdout
    output = RayDriverOutput().start()
    try:
        print("\x1b[33m(raylet)\x1b[0m Raylet is terminated. Termination is unexpected.")
        print("    [state-dump] NodeManager:")
        print("(raylet) Task _run_prefect_task failed. There are 3 retries remaining", end="")
    finally:
        with caplog.at_level(logging.DEBUG, logger=RAY_LOGGER):
            output.stop()
    assert sys.stdout is before
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == RAY_LOGGER]
    assert [m for level, m in records if level == "WARNING"] == [
        "(raylet) Raylet is terminated. Termination is unexpected.",
        "(raylet) Task _run_prefect_task failed. There are 3 retries remaining",
    ]


@pytest.mark.parametrize(
    ("runtime", "keeps_gpu_tag"),
    [
        ({"task_runner": "threads", "device": "cpu"}, False),  # no accelerator: no slot bookkeeping per task run
        ({"task_runner": "ray", "device": "cpu"}, True),  # Ray's runner reads the tag to ask for GPUs
    ],
)
def test_the_gpu_tag_stays_only_where_an_accelerator_may_be_used(runtime, keeps_gpu_tag):
    @task(tags=["gpu", "io"])
    def tagged() -> None:
        return None

    config = AuditConfig(runtime=RuntimeSection(**runtime))
    configured = with_runtime_retries(tagged, config)
    assert ("gpu" in configured.tags) is keeps_gpu_tag
    assert "io" in configured.tags
    assert configured.retries == config.runtime.retries
