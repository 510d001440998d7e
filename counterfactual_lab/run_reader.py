"""Read a published run back (local or ``s3://``) and summarise it for the terminal.

``cflab report RUN_URI`` is :func:`read_run` then :func:`format_headline`. A run without
``manifest.json`` is refused: its tables may be from an interrupted or unfinished publish.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.findings import (
    REAL_VS_GENERATED_WARNING,
    accounting_lines,
    assess_findings,
    headline_table,
    models_line,
    table_cells,
    verdict_lines,
)
from counterfactual_lab.metrics.schema import STRATUM_REAL_VS_GENERATED
from counterfactual_lab.publish import MANIFEST_NAME, REPORT_NAME, TABLE_NAMES
from counterfactual_lab.run_failure import failure_banner, is_failed
from counterfactual_lab.storage import exists, filesystem, join, read_bytes


@dataclass(frozen=True)
class RunTables:
    """The tables and manifest of one complete run. A table the run did not write is an empty frame."""

    run_uri: str
    manifest: dict[str, Any]
    counterfactuals: pl.DataFrame = field(default_factory=pl.DataFrame)
    predictions: pl.DataFrame = field(default_factory=pl.DataFrame)
    metrics: pl.DataFrame = field(default_factory=pl.DataFrame)
    quarantine: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.run_uri.rstrip("/").rsplit("/", 1)[-1]))

    @property
    def report_uri(self) -> str:
        return join(self.run_uri, REPORT_NAME)

    @property
    def failed(self) -> bool:
        """True for a finished run marked failed (too many failed work items): not an audit to rely on."""
        return is_failed(self.manifest)


def read_run(run_uri: str, storage_options: dict[str, Any] | None = None) -> RunTables:
    """The run at ``run_uri``; raises :class:`UserError` when it is missing, incomplete or damaged.

    Tables are read from the run directory itself (not the URIs recorded in the manifest), so a
    run copied elsewhere, e.g. from S3 to a laptop, still reads.
    """
    run_uri = run_uri.rstrip("/")
    manifest_uri = join(run_uri, MANIFEST_NAME)
    if not exists(manifest_uri, storage_options):
        if not _has_any_file(run_uri, storage_options):
            raise UserError(f"no run at {run_uri}: nothing there, and no manifest.json (check the URI)")
        raise UserError(
            f"run at {run_uri} is incomplete: no manifest.json (the run was interrupted or is still running)"
        )
    try:
        manifest = json.loads(read_bytes(manifest_uri, storage_options))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"run at {run_uri} has a damaged manifest.json: {exc}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"run at {run_uri} has a damaged manifest.json: expected an object")
    listed = manifest.get("tables") or {}
    frames: dict[str, pl.DataFrame] = {}
    for name in TABLE_NAMES:
        uri = join(run_uri, f"{name}.parquet")
        if not exists(uri, storage_options):
            if name in listed:
                raise UserError(f"run at {run_uri} lists table {name!r} in its manifest but {name}.parquet is missing")
            frames[name] = pl.DataFrame()
            continue
        try:
            frames[name] = pl.read_parquet(io.BytesIO(read_bytes(uri, storage_options)))
        except Exception as exc:  # polars raises several types for a damaged file
            raise UserError(f"run at {run_uri}: {name}.parquet is not readable Parquet ({exc})") from None
    return RunTables(run_uri=run_uri, manifest=manifest, **frames)


def _has_any_file(uri: str, storage_options: dict[str, Any] | None) -> bool:
    fs, path = filesystem(uri, storage_options)
    try:
        return bool(fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return False


def format_headline(run: RunTables, max_rows: int = 20) -> str:
    """Terminal text for ``cflab report``: run id, models, row accounting, the findings
(:func:`~counterfactual_lab.findings.assess_findings`: called ones first, each beside its
control) and the headline metrics with their intervals and controls."""
    manifest = run.manifest
    dataset = manifest.get("dataset") or {}
    lines = [
        f"run {run.run_id}  ({run.run_uri})",
        models_line(manifest),
    ]
    if run.failed:
        lines.insert(0, failure_banner(manifest))
    if dataset:
        lines.append(
            f"Dataset: {dataset.get('name')}  {dataset.get('uri')}  fingerprint {dataset.get('fingerprint')}"
        )
    if manifest.get("started_at") or manifest.get("finished_at"):
        lines.append(f"Ran {manifest.get('started_at')} -> {manifest.get('finished_at')}")
    lines += accounting_lines(manifest)
    if run.quarantine.height and "reason" in run.quarantine.columns:
        reasons = run.quarantine.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
        lines.append("Quarantined by reason: " + ", ".join(f"{r} {n}" for r, n in reasons.iter_rows()))
    lines.append("")
    if run.metrics.is_empty():
        lines.append("No metrics in this run.")
        return "\n".join(lines) + "\n"
    findings = assess_findings(run.metrics)
    called = int(findings["called"].sum())
    lines.append("Headline findings:")
    lines.append(f"  {called} difference(s) called (an interval that excludes its control's; docs/metrics.md)")
    lines += [f"  {line}" for line in verdict_lines(findings)]
    if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any():
        lines.append(f"  {REAL_VS_GENERATED_WARNING}")
    lines += [f"  - {sentence}" for sentence in findings["sentence"].head(8).to_list()]
    lines.append("")
    lines.append(f"Headline metrics ({_confidence(manifest)} bootstrap interval):")
    table = headline_table(run.metrics)
    lines += _aligned_table(table[:max_rows])
    if len(table) > max_rows:
        lines.append(f"  ... {len(table) - max_rows} more rows in {join(run.run_uri, 'metrics.parquet')}")
    lines.append("")
    lines.append(f"Report: {run.report_uri}")
    return "\n".join(lines) + "\n"


def _confidence(manifest: dict[str, Any]) -> str:
    """The run's interval level as '95%' (from the manifest's metric parameters or config)."""
    level = (manifest.get("metrics") or {}).get("confidence")
    if level is None:
        level = ((manifest.get("config") or {}).get("audit") or {}).get("confidence", 0.95)
    return f"{100 * float(level):g}%"


def _aligned_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["metric", "stratum", "attribute", "group", "label", "query", "value", "interval", "control", "called", "n"]
    body = []
    for row in rows:
        cells = table_cells(row)
        values = [row["metric"], row["stratum"], row["attribute"], row["group"], row["label"], row["query"],
                  cells["value"], cells["interval"], cells["control"], cells["called"], row["n"]]
        body.append(["" if c is None else str(c) for c in values])
    # Drop columns that are empty in every row (e.g. query for a run without retrieval metrics).
    keep = [i for i in range(len(header)) if any(r[i] for r in body)]
    widths = {i: max(len(header[i]), *(len(r[i]) for r in body)) for i in keep}
    out = ["  " + "  ".join(header[i].ljust(widths[i]) for i in keep).rstrip()]
    out += ["  " + "  ".join(r[i].ljust(widths[i]) for i in keep).rstrip() for r in body]
    return out
