"""The runs of an output folder over time (``cflab compare --history OUT``, :func:`run_history`):
what a scheduled audit's reader asks, "what changed since last time".

For every complete run under ``OUT`` (oldest first; incomplete and failed runs are listed, not
charted), only its ``manifest.json`` and ``metrics.parquet`` are read. Each **series** is one
headline number per run: the run's verdict and how many findings it called, the judge's pass
rate (kept / planned), people's validity rate and the judge's agreement with people where the
run was reviewed, and every metric row called or confounded in any run (value and the interval
its call rests on). ``history.html`` draws each series against run order, the marker coloured by
that run's verdict of the row, with a dashed line wherever what makes runs comparable changed
(model under audit, generator, judge, dataset fingerprint, metric parameters): a trend across
such a line is not one trend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
from markupsafe import Markup

from counterfactual_lab.errors import UserError
from counterfactual_lab.metrics.findings import bias_verdict
from counterfactual_lab.metrics.schema import DEFAULT_MODALITY, ROW_KEY, metric_kind, missing, row_key
from counterfactual_lab.report.charts import CALLED, CONFOUNDED, TrendPoint, trend_svg
from counterfactual_lab.report.compare import MODEL_ROLES
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.forests import decision_interval, row_label
from counterfactual_lab.report.sentences import number, percent
from counterfactual_lab.report.templating import render, short_time
from counterfactual_lab.review.figures import HUMAN_VALIDITY_RATE, JUDGE_HUMAN_AGREEMENT
from counterfactual_lab.runs.reader import STATUS_COMPLETE, list_runs, read_run
from counterfactual_lab.storage.files import write_bytes_atomic

HISTORY_NAME = "history.html"
MAX_METRIC_SERIES = 12


@dataclass(frozen=True)
class HistoryRun:
    """One complete run: id, where, when, verdict, called count and its comparability key."""

    run_id: str
    run_uri: str
    finished: str
    verdict: str
    called: int
    comparable_as: str  # a digest of what makes runs comparable (a change draws a dashed line)


@dataclass(frozen=True)
class Series:
    """One headline number over the runs (None where a run has no value) and its chart."""

    name: str
    share: bool
    points: list[TrendPoint]
    svg: Markup


@dataclass(frozen=True)
class History:
    """What :func:`run_history` found: the runs, the series, where comparability breaks, what was skipped."""

    root: str
    runs: list[HistoryRun]
    series: list[Series]
    breaks: list[int]
    skipped: list[str]

    def text(self) -> str:
        """The terminal table: one line per run, then the comparability breaks and skipped runs."""
        lines = [f"{len(self.runs)} complete run(s) under {self.root}, oldest first:", ""]
        header = ["#", "run id", "finished", "verdict", "called", "judge pass rate"]
        rates = next((s for s in self.series if s.name == "judge pass rate"), None)
        rows = [[str(i + 1), r.run_id, r.finished, r.verdict, str(r.called),
                 percent(rates.points[i].value) if rates and rates.points[i].value is not None else "-"]
                for i, r in enumerate(self.runs)]
        widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))] if rows else []
        if rows:
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
            lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines += [f"Comparability changes before run #{i + 1} ({self.runs[i].run_id}): model, generator, judge, dataset "
                  "or metric parameters differ from the run before." for i in self.breaks]
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        return render("history.html.j2", title=f"History of {self.root}", history=self, value_text=value_text)

    def write(self, uri: str, storage_options: dict[str, Any] | None = None) -> str:
        write_bytes_atomic(uri, self.html().encode("utf-8"), storage_options)
        return uri


def comparability_key(manifest: Mapping[str, Any]) -> str:
    """A digest of the model identities, dataset fingerprint and metric parameters of a run."""
    identity = (manifest.get("run_identity") or {}).get("models") or {}
    models = {role: identity.get(role) or ((manifest.get("models") or {}).get(role) or {}).get("model") for role in MODEL_ROLES}
    key = {"models": models, "dataset": (manifest.get("dataset") or {}).get("fingerprint"), "metrics": manifest.get("metrics")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _review_value(metrics: pl.DataFrame, metric: str) -> dict[str, Any] | None:
    if metrics.is_empty() or "stratum" not in metrics.columns:
        return None
    rows = metrics.filter((pl.col("stratum") == "review") & (pl.col("metric") == metric) & pl.col("attribute").is_null()
                          & pl.col("label").is_null())
    return rows.row(0, named=True) if rows.height else None


def _point(tick: str, row: Mapping[str, Any] | None, emphasis: str = "") -> TrendPoint:
    if row is None or missing(row.get("value")):
        return TrendPoint(tick, None)
    low, high = decision_interval(row)
    return TrendPoint(tick, float(row["value"]), low, high, emphasis)


def _series(name: str, points: list[TrendPoint], breaks: list[int], share: bool) -> Series:
    return Series(name, share, points, trend_svg(points, breaks=breaks, share=share, salt=f"history|{name}"))


def run_history(out_uri: str, storage_options: dict[str, Any] | None = None) -> History:
    """The history of the runs under ``out_uri`` (module doc); raises :class:`UserError` when there are none."""
    listed = list_runs(out_uri, storage_options)
    if not listed:
        raise UserError(f"no runs under {out_uri}: give the output folder the audits write to (their output.uri)")
    complete = sorted((r for r in listed if r.status == STATUS_COMPLETE), key=lambda r: (r.finished_at or "", r.run_id))
    skipped = [f"{r.run_id} ({r.status}{': ' + r.problem if r.problem else ''})" for r in listed if r.status != STATUS_COMPLETE]
    runs, assessed, manifests = [], [], []
    for listing in complete:
        run = read_run(listing.run_uri, storage_options, tables=("metrics",))
        manifest, metrics = run.manifest, run.metrics
        findings = assess_findings(metrics)
        verdict = bias_verdict(metrics) if metrics.height else "undefined"
        runs.append(HistoryRun(listing.run_id, listing.run_uri, short_time(manifest.get("finished_at")) or "-", verdict,
                               int(findings["called"].sum()) if findings.height else 0, comparability_key(manifest)))
        assessed.append((metrics, findings))
        manifests.append(manifest)
    breaks = [i for i in range(1, len(runs)) if runs[i].comparable_as != runs[i - 1].comparable_as]
    ticks = [f"{i + 1}: {r.finished[:10]}" for i, r in enumerate(runs)]
    series = [_series("findings called", [TrendPoint(t, float(r.called), emphasis=CALLED if r.called else "")
                                          for t, r in zip(ticks, runs)], breaks, False)]
    rates = []
    for tick, manifest in zip(ticks, manifests):
        accounting = manifest.get("row_accounting") or {}
        planned, kept = accounting.get("planned"), accounting.get("kept")
        rates.append(TrendPoint(tick, kept / planned if isinstance(planned, int) and planned > 0 and isinstance(kept, int) else None))
    series.append(_series("judge pass rate", rates, breaks, True))
    for metric, name, share in ((HUMAN_VALIDITY_RATE, "people's validity rate", True),
                                (JUDGE_HUMAN_AGREEMENT, "judge vs people (Cohen's κ)", False)):
        points = [_point(tick, _review_value(metrics, metric)) for tick, (metrics, _) in zip(ticks, assessed)]
        if any(p.value is not None for p in points):
            series.append(_series(name, points, breaks, share))
    series += _notable_series(ticks, [f for _, f in assessed], breaks)
    return History(out_uri, runs, series, breaks, skipped)


def _notable_series(ticks: list[str], findings: list[pl.DataFrame], breaks: list[int]) -> list[Series]:
    """A series per metric row called or confounded in any run (those called most often first)."""
    # One phrasing's row and each measure of a row are rows of their own (issue 18), never merged.
    # So is each modality's (issue 18 part A): an image row and a text row of one metric (ROW_KEY).
    key = ROW_KEY
    counts: dict[tuple, int] = {}
    by_run: list[dict[tuple, dict[str, Any]]] = []
    for frame in findings:
        rows = {row_key(r, key): r for r in frame.to_dicts()} if frame.height else {}
        by_run.append(rows)
        for k, r in rows.items():
            if r["called"] or r.get("verdict") == CONFOUNDED:
                counts[k] = counts.get(k, 0) + 1
    chosen = sorted(counts, key=lambda k: (-counts[k], tuple(str(p) for p in k)))[:MAX_METRIC_SERIES]
    out = []
    for k in chosen:
        points = []
        for tick, rows in zip(ticks, by_run):
            row = rows.get(k)
            emphasis = "" if row is None else CALLED if row["called"] else CONFOUNDED if row.get("verdict") == CONFOUNDED else ""
            points.append(_point(tick, row, emphasis))
        example = next(rows[k] for rows in by_run if k in rows)
        kind = metric_kind(str(k[0]))
        name = f"{k[0]}: {row_label(example)}" + (f" · '{k[5]}'" if k[5] else "") + (f" · {k[7]}" if k[7] else "") \
            + (f" · {k[8]}" if k[8] != DEFAULT_MODALITY else "")
        out.append(_series(name, points, breaks, kind == "flip_rate"))
    return out


def value_text(point: TrendPoint, share: bool) -> str:
    """'23% [19%, 27%]' of a point ('-' without a value)."""
    if point.value is None:
        return "-"
    fmt = percent if share else number
    return fmt(point.value) + ("" if point.low is None else f" [{fmt(point.low)}, {fmt(point.high)}]")
