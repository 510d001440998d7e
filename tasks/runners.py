"""Pick the task runner from ``runtime`` in the audit config: threads or Ray.

``runtime.task_runner: threads`` runs fan-out on a thread pool of ``max_workers``.
``runtime.task_runner: ray`` runs it on prefect-ray's ``RayTaskRunner``: the cluster at
``runtime.ray_address`` (``ray://head:10001``, ``auto``), or a local Ray instance of
``max_workers`` CPUs when no address is given. Ray is an optional extra
(``pip install 'counterfactual-lab[ray]'``): asking for it without the extra installed is a
one-line :class:`ConfigError` naming the extra (:func:`require_ray_extra`). On Ray, tasks tagged ``gpu`` ask Ray for
GPUs (``remote_options(num_gpus=...)``) when ``runtime.device`` is ``cuda``, or ``auto``
and the cluster has GPUs.

Ray 2.60 clusters use token authentication: every node, and every driver (``cflab``, the
Prefect worker), needs ``RAY_AUTH_MODE=token`` and the cluster's token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); a driver without them gets one line saying so
(:data:`RAY_AUTH_REFUSED`), not Ray's 30 s of retries ending in "Failed to connect".

Ray's own lines never reach the terminal's progress display: worker output stays in the
cluster's log files (``log_to_driver=False``; every task's records reach the Prefect UI through
its own API log handler), and what Ray's driver threads print about the cluster (a node lost, a
task retried) becomes one WARNING log line each (:class:`RayDriverOutput`), written above the bars.

Why a Ray run needs a real Prefect server: every Ray worker runs its tasks with its own
Prefect client. Without ``PREFECT_API_URL`` each worker would start a private temporary
server, and task runs, caching records and events would be scattered over throwaway
databases. We refuse that combination with a message that says what to do rather than
starting a server ourselves: a server started by the flow would die with it, and workers
on other machines need an address they can reach, which only the operator knows.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
import re
import sys
from typing import Any
from urllib.parse import urlparse

from prefect.settings import PREFECT_API_URL
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from counterfactual_lab.config.audit_config import AuditConfig, RuntimeSection
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.models.devices import resolve_device


class picklable_quote(quote):
    """Prefect's ``quote`` (do not walk this parameter looking for futures) that survives a pickle.

    Ray pickles every task parameter. ``quote`` is a one-element tuple subclass whose ``__new__``
    takes the value, so the tuple pickle protocol rebuilds it as ``quote((value,))``: the task
    would get ``(batch,)`` instead of ``batch`` (Prefect 3.9.1). Thread runs never pickle.
    """

    __slots__ = ()

    def __reduce__(self):
        return (type(self), (self.unwrap(),))


NO_API_URL = (
    "runtime.task_runner 'ray' needs a Prefect server that every Ray worker reports to, but "
    "PREFECT_API_URL is not set (Prefect would run on a temporary server, and each Ray worker "
    "would start its own). Start one with `prefect server start` and "
    "`export PREFECT_API_URL=http://<host>:4200/api`, or use runtime.task_runner 'threads'."
)
RAY_EXTRA_MISSING = (
    "runtime.task_runner 'ray' needs Ray, an optional extra that is not installed (no module {module!r}): "
    "pip install 'counterfactual-lab[ray]', or use runtime.task_runner 'threads'"
)
LOOPBACK_API_URL = (
    "runtime.ray_address {address!r} is a remote Ray cluster, but PREFECT_API_URL {api_url!r} "
    "points at this machine's loopback address, which Ray workers on other machines cannot "
    "reach. Set PREFECT_API_URL to an address of the Prefect server that the cluster can reach."
)

RAY_AUTH_REFUSED = (
    "cannot connect to the Ray cluster at runtime.ray_address {address!r} ({detail}); if it is running, "
    "it wants this client's token: Ray 2.60 clusters use token authentication, so set RAY_AUTH_MODE=token "
    "here and give the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
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

    return PREFECT_API_URL.value()


GPU_TAG = "gpu"


def _requests_gpus(runtime: RuntimeSection) -> bool | None:
    """True: GPU work asks Ray for GPUs; False: never; None: only if the cluster has GPUs."""
    if runtime.device == "cuda":
        # Asked for explicitly: request even when the cluster shows none yet, so an
        # autoscaling cluster (infra/raycluster.yaml, minReplicas 0) adds GPU workers.
        return True
    if runtime.device == "auto":
        return None
    return False


def require_ray_extra() -> None:
    """Raise :class:`ConfigError` naming the ``ray`` extra unless ray and prefect-ray import."""
    for module in ("ray", "prefect_ray"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(RAY_EXTRA_MISSING.format(module=module)) from None


def _ray_runner_class():
    require_ray_extra()
    # here, not at the top: it imports prefect_ray
    from prefect_ray import RayTaskRunner

    # here, not at the top: it imports prefect_ray
    from prefect_ray.context import RemoteOptionsContext, remote_options

    class GpuRayTaskRunner(RayTaskRunner):
        """prefect-ray's RayTaskRunner that gives every task tagged ``gpu`` its GPUs.

        Each submission of a ``gpu``-tagged task runs under
        ``remote_options(num_gpus=gpus_per_task)``, so Ray places it on a GPU worker and
        never runs more GPU batches at once than there are GPUs. Options already set by
        an enclosing ``remote_options`` block win.
        """

        def __init__(self, address=None, init_kwargs=None, gpus_per_task: float = 1.0, request_gpus: bool | None = None):
            super().__init__(address=address, init_kwargs=init_kwargs)
            self.gpus_per_task = gpus_per_task
            self.request_gpus = request_gpus
            self._cluster_gpus = 0.0

        def duplicate(self):
            return type(self)(self.address, self.init_kwargs, self.gpus_per_task, self.request_gpus)

        def __eq__(self, other: object) -> bool:
            return (
                super().__eq__(other)
                and getattr(other, "gpus_per_task", None) == self.gpus_per_task
                and getattr(other, "request_gpus", None) == self.request_gpus
            )

        def __enter__(self):
            self._driver_output = RayDriverOutput().start()
            try:
                entered = super().__enter__()
            except ConnectionError as exc:
                self._driver_output.stop()
                raise _connection_error(self.address, exc) from None
            except BaseException:
                self._driver_output.stop()
                raise
            self._cluster_gpus = cluster_gpus()
            return entered

        def __exit__(self, *exc_info):
            try:
                return super().__exit__(*exc_info)
            finally:
                self._driver_output.stop()

        def remote_options_for_task(self, task) -> dict[str, Any]:
            """The Ray options a submission of ``task`` gets (empty for CPU work)."""
            if GPU_TAG not in (task.tags or ()):
                return {}
            wanted = self.request_gpus if self.request_gpus is not None else self._cluster_gpus > 0
            return {"num_gpus": self.gpus_per_task} if wanted else {}

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            options = {**self.remote_options_for_task(task), **RemoteOptionsContext.get().current_remote_options}
            with remote_options(**options):
                return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    return GpuRayTaskRunner


def make_task_runner(runtime: RuntimeSection, gpus_per_task: float = 1.0) -> TaskRunner[Any]:
    """The task runner ``runtime`` asks for, with its worker cap.

    On Ray, tasks tagged ``gpu`` (generation, judge, evaluation batches) ask for
    ``gpus_per_task`` GPUs each when ``runtime.device`` is ``cuda``, or ``auto`` and the
    cluster has GPUs. Use it on the flow that fans out, e.g.
    ``audit_stages.with_options(task_runner=make_task_runner(config.runtime))(...)``.
    """
    if runtime.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
    if runtime.task_runner == "ray":
        require_ray_extra()  # first: nothing else about a Ray run matters until Ray is installed
        api_url = check_ray_prefect_api(runtime.ray_address, current_prefect_api_url())
        env_vars = {"PREFECT_API_URL": api_url}
        env_vars.update({k: os.environ[k] for k in _WORKER_ENV if k in os.environ})
        # Worker output stays in the cluster's log files (the Prefect UI has every task's records);
        # the "ray" logger's INFO lines ("Connecting to existing Ray cluster") stay off the console.
        init_kwargs: dict[str, Any] = {
            "runtime_env": {"env_vars": env_vars}, "log_to_driver": False, "logging_level": logging.WARNING,
        }
        if not runtime.ray_address:
            # A local instance: cap it like the thread pool; no dashboard (nothing to serve).
            init_kwargs.update(num_cpus=runtime.max_workers, include_dashboard=False)
        return _ray_runner_class()(
            address=runtime.ray_address, init_kwargs=init_kwargs,
            gpus_per_task=gpus_per_task, request_gpus=_requests_gpus(runtime),
        )
    raise ConfigError(f"runtime.task_runner must be 'threads' or 'ray', got {runtime.task_runner!r}")


def with_runtime_retries(task: Any, config: AuditConfig) -> Any:
    """``task`` with the config's retry count and backoff base (``runtime.retries``,
    ``runtime.retry_delay_seconds``); the transient-only condition and jitter stay.

    A ``gpu``-tagged task keeps its tag only where an accelerator may be used (a CUDA or MPS
    device, or Ray, whose runner asks for GPUs by the tag): there the tag's concurrency limit
    caps GPU work across flow runs. A CPU run on threads has no GPU to share, and each tagged
    task run costs 15–40 ms of concurrency-slot bookkeeping on 2 cores (bench/scale.py), so it drops it.
    """
    runtime = config.runtime
    options: dict[str, Any] = {
        "retries": runtime.retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=runtime.retry_delay_seconds),
    }
    if GPU_TAG in task.tags and not _may_use_accelerator(config):
        options["tags"] = set(task.tags) - {GPU_TAG}
    return task.with_options(**options)


def _may_use_accelerator(config: AuditConfig) -> bool:
    # resolve_device gives a torch.device, which never equals the string "cpu": compare its type.
    return config.runtime.task_runner == "ray" or resolve_device(config.runtime.device).type != "cpu"


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster reports (0 when Ray is not running)."""
    # here, not at the top: it imports ray
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def _connection_error(address: str | None, exc: BaseException) -> BaseException:
    """A one-line :class:`ConfigError` when a token problem is the likely cause, else ``exc``."""
    text = f"{exc} {exc.__cause__ or ''}"
    if "InvalidAuthToken" in text or "uthentication" in text or os.environ.get("RAY_AUTH_MODE") != "token":
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ConfigError(RAY_AUTH_REFUSED.format(address=address, detail=detail))
    return exc


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_LOGGER = "counterfactual_lab.ray"


