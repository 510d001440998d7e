"""Headline findings in plain words, from the metrics table.

One sentence per metric row, e.g. "gender male→female flips the top-1 label in 23% of pairs
[19%, 27%] (n=120)". The bracket is the bootstrap confidence interval from the metrics table.

Which rows make the headline: metrics are ranked by kind (the counterfactual flip rate first,
then parity, equalized odds, retrieval skew, probability gaps, counterfactual quality), and
within a kind by effect size. Findings are taken one per (kind, attribute) in turn, so one
kind or attribute with many groups cannot crowd out the others.

The metrics table has the columns ``metric, attribute, group, label, query, value, ci_low,
ci_high, n`` (``group``/``label``/``query`` may be null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import polars as pl

# (metric name prefix, how big an effect is) in headline order.
_KIND_ORDER = (
    "flip_rate",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "max_skew",
    "prob_gap_abs",
    "ndkl",
    "min_skew",
    "demographic_parity_ratio",
    "prob_gap_signed",
    "cits",
    "skew",
)

METRIC_COLUMNS = ("metric", "attribute", "group", "label", "query", "value", "ci_low", "ci_high", "n")


def metric_kind(metric: str) -> str:
    """``max_skew@10`` -> ``max_skew``; other names are their own kind."""
    return metric.split("@", 1)[0]


def metric_k(metric: str) -> str | None:
    """``max_skew@10`` -> ``"10"``; None when the name carries no K."""
    return metric.split("@", 1)[1] if "@" in metric else None


def _effect_size(row: Mapping[str, Any]) -> float:
    """How far a row is from 'no difference', for ranking (larger = more notable)."""
    value = row.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -math.inf
    kind = metric_kind(row["metric"])
    if kind == "demographic_parity_ratio":
        return 1.0 - value  # 1 is parity
    if kind == "cits":
        return -value  # low counterfactual quality is the notable case
    return abs(value)


def _rows(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    missing = [c for c in ("metric", "attribute", "value") if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; has {metrics.columns}")
    rows = metrics.to_dicts()
    for row in rows:
        for column in METRIC_COLUMNS:
            row.setdefault(column, None)
    return rows


def ranked_rows(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    """Metric rows in headline order.

    Rows are queued per (kind, attribute); queues are ordered by kind rank, then by their
    largest effect. Findings are drawn one per queue per round, largest effect first within
    a queue, so every attribute's worst flip rate comes before any second-best row.
    """
    queues: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in _rows(metrics):
        if _effect_size(row) == -math.inf:
            continue
        queues.setdefault((metric_kind(row["metric"]), str(row["attribute"])), []).append(row)
    for rows in queues.values():
        rows.sort(key=lambda r: (-_effect_size(r), str(r["group"]), str(r["label"]), str(r["query"])))

    def kind_rank(kind: str) -> int:
        return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)

    order = sorted(queues, key=lambda key: (kind_rank(key[0]), key[0], -_effect_size(queues[key][0]), key[1]))
    ranked: list[dict[str, Any]] = []
    depth = 0
    while any(depth < len(queues[key]) for key in order):
        ranked.extend(queues[key][depth] for key in order if depth < len(queues[key]))
        depth += 1
    return ranked


def percent(value: float | None) -> str:
    """0.234 -> '23%', 0.004 -> '0.4%'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scaled = value * 100
    if abs(scaled) >= 10 or scaled == round(scaled):
        return f"{scaled:.0f}%"
    return f"{scaled:.1f}%"


def points(value: float | None) -> str:
    """A difference of two shares in percentage points: 0.12 -> '12 percentage points'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a percentage points"
    return f"{percent(value).rstrip('%')} percentage points"


def number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def interval(row: Mapping[str, Any], fmt=number) -> str:
    """' [low, high]' or '' when the row has no interval."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


def _n(row: Mapping[str, Any]) -> str:
    return f" (n={row['n']})" if row.get("n") is not None else ""


def _n_inside(row: Mapping[str, Any]) -> str:
    return f", n={row['n']}" if row.get("n") is not None else ""


def _change(row: Mapping[str, Any]) -> str:
    """'gender male→female' or 'changing gender' when the row covers every direction."""
    return f"{row['attribute']} {row['group']}" if row.get("group") else f"changing {row['attribute']}"


def _label(row: Mapping[str, Any]) -> str:
    return f"'{row['label']}'" if row.get("label") else "the predicted label"


