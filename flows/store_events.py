"""The store tells Prefect at once: a small HTTP receiver for S3 event notifications.

The watcher looks every ``watch.interval`` seconds (prefect.yaml). A store that sends event
notifications can say so at once instead: point its notifications at this receiver, which
emits one ``counterfactual-lab.store.changed`` Prefect event per Parquet object created or
removed, and the ``watch-datasets`` deployment is triggered by that event (prefect.yaml). The
watcher then does what it does on its schedule: list its prefixes, compare fingerprints with
its state, announce each new or changed dataset. Reusing the watcher keeps one place that
decides what a dataset is, what is new, and what lies outside the watched prefixes.

It accepts the bodies S3-compatible stores send:

* S3's notification JSON ``{"Records": [{"eventName", "s3": {"bucket": {"name"}, "object":
  {"key"}}}]}``, as MinIO's webhook target posts it and as SNS delivers it with raw message
  delivery;
* an SNS ``Notification`` envelope holding that JSON as its ``Message``; an SNS
  ``SubscriptionConfirmation`` is logged with its ``SubscribeURL``, for you to confirm;
* an EventBridge event (``"detail-type": "Object Created"``, an API destination).

Every request must carry the token of ``CFLAB_STORE_EVENTS_TOKEN``, as ``Authorization:
Bearer <token>`` (MinIO's ``auth_token``) or as the password of basic auth (an SNS endpoint
``https://cflab:<token>@host/``). The event is POSTed to the Prefect API (``PREFECT_API_URL``,
``PREFECT_API_AUTH_STRING``) before the receiver answers 200, so a store that retries failed
deliveries (MinIO with a ``queue_dir``, SNS) retries while Prefect is down.

    CFLAB_STORE_EVENTS_TOKEN=... python -m counterfactual_lab.flows.store_events --port 8787 --prefix s3://cflab/incoming
"""

from __future__ import annotations

# isort: off
# The package's offline Prefect defaults, before Prefect is imported.
import counterfactual_lab.flows  # noqa: F401
# isort: on

import argparse
import base64
import hmac
import json
import logging
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_plus

from prefect.client.orchestration import get_client
from prefect.events import Event
from prefect.settings import get_current_settings

STORE_CHANGED_EVENT = "counterfactual-lab.store.changed"
TOKEN_ENV = "CFLAB_STORE_EVENTS_TOKEN"
MAX_BODY_BYTES = 1 << 20  # S3 sends one record per notification; SNS caps messages at 256 KiB
DEFAULT_PORT = 8787

logger = logging.getLogger("cflab.store_events")


class BadNotification(ValueError):
    """A body that is not one of the notification formats this receiver reads."""


def _s3_records(body: dict) -> list[dict]:
    """``[{"event_name", "uri"}]`` of every S3 record in one notification body, any format."""
    if body.get("Type") == "Notification" and isinstance(body.get("Message"), str):  # SNS envelope
        try:
            return _s3_records(json.loads(body["Message"]))
        except ValueError:
            raise BadNotification("the SNS Message is not JSON") from None
    if body.get("source") == "aws.s3" and isinstance(body.get("detail"), dict):  # EventBridge
        detail = body["detail"]
        key = str(detail.get("object", {}).get("key", ""))  # EventBridge keys are not URL-encoded
        return [{"event_name": str(body.get("detail-type", "")), "uri": f"s3://{detail.get('bucket', {}).get('name')}/{key}"}]
    records = body.get("Records")
    if records is None:
        return []  # S3's s3:TestEvent and other bodies without records
    if not isinstance(records, list):
        raise BadNotification("'Records' is not a list")
    found = []
    for record in records:
        try:
            s3 = record["s3"]
            bucket, key = s3["bucket"]["name"], unquote_plus(s3["object"]["key"])  # S3 URL-encodes keys
        except (KeyError, TypeError):
            raise BadNotification("a record has no s3.bucket.name or s3.object.key") from None
        found.append({"event_name": str(record.get("eventName", "")), "uri": f"s3://{bucket}/{key}"})
    return found


