"""The watcher: announce each new or changed dataset with one Prefect event.

``watch_datasets`` lists the datasets under the watched prefixes, compares their
fingerprints with the state under ``OUT/_watch/state.json`` and emits
``counterfactual-lab.dataset.updated`` once per new or changed dataset. The
``audit-on-new-data`` deployment in prefect.yaml is triggered by that event and receives
the dataset URI (``event.resource.id``) as its ``dataset_uri`` parameter.
"""

from __future__ import annotations

# isort: off
# Loaded by file path as a deployment's entrypoint, so the package's offline Prefect defaults are
# applied here, before Prefect is imported.
import counterfactual_lab.flows  # noqa: F401
# isort: on

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.events.worker import EventsWorker

from counterfactual_lab.flows.secrets import load_secret_options, mask_secrets_in_logs
from counterfactual_lab.ingest.watch import (
    changed_datasets,
    check_output_outside_prefixes,
    record_seen,
    watch_state_uri,
)

DATASET_UPDATED_EVENT = "counterfactual-lab.dataset.updated"


class EventNotEmitted(RuntimeError):
    """Prefect did not accept the event; the dataset stays unseen and is announced next time."""


def announce_dataset(uri: str, fingerprint: str) -> None:
    """Emit one ``counterfactual-lab.dataset.updated`` event for ``uri`` and wait until
    Prefect's events worker has sent it.

    ``emit_event`` returns None when Prefect could not take the event (no API, events
    switched off); that is an error here, because the caller records the dataset as seen
    right after and a lost announcement would never be repeated.
    """
    event = emit_event(
        event=DATASET_UPDATED_EVENT,
        resource={"prefect.resource.id": uri, "prefect.resource.name": uri.rstrip("/").rsplit("/", 1)[-1]},
        payload={"fingerprint": fingerprint, "dataset_uri": uri},
    )
    if event is None:
        raise EventNotEmitted(
            f"Prefect did not accept the {DATASET_UPDATED_EVENT} event for {uri}; "
            "check that PREFECT_API_URL points at a running Prefect server"
        )
    # The worker sends in the background; wait for its queue so "emitted" means sent.
    EventsWorker.instance().wait_until_empty()


@flow(name="watch-datasets", persist_result=False)
def watch_datasets(
    prefixes: list[str], output_uri: str = "./out", storage_options_secret: str | None = None
) -> list[str]:
    """Announce every new or changed dataset under ``prefixes``; returns their URIs.

    A dataset whose fingerprint did not change emits nothing. The state is updated for a
    dataset only after its event was emitted, so a failure repeats an announcement on the
    next run instead of losing it. Relative local paths resolve against the working directory
    (a deployment's: the project folder on the worker). ``storage_options_secret`` names a
    Prefect Secret block of s3fs options (credentials) for the prefixes and the state; without
    it the worker's environment must hold them, and a run without any says which it needs.
    """
    logger = get_run_logger()
    check_output_outside_prefixes(output_uri, prefixes)
    options = (
        load_secret_options(storage_options_secret, "watch-datasets parameter storage_options_secret")
        if storage_options_secret else None
    )
    if options:
        mask_secrets_in_logs(options)
    state_uri = watch_state_uri(output_uri)
    changed = changed_datasets(prefixes, state_uri, options)
    for uri, fingerprint in changed:
        announce_dataset(uri, fingerprint)
        record_seen(state_uri, uri, fingerprint, options)
        logger.info("announced %s (fingerprint %s)", uri, fingerprint[:12])
    if not changed:
        logger.info("no new or changed datasets under %s", ", ".join(prefixes))
    return [uri for uri, _ in changed]
