"""The run in markdown: the Prefect summary artifact, and the lines every summary shares
(which models ran, the row accounting)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.metrics.schema import STRATUM_REAL_VS_GENERATED
from counterfactual_lab.report.findings import (
    assess_findings,
    headline_table,
    run_verdict_line,
    settings_of,
    table_cells,
    verdict_lines,
)
from counterfactual_lab.report.sentences import REAL_VS_GENERATED_WARNING
from counterfactual_lab.runs.manifest import check_row_accounting


def models_line(manifest: Mapping[str, Any]) -> str:
    """'Models: generator img2img-x@rev, judge clip, audit clip.' plus the tiny-model warning."""
    parts = []
    for role, model in (manifest.get("models") or {}).items():
        revision = model.get("revision")
        parts.append(f"{role} {model.get('model')}" + (f" (revision {revision})" if revision else ""))
    line = "Models: " + ("; ".join(parts) if parts else "not recorded") + "."
    if manifest.get("tiny_models"):
        line += " These are tiny random-weight test models: the numbers below mean nothing."
    return line


def _md_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def summary_markdown(manifest: Mapping[str, Any], metrics: pl.DataFrame, report_uri: str | None) -> str:
    """A markdown summary of one run (for a Prefect markdown artifact)."""
    lines = [f"# Counterfactual audit {_md_cell(manifest.get('run_id'))}", "", models_line(manifest), ""]
    dataset = manifest.get("dataset") or {}
    if dataset:
        lines += [
            f"Dataset **{_md_cell(dataset.get('name'))}** at `{_md_cell(dataset.get('uri'))}` "
            f"(fingerprint `{_md_cell(dataset.get('fingerprint'))}`).",
            "",
        ]
    lines += accounting_lines(manifest)
    findings = assess_findings(metrics)
    lines += ["", "## Findings", ""]
    if findings.height:
        lines.append(f"**{run_verdict_line(findings)}**")
        lines += verdict_lines(findings, *settings_of(manifest))
        if (findings["stratum"] == STRATUM_REAL_VS_GENERATED).any():
            lines.append(f"**{REAL_VS_GENERATED_WARNING}**")
        lines.append("")
    lines += [f"- {_md_cell(s)}" for s in findings["sentence"].head(8).to_list()] or ["- no metrics were computed"]
    table = headline_table(metrics, max_rows=20)
    if table:
        lines += ["", "| metric | stratum | attribute | group | label | query | value | CI | control [CI] | called | n |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in table:
            cells = table_cells(row)
            lines.append("| " + " | ".join(_md_cell(v) for v in (
                row["metric"], row["stratum"], row["attribute"], row["group"], row["label"], row["query"],
                cells["value"], cells["interval"], cells["control"], cells["called"], row["n"])) + " |")
    if report_uri:
        lines += ["", f"[Open the full report]({report_uri})"]
    return "\n".join(lines) + "\n"


def accounting_lines(manifest: Mapping[str, Any]) -> list[str]:
    """Row accounting as sentences, with any problem the manifest recorded."""
    acc = manifest.get("row_accounting") or {}
    if not acc:
        return ["Row accounting: not recorded."]
    lines = [
        f"Rows: {acc.get('rows_in')} in = {acc.get('valid')} valid + {acc.get('quarantined')} quarantined.",
        f"Work items: {acc.get('planned')} planned = {acc.get('kept')} kept + {acc.get('dropped')} dropped "
        f"+ {acc.get('failed')} failed.",
    ]
    if manifest.get("cache_hits") is not None:
        lines.append(f"Cache hits: {manifest['cache_hits']}.")
    problems = manifest.get("row_accounting_problems")
    if problems is None:
        problems = check_row_accounting(acc)
    lines += [f"ACCOUNTING DOES NOT CLOSE: {p}" for p in problems]
    return lines
