"""A run, or a folder of runs, as text for the terminal (``cflab report``): headline findings, the
row accounting and the generative probes' largest gaps."""

from __future__ import annotations

from typing import Any

import polars as pl

from counterfactual_lab.metrics.findings import REFERENCE_NONE
from counterfactual_lab.metrics.generative import is_probe_metric
from counterfactual_lab.metrics.schema import STRATUM_REAL_VS_GENERATED
from counterfactual_lab.report.designs import SECTION_TITLES, design_lines
from counterfactual_lab.report.findings import (
    assess_findings,
    headline_table,
    run_verdict_line,
    settings_of,
    table_cells,
    verdict_lines,
)
from counterfactual_lab.report.intersections import intersections_text
from counterfactual_lab.report.markdown import accounting_lines, models_line
from counterfactual_lab.report.modalities import modality_lines
from counterfactual_lab.report.review_summary import review_lines
from counterfactual_lab.report.sentences import REAL_VS_GENERATED_WARNING
from counterfactual_lab.report.terminal import printable
from counterfactual_lab.runs.failure import failure_banner
from counterfactual_lab.runs.publisher import MANIFEST_NAME
from counterfactual_lab.runs.reader import (
    STATUS_FAILED,
    STATUS_INCOMPLETE,
    RunListing,
    RunTables,
    list_runs,
    read_run,
)
from counterfactual_lab.storage.files import exists, join


def report_text(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """What ``cflab report URI`` prints: a run's headline, or the list of runs under an output root;
    without control characters (its strings come from files: :func:`~counterfactual_lab.report.terminal.printable`)."""
    uri = uri.rstrip("/")
    if not exists(join(uri, MANIFEST_NAME), storage_options):
        runs = list_runs(uri, storage_options)
        if runs:
            return printable(format_run_list(uri, runs))
    return printable(format_headline(read_run(uri, storage_options)))


def format_run_list(root_uri: str, runs: list[RunListing]) -> str:
    """Terminal text for ``cflab report OUT``: one aligned row per run, newest first, then what the states mean."""
    header = ["run id", "dataset", "finished at", "status", "report"]
    rows = []
    for run in runs:
        finished = run.finished_at or (f"- (last write {run.last_written})" if run.last_written else "-")
        rows.append([run.run_id, run.dataset or "-", finished, run.status, run.report_uri or "-"])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header) - 1)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]

    count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    lines = [f"{count} under {root_uri} (newest first):", "", line(header), *(line(r) for r in rows), ""]
    if any(r.status == STATUS_INCOMPLETE and not r.problem for r in runs):
        lines.append("incomplete: no manifest.json, so the run was interrupted or is still running "
                     "(`cflab audit` with the same config finishes it).")
    lines += [f"{r.run_id}: {r.problem}" for r in runs if r.problem]
    if any(r.status == STATUS_FAILED for r in runs):
        lines.append("failed: the run published what it had and marked itself failed; its report says why.")
    shown = next((r for r in runs if r.status != STATUS_INCOMPLETE), runs[0])
    lines.append(f"Headline of one run: cflab report {shown.run_uri}")
    return "\n".join(lines) + "\n"


def format_headline(run: RunTables, max_rows: int = 20) -> str:
    """Terminal text for ``cflab report``: run id, models, row accounting, the findings
(:func:`~counterfactual_lab.metrics.findings.assess_findings`: called ones first, each beside its
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
    lines += review_lines(manifest, run.metrics)
    if run.quarantine.height and "reason" in run.quarantine.columns:
        reasons = run.quarantine.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
        lines.append("Quarantined by reason: " + ", ".join(f"{r} {n}" for r, n in reasons.iter_rows()))
    lines.append("")
    if run.metrics.is_empty():
        lines.append("No metrics in this run.")
        return "\n".join(lines) + "\n"
    findings = assess_findings(run.metrics)
    lines.append("Headline findings:")
    lines.append(f"  {run_verdict_line(findings)}")
    lines += [f"  {line}" for line in verdict_lines(findings, *settings_of(manifest))]
    if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any():
        lines.append(f"  {REAL_VS_GENERATED_WARNING}")
    lines += [f"  - {sentence}" for sentence in findings["sentence"].head(8).to_list()]
    lines += _generative_lines(findings)
    lines += modality_lines(findings)
    lines += intersections_text(run.metrics, manifest)
    for key, section in design_lines(findings, run.metrics).items():
        lines += ["", f"{SECTION_TITLES[key]}:", *(f"  - {line}" for line in section)]
    lines.append("")
    lines.append(f"Headline metrics ({_confidence(manifest)} bootstrap interval):")
    table = headline_table(run.metrics)
    lines += _aligned_table(table[:max_rows])
    if len(table) > max_rows:
        lines.append(f"  ... {len(table) - max_rows} more rows in {join(run.run_uri, 'metrics.parquet')}")
    lines.append("")
    lines.append(f"Report: {run.report_uri}")
    return "\n".join(lines) + "\n"


def _generative_lines(findings: pl.DataFrame, per_prompt: int = 3) -> list[str]:
    """The gaps of a generative model's probes (yes/no, ratings, generations), per prompt: how many
    were compared and called, then the called ones' sentences (or, with none called, the largest)."""
    names = [m for m in findings["metric"].unique().to_list() if "_gap_" in m and is_probe_metric(m)]
    gaps = findings.filter(pl.col("metric").is_in(names) & (pl.col("reference") != REFERENCE_NONE))
    if gaps.is_empty():
        return []
    lines = ["", "Generative probes (each gap beside its control, called as above):"]
    for prompt in gaps["query"].unique(maintain_order=True).to_list():
        of_prompt = gaps.filter(pl.col("query") == prompt)
        called = of_prompt.filter(pl.col("called"))
        lines.append(f"  '{prompt}': {called.height} of {of_prompt.height} gap(s) called")
        shown = called if called.height else of_prompt.head(1)
        lines += [f"    - {sentence}" for sentence in shown["sentence"].head(per_prompt).to_list()]
    return lines


def _confidence(manifest: dict[str, Any]) -> str:
    """The run's interval level as '95%' (from the manifest's metric parameters or config)."""
    level = (manifest.get("metrics") or {}).get("confidence")
    if level is None:
        level = ((manifest.get("config") or {}).get("audit") or {}).get("confidence", 0.95)
    return f"{100 * float(level):g}%"


def _aligned_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["metric", "stratum", "attribute", "group", "label", "query", "modality", "value", "interval", "control",
              "called", "n"]
    # The modality column only where the run read pairs in more than the image (audit.modalities).
    modalities = any(row.get("modality") not in (None, "image") for row in rows)
    body = []
    for row in rows:
        cells = table_cells(row)
        values = [row["metric"], row["stratum"], row["attribute"], row["group"], row["label"], row["query"],
                  row.get("modality") if modalities else None,
                  cells["value"], cells["interval"], cells["control"], cells["called"], row["n"]]
        body.append(["" if c is None else str(c) for c in values])
    # Drop columns that are empty in every row (e.g. query for a run without retrieval metrics).
    keep = [i for i in range(len(header)) if any(r[i] for r in body)]
    widths = {i: max(len(header[i]), *(len(r[i]) for r in body)) for i in keep}
    out = ["  " + "  ".join(header[i].ljust(widths[i]) for i in keep).rstrip()]
    out += ["  " + "  ".join(r[i].ljust(widths[i]) for i in keep).rstrip() for r in body]
    return out
