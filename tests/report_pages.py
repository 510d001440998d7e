"""Reports built by hand for the report's tests: a synthetic run of any size (metrics shaped like a
run's, with XSS payloads in labels, attribute values and captions), and what a person checks when
the page opens in a real browser (the answer on the first screen, no console error, every section
opens, sort and filter work, a screenshot kept)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from browser import PageErrors
from PIL import Image

from counterfactual_lab.metrics.schema import METRICS_SCHEMA

PAYLOAD = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&"
ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "elderly"], f"race{PAYLOAD}": ["a", f"b{PAYLOAD}"]}
CONFIDENCE = 0.95
VIEWPORT = {"width": 1280, "height": 800}


def _row(metric: str, stratum: str, attribute: str, value: float | None, half: float | None, *, group=None, label=None,
         query=None, n: int = 48, comparisons: int | None = None, note: str | None = None, **ranking) -> dict[str, Any]:
    low = high = None
    if value is not None and half is not None:
        low, high = value - half, value + half
    row = {"metric": metric, "stratum": stratum, "attribute": attribute, "group": group, "label": label, "query": query,
           "value": value, "ci_low": low, "ci_high": high, "n": n, "n_sources": n // 2, "skipped_resamples": 0,
           "note": note, "ci_low_adjusted": None, "ci_high_adjusted": None, "confidence_adjusted": None,
           "comparisons": None, "protocol": None, "k": None, "desired": None}
    if comparisons is not None and value is not None:
        row.update(ci_low_adjusted=low - half, ci_high_adjusted=high + half, comparisons=comparisons,
                   confidence_adjusted=1 - (1 - CONFIDENCE) / comparisons)
    row.update(ranking)
    return row


def synthetic_metrics(labels: int, seed: int = 0, biased: str | None = "gender") -> pl.DataFrame:
    """A run's metrics table for ``labels`` labels over :data:`ATTRIBUTES` (one label carrying
    :data:`PAYLOAD`): pair metrics with their controls per transition and label, group metrics in two
    strata, retrieval skew per query. ``biased``: the attribute whose male→female flip rate and
    first label's signed gap are called. About 33 rows per label."""
    rng = np.random.default_rng(seed)
    names = [f"job{i}" for i in range(labels - 1)] + [f"nurse{PAYLOAD}"]
    transitions = {a: [f"{x}→{y}" for x, y in itertools.permutations(values, 2)] for a, values in ATTRIBUTES.items()}
    m = sum(len(t) + 1 for t in transitions.values()) * (1 + 2 * labels)
    rows = []
    for attribute, values in ATTRIBUTES.items():
        rows.append(_row("control_flip_rate", "generated", attribute, 0.06, 0.03, comparisons=m))
        for group in [None, *transitions[attribute]]:
            called = attribute == biased and group in (None, "male→female")
            rows.append(_row("flip_rate", "generated", attribute, 0.4 if called else float(rng.uniform(0.02, 0.1)), 0.04,
                             group=group, comparisons=m))
        for index, label in enumerate(names):
            rows.append(_row("control_prob_gap_abs", "generated", attribute, 0.03, 0.005, label=label, comparisons=m))
            rows.append(_row("control_prob_gap_signed", "generated", attribute, 0.0, 0.006, label=label, comparisons=m))
            for group in [None, *transitions[attribute]]:
                shift = 0.2 if attribute == biased and index == 0 and group == "male→female" else 0.0
                rows.append(_row("prob_gap_abs", "generated", attribute, float(rng.uniform(0.01, 0.04)) + shift, 0.006,
                                 group=group, label=label, comparisons=m))
                rows.append(_row("prob_gap_signed", "generated", attribute, float(rng.normal(0, 0.004)) - shift, 0.006,
                                 group=group, label=label, comparisons=m))
            for stratum in ("generated", "observational"):
                rows.append(_row("demographic_parity_difference", stratum, attribute, float(rng.uniform(0, 0.2)), 0.05,
                                 label=label))
                rows.append(_row("demographic_parity_ratio", stratum, attribute, None, None, label=label,
                                 note=f"no group is ever given '{label}' (0 / 0): the ratio is undefined"))
                rows.append(_row("equalized_odds_difference", stratum, attribute, float(rng.uniform(0, 0.2)), 0.05,
                                 label=label))
                for value in values:
                    rows.append(_row("selection_rate", stratum, attribute, float(rng.uniform(0, 1)), 0.1, group=value,
                                     label=label))
        for query in ("a photo of a doctor", f"a photo of a {PAYLOAD}"):
            desired = ", ".join(f"{v}={1 / len(values):.3g}" for v in values)
            for value in values:
                rows.append(_row("skew@10", "generated", attribute, float(rng.normal(0, 0.3)), 0.2, group=value, query=query,
                                 protocol="geyik", k=10, desired=f"uniform: {desired}"))
            rows.append(_row("ndkl", "generated", attribute, float(rng.uniform(0, 0.2)), None, query=query,
                             protocol="geyik", k=48, desired=f"uniform: {desired}"))
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def synthetic_tables(images: Path, sources: int = 12) -> dict[str, pl.DataFrame]:
    """Counterfactuals, predictions and quarantine of a small generated-vs-generated run whose
    captions carry :data:`PAYLOAD`; its images are written under ``images``."""
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    counterfactuals, predictions = [], []
    for s in range(sources):
        source = images / f"s{s}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(source)
        predictions.append({"id": f"s{s}", "source_id": f"s{s}", "variant": "original", "image_uri": str(source),
                            "top1": "job0", "score_job0": 0.6})
        for variant, target in (("reconstruction", "male"), ("counterfactual", "female")):
            path = images / f"s{s}-{variant}.png"
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
            counterfactuals.append({
                "source_id": f"s{s}", "set_id": f"set{s}", "variant": variant, "control": False, "attribute": "gender",
                "source_value": "male", "target_value": target, "method": "img2img", "seed": 0,
                "caption": f"a man {PAYLOAD}", "counterfactual_caption": f"a {target} {PAYLOAD}",
                "explanation": "man → woman", "image_uri": str(path), "source_image_uri": str(source),
                "text_similarity": 0.3, "direction_similarity": 0.2, "image_similarity": 0.8, "kept": s % 5 != 4,
                "drop_reason": None if s % 5 != 4 else f"text check failed {PAYLOAD}", "status": "kept"})
            flipped = variant == "counterfactual" and s % 2 == 0
            predictions.append({"id": f"{variant}-{s}", "source_id": f"s{s}", "variant": variant, "image_uri": str(path),
                                "top1": "job1" if flipped else "job0", "score_job0": 0.3 if flipped else 0.55})
    quarantine = pl.DataFrame({"id": ["q1"], "reason": [f"undecodable image {PAYLOAD}"], "detail": [PAYLOAD]})
    return {"counterfactuals": pl.DataFrame(counterfactuals), "predictions": pl.DataFrame(predictions),
            "quarantine": quarantine}


