"""The temporary Prefect API server's process: uvicorn serving Prefect's app, tied to its parent.

Started by :class:`flows.temporary_server.TemporaryPrefectServer` as
``python -m flows.server_process PORT PARENT_PID``. It must never outlive the ``cflab`` that
started it, not even after ``kill -9`` of ``cflab`` (which runs no clean-up code), so it
watches its parent two ways:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel signals this process the moment its
  parent dies;
* everywhere: a watchdog thread that polls ``os.getppid()`` each second and ends the process
  when the parent is gone (the process is then re-parented, so the parent pid changes).

The serving itself is what Prefect's own ``SubprocessASGIServer`` runs: its ASGI app factory
on 127.0.0.1 only, in ephemeral mode (no UI, the server's background services off).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PARENT_POLL_SECONDS = 1.0
# After SIGTERM, uvicorn gets this long to close the database before the process is killed.
SHUTDOWN_GRACE_SECONDS = 5.0


def die_with_parent(parent_pid: int) -> None:
    """Arrange for this process to end when ``parent_pid`` does (see the module docstring)."""
    if sys.platform.startswith("linux"):
        try:
            # Linux only: prctl
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    # The parent may have died before prctl took effect: then this process is already orphaned.
    if os.getppid() != parent_pid:
        os._exit(0)

    def watchdog() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(SHUTDOWN_GRACE_SECONDS)
                os._exit(1)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def main(argv: list[str]) -> None:
    port, parent_pid = int(argv[0]), int(argv[1])
    die_with_parent(parent_pid)
    os.environ.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")

    # here, not at the top: it imports uvicorn
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
