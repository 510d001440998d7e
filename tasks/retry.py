"""One retry policy for every task that touches storage or a GPU: transient errors only.

A bad row or a bad config fails the same way on every try, so retrying it only hides the
error for longer; a throttled S3 request or a dropped connection is worth another go.
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from counterfactual_lab.storage.files import is_transient

RETRIES = 3
RETRY_DELAY_SECONDS = exponential_backoff(backoff_factor=2)
RETRY_JITTER_FACTOR = 0.5


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry when the failure is a transient storage error."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 - we only classify it
        return is_transient(exc)
    return False


RETRY_OPTIONS: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAY_SECONDS,
    "retry_jitter_factor": RETRY_JITTER_FACTOR,
    "retry_condition_fn": retry_transient_only,
}