def synthetic_manifest(run_id: str = f"run-{PAYLOAD}", tiny: bool = True) -> dict[str, Any]:
    return {
        "run_id": run_id, "tiny_models": tiny, "finished_at": "2025-01-02T08:00:00+00:00",
        "dataset": {"name": f"sample{PAYLOAD}", "uri": "/data/sample", "fingerprint": "abc123"},
        "models": {"generator": {"model": "tiny-img2img", "revision": None}, "judge": {"model": "tiny-clip", "revision": None},
                   "audit": {"model": f"tiny-clip{PAYLOAD}", "revision": None}},
        "row_accounting": {"rows_in": 13, "valid": 12, "quarantined": 1, "planned": 24, "kept": 20, "dropped": 4, "failed": 0},
        "metrics": {"confidence": CONFIDENCE, "labels": ["job0", "job1"], "min_effect": {"probability": 0.01}},
        "config": {"audit": {"labels": ["job0", f"nurse{PAYLOAD}"]}},
        "versions": {"python": "3.11"},
    }


# --- in the browser --------------------------------------------------------------------------------


def inside_first_screen(box: dict[str, float] | None) -> bool:
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"]
            and box["y"] + box["height"] <= VIEWPORT["height"])


def open_report(chromium, path: Path, screenshot: Path) -> dict[str, Any]:
    """Open ``path`` at 1280 × 800 as a reader would and check it (module doc); returns what was measured.

    Fails on any console error, page error or dialog (an XSS payload that ran), and on any request
    that is not the file itself or a data URI."""
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = PageErrors()
    errors.watch(page)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(path.resolve().as_uri())
        load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        verdict = page.locator("#verdict").bounding_box()
        forest = page.locator("#forests svg").first.bounding_box()
        first_element = page.evaluate("document.body.firstElementChild.id")
        page.screenshot(path=str(screenshot))
        closed = page.locator("details:not([open])").count()
        for summary in page.locator("details > summary").all():
            summary.click()
        opened_one_by_one = page.evaluate("Array.from(document.querySelectorAll('details')).every(d => d.open)")
        page.click("#collapse-all")
        page.click("#expand-all")
        expanded = page.evaluate("Array.from(document.querySelectorAll('details')).every(d => d.open)")
        sorted_ok, filtered = _table_works(page)
        images = page.evaluate("Array.from(document.querySelectorAll('#examples img')).length")
        page.wait_for_timeout(100)  # a dialog or error from anything the expanded sections hold
    finally:
        context.close()
    outside = [url for url in requests if not url.startswith(("file:", "data:"))]
    return {"load_ms": load_ms, "verdict": verdict, "forest": forest, "first_element": first_element, "closed": closed,
            "opened_one_by_one": opened_one_by_one, "expanded": expanded, "sorted": sorted_ok, "filtered": filtered,
            "images": images, "errors": list(errors), "outside_requests": outside}


def _table_works(page) -> tuple[bool, tuple[str, str]]:
    """(sorting by value gives a monotone column, (the count line before, after filtering))."""
    columns = page.evaluate("JSON.parse(document.getElementById('metrics-data').textContent).columns")
    value = columns.index("value")
    page.click(f"#metrics-table th button[data-col='{value}']")
    cells = page.evaluate(f"Array.from(document.querySelectorAll('#metrics-table tbody tr')).map(r => r.children[{value}].textContent)")
    numbers = [float(c) for c in cells if c not in ("", "undefined")]
    before = page.locator("#metrics-count").inner_text()
    page.fill("#metrics-filter", "flip_rate")
    page.wait_for_function("t => document.getElementById('metrics-count').textContent !== t", arg=before)
    return numbers == sorted(numbers) and len(numbers) > 1, (before, page.locator("#metrics-count").inner_text())


def save_measurements(folder: Path, name: str, measured: dict[str, Any], size: int) -> None:
    """Keep what the browser measured beside the screenshot (a test artifact)."""
    (folder / f"{name}.json").write_text(json.dumps({**measured, "bytes": size}, indent=1, default=str))