def parquet_objects(body: dict, prefixes: list[str] | None = None) -> list[dict]:
    """The records of ``body`` that name a Parquet object (under one of ``prefixes`` when given);
    bookkeeping objects (a path part starting with ``_`` or ``.``) are left out, as the watcher does."""
    if not isinstance(body, dict):
        raise BadNotification("the body is not a JSON object")
    wanted = []
    for record in _s3_records(body):
        uri = record["uri"]
        parts = uri.removeprefix("s3://").split("/")[1:]
        if not uri.endswith(".parquet") or any(p.startswith(("_", ".")) for p in parts):
            continue
        if prefixes and not any(uri == p or uri.startswith(p.rstrip("/") + "/") for p in prefixes):
            continue
        wanted.append(record)
    return wanted


def store_changed_event(record: dict) -> Event:
    """The Prefect event for one stored object: resource ``s3://bucket/key``."""
    uri = record["uri"]
    return Event(
        event=STORE_CHANGED_EVENT,
        resource={"prefect.resource.id": uri, "prefect.resource.name": uri.rsplit("/", 1)[-1]},
        payload={"object_uri": uri, "store_event": record["event_name"]},
    )


def send_events(events: list[Event]) -> None:
    """POST ``events`` to the Prefect API and wait for its answer (an error raises)."""
    if not events:
        return
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])
        response.raise_for_status()


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (Bearer, or basic auth's password)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            password = base64.b64decode(value.strip()).decode().partition(":")[2]
        except ValueError:
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def make_handler(token: str, prefixes: list[str] | None = None, send=send_events) -> type[BaseHTTPRequestHandler]:
    """The request handler class: POST a notification, GET/HEAD for a health check."""

    class StoreEventsHandler(BaseHTTPRequestHandler):
        server_version = "cflab-store-events"

        def _answer(self, status: int, body: dict | None = None) -> None:
            payload = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(200, {"ok": True})

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            if not authorized(self.headers.get("Authorization"), token):
                self._answer(401, {"error": f"missing or wrong token ({TOKEN_ENV})"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if isinstance(body, dict) and body.get("Type") == "SubscriptionConfirmation":
                    logger.warning("SNS asks to confirm a subscription: open %s (or `aws sns confirm-subscription`)",
                                   body.get("SubscribeURL"))
                    self._answer(200, {"forwarded": 0})
                    return
                records = parquet_objects(body, prefixes)
            except (ValueError, BadNotification) as exc:
                self._answer(400, {"error": f"not an S3 event notification: {exc}"})
                return
            try:
                send([store_changed_event(r) for r in records])
            except Exception as exc:  # noqa: BLE001 - the store retries on a 5xx; the reason goes to the log
                logger.error("could not send %d event(s) to Prefect: %s", len(records), exc)
                self._answer(503, {"error": "the Prefect API did not accept the event"})
                return
            for record in records:
                logger.info("%s %s -> %s", record["event_name"], record["uri"], STORE_CHANGED_EVENT)
            self._answer(200, {"forwarded": len(records)})

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            logger.debug(format, *args)

    return StoreEventsHandler


def build_server(host: str, port: int, token: str, prefixes: list[str] | None = None, send=send_events) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(token, prefixes, send))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m counterfactual_lab.flows.store_events",
        description=f"Receive S3 event notifications and emit {STORE_CHANGED_EVENT} Prefect events, "
        "which start the watch-datasets deployment at once.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--prefix", action="append", metavar="S3_URI",
                        help="forward only objects under this prefix (repeatable; default: every Parquet object)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"store_events: error: set {TOKEN_ENV} to a long random string; the store sends it as "
              "`Authorization: Bearer <token>` (MinIO: auth_token) or as basic auth's password (SNS)", file=sys.stderr)
        return 2
    if not get_current_settings().api.url:
        print("store_events: error: set PREFECT_API_URL to the Prefect server the deployments are on "
              "(and PREFECT_API_AUTH_STRING if it asks for one)", file=sys.stderr)
        return 2
    server = build_server(args.host, args.port, token, args.prefix)
    logger.info("listening on http://%s:%d/ for S3 event notifications", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
