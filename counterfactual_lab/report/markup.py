"""What every part of the HTML report writes with: escaped text, intervals, key-value tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from counterfactual_lab.report.sentences import number


def escaped(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def interval_text(row: Mapping[str, Any] | None) -> str:
    if not row or row.get("ci_low") is None or row.get("ci_high") is None:
        return ""
    return f"[{number(row['ci_low'])}, {number(row['ci_high'])}]"


def key_value_table(rows: Sequence[tuple[Any, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escaped(k)}</th><td>{escaped(v)}</td></tr>" for k, v in rows) + "</table>"


def truncated(value: Any, limit: int = 200) -> Any:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
