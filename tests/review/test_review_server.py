"""The review server without a browser (Starlette's test client): the token and its cookie, the
judge hidden until a set is answered (enforced by the server), answers checked, undo, headers."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest
from reviewed_runs import publish_reviewable
from starlette.testclient import TestClient

from counterfactual_lab.review.labels import LabelStore
from counterfactual_lab.review.sample import stratified_sample
from counterfactual_lab.review.server import RESTARTED, ReviewSession, allowed_hosts_for, build_app, is_loopback
from counterfactual_lab.review.sets import review_sets
from counterfactual_lab.runs.reader import read_run

BASE = "http://127.0.0.1"


@pytest.fixture
def session(tmp_path) -> ReviewSession:
    run = read_run(publish_reviewable(tmp_path / "out"))
    sample = stratified_sample(review_sets(run.counterfactuals), size=8, seed=0)
    return ReviewSession(run_id=run.run_id, reviewer="ana", sample=sample, store=LabelStore(run.run_uri))


def signed_in(session: ReviewSession) -> TestClient:
    client = TestClient(build_app(session), base_url=BASE, follow_redirects=False)
    response = client.get(f"/?token={session.token}")
    assert response.status_code == 303 and response.headers["location"] == "/review"
    assert "httponly" in response.headers["set-cookie"].lower() and "samesite=strict" in response.headers["set-cookie"].lower()
    return client


def test_nothing_is_served_without_the_printed_token(session):
    client = TestClient(build_app(session), base_url=BASE, follow_redirects=False)
    for path in ("/", "/?token=wrong", "/review", "/api/state", "/static/review.js", "/img/i0"):
        response = client.get(path)
        assert response.status_code == 403, path
    assert client.get("/api/state").json()["error"] == RESTARTED
    assert client.post("/api/label", json={}).status_code == 403
    assert client.get("/favicon.ico").status_code == 204
    other = ReviewSession(run_id=session.run_id, reviewer="ana", sample=session.sample, store=session.store)
    assert signed_in(other).get("/api/state").status_code == 200
    stale = signed_in(other).cookies  # another start of the server: its cookie opens nothing here
    assert TestClient(build_app(session), base_url=BASE, cookies=stale).get("/api/state").status_code == 403


def test_the_page_and_its_files_are_served_with_a_strict_policy(session):
    client = signed_in(session)
    page = client.get("/review")
    assert page.status_code == 200 and '<script src="/static/review.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert client.get("/static/review.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../labels.py").status_code == 404
    first = client.get("/img/i0")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert client.get("/img/..%2Fmanifest.json").status_code == 404, "images by the server's keys only"
    assert TestClient(build_app(session), base_url="http://evil.example").get("/").status_code == 400


def test_the_judge_is_hidden_until_every_counterfactual_of_the_set_is_answered(session):
    client = signed_in(session)
    state = client.get("/api/state").json()
    text = str(state)
    assert "caption" not in text and "kept" not in text and "drop_reason" not in text and "similarity" not in text
    several = next(s for s in state["sets"] if len(s["members"]) == 2)
    first, second = (m["member"] for m in several["members"])
    assert client.get(f"/api/reveal/{several['set_id']}").status_code == 409
    saved = client.post("/api/label", json={"set_id": several["set_id"], "member": first, "target_shown": "yes",
                                            "other_change": "none"})
    assert saved.json() == {"saved": True, "complete": False, "done": 0}
    assert client.get(f"/api/reveal/{several['set_id']}").status_code == 409, "half a set reveals nothing"
    done = client.post("/api/label", json={"set_id": several["set_id"], "member": second, "target_shown": "no",
                                           "other_change": "identity", "note": "another person"})
    assert done.json()["complete"] is True and done.json()["done"] == 1
    reveal = client.get(f"/api/reveal/{several['set_id']}").json()
    assert {m["member"] for m in reveal["members"]} == {first, second} and "judge_pass" in reveal["members"][0]
    assert client.get("/api/state").json()["answers"][several["set_id"]][second]["note"] == "another person"

    undone = client.post("/api/undo", json={}).json()
    assert undone["undone"] == {"set_id": several["set_id"], "member": second} and undone["done"] == 0
    assert client.get(f"/api/reveal/{several['set_id']}").status_code == 409, "undo hides the judge again"


def test_answers_are_checked_before_anything_is_written(session):
    client = signed_in(session)
    set_id = session.sample.set_ids[0]
    member = session.sample.sets[0].members[0].member
    bad = [({"set_id": set_id, "member": "nope", "target_shown": "yes", "other_change": "none"}, 404),
           ({"set_id": "nope", "member": member, "target_shown": "yes", "other_change": "none"}, 404),
           ({"set_id": set_id, "member": member, "target_shown": "maybe", "other_change": "none"}, 422),
           ({"set_id": set_id, "member": member, "target_shown": "yes", "other_change": "hair"}, 422)]
    for body, status in bad:
        assert client.post("/api/label", json=body).status_code == status, body
    assert client.post("/api/label", content="target_shown=yes",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
    assert session.store.read().is_empty()


def test_hosts_and_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert allowed_hosts_for("0.0.0.0") == ["*"] and "192.168.1.5" in allowed_hosts_for("192.168.1.5")


def test_the_page_files_are_package_data():
    """A non-editable install serves the page only if pyproject ships static/ (the package-data glob)."""
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "static/*" in project["tool"]["setuptools"]["package-data"]["counterfactual_lab.review"]
    shipped = {p.name for p in resources.files("counterfactual_lab.review").joinpath("static").iterdir()}
    assert {"review.html", "review.js", "review.css"} <= shipped
    assert "innerHTML" not in resources.files("counterfactual_lab.review").joinpath("static", "review.js").read_text(), \
        "the page writes text with textContent only"
