"""A real browser for the tests: Debian's headless Chromium driven by Playwright (never a browser
Playwright downloads). Without ``/usr/bin/chromium`` the browser tests skip with the install line,
except under ``CFLAB_REQUIRE_BROWSER=1`` (CI sets it), where they fail.

Chromium is started with no network beyond loopback: no DNS at all (it would look up Google's
update and account hosts at every start), so pages are opened at 127.0.0.1, never localhost.
Screenshots go to ``$CFLAB_TEST_ARTIFACTS`` (default: the session's pytest temp dir).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y --no-install-recommends chromium (Debian's package; .ci/run does it)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium (a Playwright ``Browser``) for one test module. Not for the session:
    while Playwright's sync API is open its event loop counts as running in the main thread, and
    Prefect's sync calls (``Secret(...).save(name)``) then return unawaited coroutines in every
    later test of that worker."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CFLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no {CHROMIUM}: {INSTALL}")
        pytest.skip(f"no {CHROMIUM}: {INSTALL}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        print(f"browser: Chromium {browser.version}")
        yield browser
        browser.close()


class PageErrors(list):
    """Console errors, uncaught exceptions and dialogs of a page (a dialog is dismissed: an XSS tripwire)."""

    def watch(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: (self.append(f"dialog: {d.message}"), d.dismiss()))


def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("CFLAB_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
