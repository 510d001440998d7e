"""Prefect defaults for this project: no telemetry, nothing that needs the internet.

These are *defaults*: a value already in the environment (or a Prefect profile) wins.
Applied when the ``flows`` package is imported, before Prefect reads its settings; the
server side (``prefect server start``, docker-compose) sets the same variables itself.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS: dict[str, str] = {
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
