"""How fast report.html renders and opens, and how big it is, as the audit grows.

For each size in ``--labels`` (labels of the synthetic run of tests/report_pages.py: about 54
metric rows a label, 185 labels = 10⁴ rows) and for each ``--run`` (a published run, e.g. the
demo's), render the report, open it in headless Chromium (Debian's /usr/bin/chromium through
Playwright, as the tests do) at 1280 × 800 and measure: render seconds, bytes, Chromium's
``loadEventEnd``, the page height collapsed and expanded, a sort click and a filter keystroke on
the metrics table. One JSON line at the end, with the load average at start and end (figures of
record need a quiet machine: load < 1)::

    python bench/report.py --labels 4 185 1850 --run out/sample-<id>
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic run and the browser flags the tests use

from browser import CHROMIUM, FLAGS  # noqa: E402
from report_pages import synthetic_manifest, synthetic_metrics, synthetic_tables  # noqa: E402

from counterfactual_lab.report.html import image_loader, render_report  # noqa: E402
from counterfactual_lab.runs.reader import read_run  # noqa: E402


def render_synthetic(labels: int, folder: Path) -> tuple[str, float, int]:
    metrics = synthetic_metrics(labels)
    tables = synthetic_tables(folder / "images")
    start = time.perf_counter()
    html = render_report(manifest=synthetic_manifest(), metrics=metrics, load_image=image_loader(), **tables)
    return html, time.perf_counter() - start, metrics.height


def render_run(uri: str) -> tuple[str, float, int]:
    run = read_run(uri)
    start = time.perf_counter()
    html = render_report(manifest=run.manifest, metrics=run.metrics, counterfactuals=run.counterfactuals,
                         predictions=run.predictions, quarantine=run.quarantine, probes=run.probes,
                         generations=run.generations, load_image=image_loader())
    return html, time.perf_counter() - start, run.metrics.height


def measure(browser, path: Path) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(path.as_uri())
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    collapsed = page.evaluate("document.documentElement.scrollHeight")
    page.click("#expand-all")
    expanded = page.evaluate("document.documentElement.scrollHeight")
    sort_ms = filter_ms = None
    if page.locator("#metrics-table th button").count():
        start = time.perf_counter()
        page.click("#metrics-table th button[data-col='6']")
        page.evaluate("new Promise(r => requestAnimationFrame(() => r()))")
        sort_ms = (time.perf_counter() - start) * 1000
        before = page.locator("#metrics-count").inner_text()
        start = time.perf_counter()
        page.fill("#metrics-filter", "flip_rate")
        page.wait_for_function("t => document.getElementById('metrics-count').textContent !== t", arg=before)
        filter_ms = (time.perf_counter() - start) * 1000 - 120  # less the filter's 120 ms debounce
    page.close()
    return {"load_ms": round(load_ms), "height_collapsed_px": collapsed, "height_expanded_px": expanded,
            "sort_ms": None if sort_ms is None else round(sort_ms), "filter_ms": None if filter_ms is None else round(filter_ms),
            "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="*", default=[4, 185], help="synthetic run sizes (labels)")
    parser.add_argument("--run", action="append", default=[], help="a published run folder to render too")
    args = parser.parse_args(argv)
    # here, not at the top: only the bench needs a browser
    from playwright.sync_api import sync_playwright

    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        cases = [(f"synthetic {n} labels", lambda n=n: render_synthetic(n, Path(tmp))) for n in args.labels]
        cases += [(uri, lambda uri=uri: render_run(uri)) for uri in args.run]
        for name, make in cases:
            html, seconds, rows = make()
            path = Path(tmp) / "report.html"
            path.write_text(html, encoding="utf-8")
            result = {"case": name, "metric_rows": rows, "render_s": round(seconds, 2), "bytes": len(html.encode()),
                      **measure(browser, path)}
            print(json.dumps(result), flush=True)
            results.append(result)
        browser.close()
    print(json.dumps({"bench": "report", "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
