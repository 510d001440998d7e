"""Prefect flows: the audit, and the watcher that notices new data.

Importing this package applies the project's Prefect defaults (telemetry off) first.
"""

from counterfactual_lab.flows.settings import apply_offline_defaults

apply_offline_defaults()