def finding_sentence(row: Mapping[str, Any]) -> str:
    """One metric row as a plain-words sentence with its interval and n."""
    kind, k = metric_kind(row["metric"]), metric_k(row["metric"])
    value, attribute = row["value"], row["attribute"]
    query = f"'{row['query']}'" if row.get("query") else "the retrieval query"
    top = f"top {k}" if k else "top results"
    if kind == "flip_rate":
        return f"{_change(row)} flips the top-1 label in {percent(value)} of pairs{interval(row, percent)}{_n(row)}"
    if kind == "prob_gap_abs":
        return (
            f"{_change(row)} moves P({_label(row)}) by {number(value)} on average"
            f"{interval(row)}{_n(row)}"
        )
    if kind == "prob_gap_signed":
        direction = "raises" if value >= 0 else "lowers"
        return (
            f"{_change(row)} {direction} P({_label(row)}) by {number(abs(value))} on average "
            f"(signed change {number(value)}{interval(row)}{_n_inside(row)})"
        )
    if kind == "demographic_parity_difference":
        subject = f"the share labelled {_label(row)}" if row.get("label") else "the share given each label"
        return (
            f"across {attribute} groups, {subject} differs by up to {points(value)} "
            f"(demographic parity difference {number(value)}{interval(row)}{_n_inside(row)})"
        )
    if kind == "demographic_parity_ratio":
        subject = f"labelled {_label(row)}" if row.get("label") else "given a label"
        return (
            f"the least-favoured {attribute} group is {subject} {number(value)}× as often as the most-favoured "
            f"(demographic parity ratio{interval(row)}{_n_inside(row)}; 1 is parity)"
        )
    if kind == "equalized_odds_difference":
        subject = f"for {_label(row)} " if row.get("label") else ""
        return (
            f"error rates {subject}differ across {attribute} groups by up to {points(value)} "
            f"(equalized odds difference {number(value)}{interval(row)}{_n_inside(row)})"
        )
    if kind == "max_skew":
        group = f" ({row['group']})" if row.get("group") else ""
        return (
            f"for {query}, the most over-represented {attribute} group{group} fills the {top} at "
            f"{number(math.exp(value))}× its share of the pool (MaxSkew {number(value)}{interval(row)}{_n_inside(row)})"
        )
    if kind == "min_skew":
        group = f" ({row['group']})" if row.get("group") else ""
        return (
            f"for {query}, the most under-represented {attribute} group{group} fills the {top} at "
            f"{number(math.exp(value))}× its share of the pool (MinSkew {number(value)}{interval(row)}{_n_inside(row)})"
        )
    if kind == "skew":
        group = f"{attribute} {row['group']}" if row.get("group") else f"each {attribute} group"
        return (
            f"for {query}, {group} fills the {top} at {number(math.exp(value))}× its share of the pool "
            f"(Skew {number(value)}{interval(row)}{_n_inside(row)})"
        )
    if kind == "ndkl":
        return (
            f"for {query}, the {attribute} mix of the {top} diverges from the pool by NDKL "
            f"{number(value)}{interval(row)} (0 = same mix as the pool{_n_inside(row)})"
        )
    if kind == "cits":
        return (
            f"{' '.join(str(p) for p in (attribute, row.get('group')) if p)} counterfactuals score {number(value)} on CITS, the project's counterfactual "
            f"image-text score{interval(row)}{_n(row)}"
        )
    extras = ", ".join(f"{c} {row[c]}" for c in ("group", "label", "query") if row.get(c))
    extras = f" ({extras})" if extras else ""
    return f"{row['metric']} for {attribute}{extras} is {number(value)}{interval(row)}{_n(row)}"


def headline_findings(metrics: pl.DataFrame, max_items: int = 8) -> list[str]:
    """Up to ``max_items`` plain-word sentences, the most notable first (see the module doc)."""
    if max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    return [finding_sentence(row) for row in ranked_rows(metrics)[:max_items]]


def headline_table(metrics: pl.DataFrame, max_rows: int | None = None) -> list[dict[str, Any]]:
    """Metric rows in headline order as JSON-safe dicts (NaN -> None), for a table artifact."""
    rows = ranked_rows(metrics)
    if max_rows is not None:
        rows = rows[:max_rows]
    table = []
    for row in rows:
        out = {c: row.get(c) for c in METRIC_COLUMNS}
        for column in ("value", "ci_low", "ci_high"):
            v = out[column]
            out[column] = None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), 4)
        table.append(out)
    return table


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
    lines += ["", "## Headline findings", ""]
    findings = headline_findings(metrics)
    lines += [f"- {_md_cell(f)}" for f in findings] or ["- no metrics were computed"]
    table = headline_table(metrics, max_rows=20)
    if table:
        lines += ["", "| metric | attribute | group | label | query | value | 95% CI | n |", "|---|---|---|---|---|---|---|---|"]
        for row in table:
            ci = f"[{number(row['ci_low'])}, {number(row['ci_high'])}]" if row["ci_low"] is not None else ""
            lines.append(
                "| "
                + " | ".join(
                    _md_cell(v)
                    for v in (row["metric"], row["attribute"], row["group"], row["label"], row["query"],
                              number(row["value"]), ci, row["n"])
                )
                + " |"
            )
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
        from counterfactual_lab.manifest import check_row_accounting

        problems = check_row_accounting(acc)
    lines += [f"ACCOUNTING DOES NOT CLOSE: {p}" for p in problems]
    return lines
