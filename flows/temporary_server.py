"""A temporary local Prefect API server for one ``cflab`` command, which never outlives it.

Prefect starts such a server by itself when ``PREFECT_API_URL`` is unset, but gives it 20 s
to come up (too little on a loaded laptop: "Timed out while attempting to connect to
ephemeral Prefect API server") and leaves it running as an orphan when its parent is killed
with ``kill -9``. This one:

* waits ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` for it (this project's default is
  :data:`flows.settings.STARTUP_TIMEOUT_SECONDS`; the environment overrides it);
* runs it in :mod:`flows.server_process`, which ends itself when its parent dies, by a
  parent-death signal on Linux and a watchdog everywhere;
* stops it on exit (``with TemporaryPrefectServer() as api_url: ...``).

Its output goes to a log file (``server_log``), named in the error when it fails to start.

:func:`prefect_api` is what ``cflab`` runs its flows inside: ``PREFECT_API_URL`` when set, else
such a server for the duration of the block. It lives here, not in the CLI, because the library
(``counterfactual_lab``, the CLI included) never imports Prefect.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, get_current_settings, temporary_settings

from counterfactual_lab.errors import UserError
from counterfactual_lab.flows.settings import STARTUP_TIMEOUT_SECONDS

HEALTH_POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
# The settings that name a server database outside PREFECT_HOME (Prefect reads either).
DATABASE_URL_VARIABLES = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def startup_timeout_seconds() -> float:
    """How long to wait for the server: Prefect's setting (our default applied by ``flows.settings``)."""

    raw = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(STARTUP_TIMEOUT_SECONDS))
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={raw!r} must be positive")
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryPrefectServer:
    """Start with :meth:`start` (or ``with``); :attr:`api_url` is then its ``PREFECT_API_URL``."""

    def __init__(self, timeout: float | None = None, prefect_home: Path | None = None) -> None:
        self.timeout = startup_timeout_seconds() if timeout is None else timeout
        # Where the server keeps its database (PREFECT_HOME/prefect.db); None: Prefect's default,
        # the user's own ~/.prefect, which `prefect server start` shows in its UI.
        self.prefect_home = prefect_home
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.server_log: Path | None = None
        self._log_handle = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> str:
        """Start the server and wait until it answers ``/api/health``; returns its API URL."""
        # here, not at the top: it imports httpx
        import httpx

        self.port = _free_port()
        handle, name = tempfile.mkstemp(prefix="cflab-prefect-server-", suffix=".log")
        self.server_log = Path(name)
        self._log_handle = os.fdopen(handle, "wb")
        env = {**os.environ}
        env.pop("PREFECT_API_URL", None)
        if self.prefect_home is not None:
            self.prefect_home.mkdir(parents=True, exist_ok=True)
            env["PREFECT_HOME"] = str(self.prefect_home)
            for name in DATABASE_URL_VARIABLES:  # a database named elsewhere is the user's, not this home's
                env.pop(name, None)
        # The child imports `flows` the same way this process did (a source checkout or the install).
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")] if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "counterfactual_lab.flows.server_process", str(self.port), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
        process = self.process
        deadline = time.monotonic() + self.timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    self.stop(keep_log=True)
                    raise UserError(
                        f"the temporary Prefect server exited with code {process.returncode} while starting; "
                        f"its log: {self.server_log} (or set PREFECT_API_URL to a running server)"
                    )
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return self.api_url
                except httpx.HTTPError:
                    pass
                time.sleep(HEALTH_POLL_SECONDS)
        self.stop(keep_log=True)
        raise UserError(
            f"the temporary Prefect server did not answer within {self.timeout:.0f} s; raise "
            f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to a running server "
            f"(server log: {self.server_log})"
        )

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period); idempotent. Its log is
        removed unless ``keep_log`` (a failed start names it in the error)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if not keep_log and self.server_log is not None:
            self.server_log.unlink(missing_ok=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def prefect_api(say: Callable[[str], None] = lambda message: None, prefect_home: Path | None = None) -> Iterator[str | None]:
    """The Prefect API to run flows on: ``PREFECT_API_URL`` when set, else a temporary local
    server for the duration of the block (it dies with this process, even on ``kill -9``).
    ``say`` reports the server's start to the user (``cflab`` prints it on stderr).

    ``prefect_home``: the temporary server and this process keep their Prefect state there
    (``cflab demo``: ``.cflab/prefect``), not in the user's ``PREFECT_HOME``, so its runs never
    appear in the user's own Prefect UI. A ``PREFECT_API_URL`` (environment or profile) wins.
    """

    if get_current_settings().api.url:
        yield get_current_settings().api.url
        return
    server = TemporaryPrefectServer(prefect_home=prefect_home)
    where = f", its state under {prefect_home}" if prefect_home is not None else ""
    say(f"starting a temporary Prefect server (up to {server.timeout:.0f} s{where}; "
        "set PREFECT_API_URL to use a running one) ...")
    started = time.monotonic()
    updates = {PREFECT_HOME: prefect_home} if prefect_home is not None else {}
    with server as api_url:
        say(f"Prefect server ready at {api_url} ({time.monotonic() - started:.0f} s)")
        with temporary_settings(updates={PREFECT_API_URL: api_url, **updates}):
            try:
                yield api_url
            finally:
                send_pending_logs_and_events()


def send_pending_logs_and_events(timeout: float = 10.0) -> None:
    """Let Prefect's background workers deliver queued logs and events while the server is
    still up (otherwise they try at exit and print "Error logging to API")."""

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)
