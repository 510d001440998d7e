"""Pick the task runner from ``runtime`` in the audit config: threads or Ray.

``runtime.task_runner: threads`` runs fan-out on a thread pool of ``max_workers``.
``runtime.task_runner: ray`` runs it on prefect-ray's ``RayTaskRunner``: the cluster at
``runtime.ray_address`` (``ray://head:10001``, ``auto``), or a local Ray instance of
``max_workers`` CPUs when no address is given.

Why a Ray run needs a real Prefect server: every Ray worker runs its tasks with its own
Prefect client. Without ``PREFECT_API_URL`` each worker would start a private temporary
server, and task runs, caching records and events would be scattered over throwaway
databases. We refuse that combination with a message that says what to do rather than
starting a server ourselves: a server started by the flow would die with it, and workers
on other machines need an address they can reach, which only the operator knows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from counterfactual_lab.config import RuntimeConfig
from counterfactual_lab.errors import ConfigError

NO_API_URL = (
    "runtime.task_runner 'ray' needs a Prefect server that every Ray worker reports to, but "
    "PREFECT_API_URL is not set (Prefect would run on a temporary server, and each Ray worker "
    "would start its own). Start one with `prefect server start` and "
    "`export PREFECT_API_URL=http://<host>:4200/api`, or use runtime.task_runner 'threads'."
)
LOOPBACK_API_URL = (
    "runtime.ray_address {address!r} is a remote Ray cluster, but PREFECT_API_URL {api_url!r} "
    "points at this machine's loopback address, which Ray workers on other machines cannot "
    "reach. Set PREFECT_API_URL to an address of the Prefect server that the cluster can reach."
)
NO_GPU_IN_CLUSTER = (
    "runtime.device is 'cuda' but the Ray cluster reports no GPUs; start GPU workers "
    "(see infra/raycluster.yaml) or set runtime.device to 'auto' or 'cpu'."
)

# Offline defaults that Ray workers must share with the driver (see flows/settings.py).
_WORKER_ENV = ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _is_loopback_host(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_remote_ray_address(address: str | None) -> bool:
    if address in (None, "", "auto", "local"):
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname
    return not _is_loopback_host(host)


def check_ray_prefect_api(ray_address: str | None, api_url: str | None) -> str:
    """Return ``api_url`` if Ray workers can report to it; raise ConfigError otherwise.

    Refuses an unset URL (each worker would start a private temporary server) and a
    loopback URL when the Ray cluster is on other machines.
    """
    if not api_url:
        raise ConfigError(NO_API_URL)
    if _is_remote_ray_address(ray_address) and _is_loopback_host(urlparse(api_url).hostname):
        raise ConfigError(LOOPBACK_API_URL.format(address=ray_address, api_url=api_url))
    return api_url


def current_prefect_api_url() -> str | None:
    """The API URL Prefect uses now (environment, profile or temporary settings)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def make_task_runner(runtime: RuntimeConfig) -> TaskRunner[Any]:
    """The task runner ``runtime`` asks for, with its worker cap.

    Use it on the flow that fans out, e.g.
    ``audit_stages.with_options(task_runner=make_task_runner(config.runtime))(...)``.
    """
    if runtime.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
    if runtime.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        api_url = check_ray_prefect_api(runtime.ray_address, current_prefect_api_url())
        env_vars = {"PREFECT_API_URL": api_url}
        env_vars.update({k: os.environ[k] for k in _WORKER_ENV if k in os.environ})
        init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}}
        if not runtime.ray_address:
            # A local instance: cap it like the thread pool; no dashboard (nothing to serve).
            init_kwargs.update(num_cpus=runtime.max_workers, include_dashboard=False)
        return RayTaskRunner(address=runtime.ray_address, init_kwargs=init_kwargs)
    raise ConfigError(f"runtime.task_runner must be 'threads' or 'ray', got {runtime.task_runner!r}")


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster reports (0 when Ray is not running)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


@contextlib.contextmanager
def gpu_remote_options(runtime: RuntimeConfig, num_gpus: float = 1.0) -> Iterator[None]:
    """Around ``task.submit``/``task.map`` of GPU work (generation, evaluation batches):
    on Ray with GPUs in the cluster, each task asks Ray for ``num_gpus`` GPUs
    (``remote_options(num_gpus=...)``), so Ray places it on a GPU worker and never runs
    more batches at once than there are GPUs. Elsewhere it does nothing.
    """
    if runtime.task_runner != "ray" or runtime.device == "cpu":
        yield
        return
    available = cluster_gpus()
    if available <= 0:
        if runtime.device == "cuda":
            raise ConfigError(NO_GPU_IN_CLUSTER)
        yield
        return
    from prefect_ray.context import remote_options

    with remote_options(num_gpus=num_gpus):
        yield
