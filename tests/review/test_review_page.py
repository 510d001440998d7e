"""The review page in a real browser (headless Chromium): a reviewer labels a whole sample with the
keyboard alone, reloads half-way, the server is killed and started again, and every answer is in
``labels.parquet`` exactly once. Screenshots at laptop and phone sizes are kept as artifacts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
from browser import PageErrors, artifact_dir
from cli_runs import REPO
from reviewed_runs import members, publish_reviewable

pytestmark = pytest.mark.browser


class ReviewServer:
    """``cflab review RUN --reviewer ana --port 0`` in its own process group; ``address`` is what it printed."""

    def __init__(self, run_uri: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "counterfactual_lab.flows.cli", "review", run_uri, "--reviewer", "ana", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
        self.lines: list[str] = []
        found = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line)
                if line.startswith("review page: "):
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            self.kill()
            pytest.fail(f"cflab review printed no address: {self.process.stderr.read()}")
        self.address = next(line for line in self.lines if line.startswith("review page: ")).split(": ", 1)[1].strip()
        self.base = self.address.split("/?", 1)[0]

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)  # Ctrl-C
        return self.process.wait(20)


def progress(page) -> str:
    return page.locator("#progress").inner_text()


def wait_done(page, done: int, at: int | None = None, of: int | None = None) -> None:
    number = r"\d+"
    pattern = rf"set {number if at is None else at} of {number if of is None else of} · {done} done"
    page.wait_for_function("p => new RegExp(p).test(document.querySelector('#progress').textContent)", arg=pattern)


def answers_for(set_number: int, member_index: int) -> tuple[str, str]:
    """The keys a reviewer presses: most counterfactuals valid, some not (wrong target, a changed background)."""
    if set_number % 3 == 1:
        return "n", "0"
    if set_number % 4 == 2 and member_index == 0:
        return "y", "2"
    return "y", "0"


def label_set(page, set_number: int) -> list[tuple[str, str]]:
    """Answer every counterfactual of the set shown, with keys only; returns the answers given."""
    cards = page.locator("article.member")
    count = cards.count()
    assert page.locator(".reveal").count() == 0, "the judge is hidden before the set is answered"
    given = []
    order = list(range(count))
    if count > 1:  # go to the last counterfactual with Tab, answer it, come back with Shift+Tab
        for _ in range(count - 1):
            page.keyboard.press("Tab")
        order = [count - 1, *range(count - 1)]
    for i in order:
        if count > 1 and i == 0 and given:
            for _ in range(count - 1):
                page.keyboard.press("Shift+Tab")
        target, other = answers_for(set_number, i)
        page.keyboard.press(target)  # as fast as keys go: no waiting for the save between answers
        page.keyboard.press(other)
        given.append((cards.nth(i).get_attribute("data-member"), target, other))
    page.locator(".reveal.judge").nth(count - 1).wait_for()  # the captions and the judge, once the set is answered
    assert page.locator(".reveal.judge").count() == count and page.locator(".status.saved").count() == count
    return given


@pytest.mark.slow
def test_a_reviewer_labels_a_sample_with_the_keyboard_alone(chromium, tmp_path, tmp_path_factory):
    run_uri = publish_reviewable(tmp_path / "out")
    expected = set(members(run_uri))
    errors = PageErrors()
    shots = artifact_dir(tmp_path_factory)
    server = ReviewServer(run_uri)
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors.watch(page)
    try:
        assert page.request.get(f"{server.base}/?token=wrong").status == 403
        assert page.request.get(f"{server.base}/api/state").status == 403
        page.goto(server.address)
        assert page.url == f"{server.base}/review", "the token leaves the address bar"
        wait_done(page, 0, at=1, of=8)
        given = {}
        for number in (1, 2, 3):
            for member, target, other in label_set(page, number):
                given[member] = (target, other)
            page.keyboard.press("Enter")
        wait_done(page, 3, at=4)
        page.keyboard.press("y")  # half an answer, then a reload: it was never saved
        page.reload()
        wait_done(page, 3, at=4)
        assert page.locator("input[type=radio]:checked").count() == 0
        for member, target, other in label_set(page, 4):
            given[member] = (target, other)
        wait_done(page, 4, at=4)
        page.keyboard.press("u")  # undo: the last answer is taken back, the judge hidden again
        wait_done(page, 3, at=4)
        assert page.locator(".reveal").count() == 0
        for member, target, other in label_set(page, 4):
            given[member] = (target, other)
        page.screenshot(path=str(shots / "review-page-laptop.png"))
        page.keyboard.press("Enter")
        wait_done(page, 4, at=5)
        page.wait_for_load_state("networkidle")
        server.kill()  # every acknowledged answer is already in the file
        saved = pl.read_parquet(Path(run_uri) / "review" / "labels.parquet")
        assert saved.height == len(given) and set(saved["member"]) == set(given)
        context.close()

        server = ReviewServer(run_uri)
        phone = chromium.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        page = phone.new_page()
        page.set_default_timeout(15_000)
        errors.watch(page)
        page.goto(server.address)
        wait_done(page, 4, at=5, of=8)  # a restart continues where the reviewer left off
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling on a phone"
        for number in (5, 6, 7, 8):
            for member, target, other in label_set(page, number):
                given[member] = (target, other)
            if number == 5:
                page.screenshot(path=str(shots / "review-page-phone.png"), full_page=True)
            page.keyboard.press("Enter")
        wait_done(page, 8, at=8)
        page.wait_for_load_state("networkidle")
        phone.close()
        assert server.interrupt() == 0, "Ctrl-C stops the server cleanly"
        assert any("stopped; 9 answer(s) by ana" in line for line in server.lines), server.lines
    finally:
        if server.process.poll() is None:
            server.kill()
    print(f"screenshots: {shots / 'review-page-laptop.png'}, {shots / 'review-page-phone.png'}")

    labels = pl.read_parquet(Path(run_uri) / "review" / "labels.parquet")
    keys = list(zip(labels["set_id"], labels["member"]))
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected, "every answer once"
    assert set(labels["reviewer"]) == {"ana"}
    keys_of = {"y": "yes", "n": "no", "c": "cant_tell"}
    others = ["none", "other_attribute", "background", "identity", "unusable"]
    assert {m: (t, o) for m, t, o in labels.select("member", "target_shown", "other_change").rows()} == {
        m: (keys_of[t], others[int(o)]) for m, (t, o) in given.items()}
    assert errors == []