class RayDriverOutput:
    """While a Ray run is on, what Ray's driver threads print to stdout becomes log records.

    ``log_to_driver=False`` keeps worker output away, but the driver's error listener
    (``ray._private.worker.listen_error_messages``) prints cluster events to ``sys.stdout`` whatever
    it is set to (a raylet that died: one line and a 20-line state dump; a task to be retried; a
    node marked dead). Ray looks ``sys.stdout`` up when it prints, so this object stands in for it
    while the runner is entered: each event's first line becomes one WARNING on
    ``counterfactual_lab.ray`` (the console handler writes it above the progress bars), its indented
    continuation lines DEBUG. stdout itself stays the command's result (``run:``, ``report:``).
    """

    def __init__(self) -> None:
        self._saved: Any = None
        self._pending = ""
        self._log = logging.getLogger(RAY_LOGGER)

    def start(self) -> "RayDriverOutput":
        self._saved, sys.stdout = sys.stdout, self
        return self

    def stop(self) -> None:
        if self._saved is not None and sys.stdout is self:
            self._flush_pending()
            sys.stdout, self._saved = self._saved, None

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if not line:
            return
        if line[0].isspace():
            self._log.debug("%s", line.strip())
        else:
            self._log.warning("%s", line)

    def _flush_pending(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = ""

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
