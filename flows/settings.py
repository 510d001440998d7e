"""Prefect defaults for this project: no telemetry, nothing that needs the internet, and a
temporary server that has time to start on a loaded laptop.

These are *defaults*: a value already in the environment wins. Applied when the ``flows``
package is imported, before Prefect reads its settings. ``prefect server start`` run in the
repository root reads the same telemetry setting from ``[tool.prefect]`` in ``pyproject.toml``;
docker-compose and the Kubernetes manifests set the variables themselves.
"""

from __future__ import annotations

import os

# Prefect waits 20 s for its temporary server by default; on 2 busy cores the first start
# (database migrations included) took longer. Overridden by the environment variable.
STARTUP_TIMEOUT_SECONDS = 180

OFFLINE_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT_SECONDS),
    # Prefect server usage analytics (the server phones home otherwise).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Client-side SDK telemetry honours the DO_NOT_TRACK convention.
    "DO_NOT_TRACK": "1",
    # Prefect Cloud orchestration telemetry: off even if someone points us at Cloud.
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    # Hugging Face hub: no network here; fail fast instead of hanging on downloads.
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def apply_offline_defaults(environ: os._Environ[str] | dict[str, str] = os.environ) -> dict[str, str]:
    """Set each default that the environment does not already set; returns what was set."""
    applied = {}
    for key, value in OFFLINE_DEFAULTS.items():
        if key not in environ:
            environ[key] = value
            applied[key] = value
    return applied
