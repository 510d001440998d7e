"""flows/store_events.py: S3 event notifications in, one counterfactual-lab.store.changed event out."""

from __future__ import annotations

import base64
import json
import threading
import uuid

import httpx
import pytest

from counterfactual_lab.flows.store_events import (
    STORE_CHANGED_EVENT,
    BadNotification,
    build_server,
    main,
    parquet_objects,
)
from prefect_harness import read_events, wait_for


def s3_notification(*keys: str, bucket: str = "cflab", event: str = "s3:ObjectCreated:Put") -> dict:
    """The body S3 and MinIO's webhook target send (S3 URL-encodes keys: a space is '+')."""
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10}}} for key in keys]}


def test_reads_s3_minio_sns_and_eventbridge_bodies():
    body = s3_notification("incoming/batch+1/part-0.parquet")
    expected = [{"event_name": "s3:ObjectCreated:Put", "uri": "s3://cflab/incoming/batch 1/part-0.parquet"}]
    assert parquet_objects(body) == expected
    assert parquet_objects({"Type": "Notification", "Message": json.dumps(body)}) == expected
    bridge = {"source": "aws.s3", "detail-type": "Object Created",
              "detail": {"bucket": {"name": "cflab"}, "object": {"key": "incoming/batch 1/part-0.parquet"}}}
    assert [r["uri"] for r in parquet_objects(bridge)] == [expected[0]["uri"]]
    assert parquet_objects({"Service": "Amazon S3", "Event": "s3:TestEvent"}) == []  # S3's test message


def test_only_parquet_data_under_the_given_prefixes_is_forwarded():
    body = s3_notification("incoming/a/part-0.parquet", "incoming/a/README.md", "incoming/a/_temporary/x.parquet",
                           "out/run-1/metrics.parquet")
    assert [r["uri"] for r in parquet_objects(body)] == ["s3://cflab/incoming/a/part-0.parquet", "s3://cflab/out/run-1/metrics.parquet"]
    assert [r["uri"] for r in parquet_objects(body, ["s3://cflab/incoming"])] == ["s3://cflab/incoming/a/part-0.parquet"]
    with pytest.raises(BadNotification, match="s3.bucket.name"):
        parquet_objects({"Records": [{"eventName": "x"}]})


@pytest.fixture
def receiver():
    """The receiver on a free port, sending to a list instead of Prefect; yields (url, token, sent)."""
    sent: list = []
    token = "t0ken-" + "x" * 20
    server = build_server("127.0.0.1", 0, token, send=sent.extend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", token, sent
    finally:
        server.shutdown()
        server.server_close()


def test_the_receiver_wants_its_token_and_a_notification(receiver):
    url, token, sent = receiver
    body = s3_notification("incoming/a/part-0.parquet")
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, content=b"{not json", headers={"Authorization": f"Bearer {token}"}).status_code == 400
    assert sent == []
    # SNS's HTTP endpoints carry it as basic auth's password (https://cflab:<token>@host/).
    basic = base64.b64encode(f"cflab:{token}".encode()).decode()
    answer = httpx.post(url, json=body, headers={"Authorization": f"Basic {basic}"})
    assert answer.status_code == 200 and answer.json() == {"forwarded": 1}
    (event,) = sent
    assert event.event == STORE_CHANGED_EVENT and event.resource.id == "s3://cflab/incoming/a/part-0.parquet"
    assert httpx.get(url).status_code == 200  # a store's reachability check


def test_the_receiver_answers_503_when_prefect_does_not_take_the_event():
    """A store that retries failed deliveries then retries: nothing is lost while Prefect is down."""

    def refuse(events):
        raise ConnectionError("Prefect is down")

    server = build_server("127.0.0.1", 0, "tok", send=refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answer = httpx.post(f"http://127.0.0.1:{server.server_port}/", json=s3_notification("a/b.parquet"),
                            headers={"Authorization": "Bearer tok"})
        assert answer.status_code == 503
    finally:
        server.shutdown()
        server.server_close()


def test_the_receiver_refuses_to_start_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("CFLAB_STORE_EVENTS_TOKEN", raising=False)
    assert main(["--port", "0"]) == 2
    assert "CFLAB_STORE_EVENTS_TOKEN" in capsys.readouterr().err


@pytest.mark.prefect
def test_a_notification_becomes_a_prefect_event(prefect_server):
    token = "tok-prefect"
    server = build_server("127.0.0.1", 0, token)  # the real sender: POST /api/events
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = f"incoming/ds-{uuid.uuid4().hex[:8]}/part-0.parquet"
    try:
        answer = httpx.post(f"http://127.0.0.1:{server.server_port}/", json=s3_notification(key),
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        server.shutdown()
        server.server_close()
    (event,) = wait_for(lambda: read_events(STORE_CHANGED_EVENT, f"s3://cflab/{key}"), timeout=30, what="the stored event")
    assert event.payload == {"object_uri": f"s3://cflab/{key}", "store_event": "s3:ObjectCreated:Put"}
