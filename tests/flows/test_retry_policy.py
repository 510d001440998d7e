"""The retry policy of every storage/GPU task (``tasks/retry.py``), on real Prefect task runs.

Tasks decorated with the production ``RETRY_OPTIONS`` run inside a flow against the session's
temporary Prefect server. Each counts its attempts itself, and the server's record of the task
run (``run_count``, its states of type RUNNING: "Running", then "Retrying") must agree: a transient storage error is retried and the
next attempt succeeds; a data error fails at once, exactly one attempt; a transient error that
never clears is given up after ``RETRIES`` retries.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from prefect import flow, task

from counterfactual_lab.errors import DatasetUnreadable, TransientStorageError
from counterfactual_lab.tasks.retry import RETRIES, RETRY_OPTIONS, retry_transient_only

pytestmark = pytest.mark.prefect

ATTEMPTS: Counter[str] = Counter()


@task(name="read-through-one-outage", persist_result=False, **RETRY_OPTIONS)
def read_through_one_outage(key: str) -> str:
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] == 1:
        raise TransientStorageError(f"image 's3://bucket/{key}' could not be read: SlowDown: reduce your request rate")
    return f"read {key}"


@task(name="read-bad-dataset", persist_result=False, **RETRY_OPTIONS)
def read_bad_dataset(key: str) -> str:
    ATTEMPTS[key] += 1
    raise DatasetUnreadable(f"dataset s3://bucket/{key} lacks required column(s) 'caption'")


@task(name="read-through-endless-outage", persist_result=False, **RETRY_OPTIONS)
def read_through_endless_outage(key: str) -> str:
    ATTEMPTS[key] += 1
    raise TimeoutError(f"s3://bucket/{key}: read timed out")


@flow(name="retry-policy-check")
def retry_policy_check(run: str) -> None:
    # return_state: the failures are the subject here, not a reason to stop the flow.
    read_through_one_outage(f"{run}/transient", return_state=True)
    read_bad_dataset(f"{run}/data-error", return_state=True)
    # Production backoff is 2, 4, 8 s: the count of retries is what is checked here, not the wait.
    read_through_endless_outage.with_options(retry_delay_seconds=0)(f"{run}/endless", return_state=True)


def test_the_policy_retries_only_transient_errors():
    assert RETRY_OPTIONS["retry_condition_fn"] is retry_transient_only and RETRY_OPTIONS["retries"] == RETRIES >= 1


def test_transient_errors_are_retried_and_data_errors_are_not(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run = uuid.uuid4().hex[:8]
    state = retry_policy_check(run, return_state=True)
    assert state.is_completed()

    # What the tasks counted themselves.
    assert ATTEMPTS[f"{run}/transient"] == 2  # failed once, retried, succeeded
    assert ATTEMPTS[f"{run}/data-error"] == 1  # never retried
    assert ATTEMPTS[f"{run}/endless"] == 1 + RETRIES  # retried RETRIES times, then given up

    # What the Prefect server recorded for the same task runs.
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        recorded = {
            r.name.rsplit("-", 1)[0]: (
                r.state.type.value,
                r.run_count,
                sum(s.type.value == "RUNNING" for s in client.read_task_run_states(r.id)),  # "Running", then "Retrying"
            )
            for r in runs
        }
    assert recorded == {
        "read-through-one-outage": ("COMPLETED", 2, 2),
        "read-bad-dataset": ("FAILED", 1, 1),
        "read-through-endless-outage": ("FAILED", 1 + RETRIES, 1 + RETRIES),
    }
