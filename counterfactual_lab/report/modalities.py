"""The report's view of ``audit.modalities``: which modality carries a gap.

:func:`modality_comparisons`: per transition and signed gap, the ``image``, ``text`` and ``both``
rows side by side (:mod:`counterfactual_lab.metrics.modalities`), with a sentence saying which
carries the gap (:func:`carrier_sentence`). The HTML report (:func:`modalities_view`, rendered by
``templates/_modalities.html.j2``) and
``cflab report`` (:func:`modality_lines`) both read them; the intersections have their own view
(:mod:`counterfactual_lab.report.intersections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from counterfactual_lab.evaluate.readings import MODALITIES, MODALITY_BOTH, MODALITY_IMAGE, MODALITY_TEXT
from counterfactual_lab.metrics.counterfactual_fairness import GAP_SIGNED_SUFFIX
from counterfactual_lab.metrics.findings import VERDICT_CONFOUNDED
from counterfactual_lab.report.sentences import MODALITY_WORDS, STRATUM_TITLES, number

_KEY = ("stratum", "attribute", "group", "metric", "label", "query")
# How many side-by-side rows the HTML report and the terminal show (called ones first).
SHOWN = 24


def _what(row: Mapping[str, Any]) -> str:
    """The gap's subject in a few words: "P('doctor')" or the probe's prompt."""
    if row.get("label"):
        return f"{row['metric']} '{row['label']}'"
    return f"{row['metric']} '{row['query']}'" if row.get("query") else row["metric"]


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "not measured"
    if row["value"] is None:
        return "undefined"
    interval = f" [{number(row['ci_low'])}, {number(row['ci_high'])}]" if row["ci_low"] is not None else ""
    verdict = "called" if row["called"] else ("confounded" if row["verdict"] == VERDICT_CONFOUNDED else row["verdict"])
    return f"{number(row['value'])}{interval} {verdict}"


def carrier_sentence(cells: Mapping[str, Mapping[str, Any] | None]) -> str:
    """Which modality carries the gap, from each modality's row (``called`` or not; None: not measured)."""
    called = {m for m, row in cells.items() if row is not None and row["called"]}
    measured = {m for m, row in cells.items() if row is not None and row["value"] is not None}
    if not called:
        confounded = [m for m, row in cells.items() if row is not None and row["verdict"] == VERDICT_CONFOUNDED]
        if confounded:
            return f"No modality carries a called gap ({', '.join(confounded)} confounded: the generator changed more)."
        return "No modality carries a called gap."
    if MODALITY_IMAGE in called and MODALITY_TEXT in called:
        return "The image and the text each carry the gap: the model moves with the pictured person and with the word."
    if MODALITY_TEXT in called:
        return ("The text carries the gap: the same image with another {person} word moves the answer"
                + (", the image alone does not." if MODALITY_IMAGE in measured else "."))
    if MODALITY_IMAGE in called:
        return ("The image carries the gap: the pictured person moves the answer"
                + (", the word alone does not." if MODALITY_TEXT in measured else "."))
    return "Only the image and the text changed together carry the gap; neither alone does."


def modality_comparisons(findings: pl.DataFrame) -> list[dict[str, Any]]:
    """Per (stratum, attribute, transition, signed gap), the rows of every modality measured, when the
    run measured more than one: ``{key…, "cells": {modality: row}, "sentence", "called"}``, called first."""
    if findings.is_empty() or "modality" not in findings.columns:
        return []
    rows = findings.filter(pl.col("metric").str.ends_with(GAP_SIGNED_SUFFIX) & pl.col("group").is_not_null()
                           & ~pl.col("diagnostic").fill_null(False) & pl.col("modality").is_not_null())
    if "phrasing" in rows.columns:  # the rows pooled over the phrasings (one phrasing's: the designs section)
        rows = rows.filter(pl.col("phrasing").is_null())
    if rows["modality"].n_unique() < 2:
        return []
    grouped: dict[tuple, dict[str, Any]] = {}
    for row in rows.to_dicts():
        key = tuple(row[c] for c in _KEY)
        entry = grouped.setdefault(key, {**dict(zip(_KEY, key)), "cells": {}})
        entry["cells"][row["modality"]] = row
    out = []
    for entry in grouped.values():
        cells = {m: entry["cells"].get(m) for m in MODALITIES if m in set(rows["modality"])}
        entry.update(cells=cells, sentence=carrier_sentence(cells),
                     called=any(r is not None and r["called"] for r in cells.values()))
        out.append(entry)
    out.sort(key=lambda e: (not e["called"], str(e["stratum"]), str(e["attribute"]), str(e["group"]), e["metric"],
                            str(e["label"]), str(e["query"])))
    return out


def _line(entry: Mapping[str, Any]) -> str:
    cells = "; ".join(f"{m} {_cell(row)}" for m, row in entry["cells"].items())
    return f"{entry['attribute']} {entry['group']}, {_what(entry)}: {cells}. {entry['sentence']}"


def modality_lines(findings: pl.DataFrame, shown: int = SHOWN) -> list[str]:
    """The terminal's lines (``cflab report``): the modalities side by side (none for a run of one)."""
    lines: list[str] = []
    entries = modality_comparisons(findings)
    if entries:
        lines += ["", "Which modality carries the gap (image: the counterfactual image, the source's {person} word; "
                      "text: the reconstruction, the target's word; both):"]
        lines += [f"  - {_line(e)}" for e in entries[:shown]]
        if len(entries) > shown:
            lines.append(f"  ... {len(entries) - shown} more transitions in metrics.parquet (column modality)")
    return lines


def modalities_view(findings: pl.DataFrame, shown: int = SHOWN) -> dict[str, Any] | None:
    """Plain data for the HTML section (None for a run of one modality): ``columns`` (the modalities
    measured), ``rows`` (``stratum``, ``transition``, ``gap``, ``cells`` — one text per column — and
    ``sentence``), ``more`` (rows not shown), ``words`` (what each modality changed)."""
    entries = modality_comparisons(findings)
    if not entries:
        return None
    columns = [m for m in MODALITIES if any(m in e["cells"] for e in entries)]
    rows = [{"stratum": STRATUM_TITLES.get(e["stratum"], e["stratum"]), "transition": f"{e['attribute']} {e['group']}",
             "gap": _what(e), "cells": [_cell(e["cells"].get(m)) for m in columns], "sentence": e["sentence"]}
            for e in entries[:shown]]
    words = "; ".join(f"{m}: {MODALITY_WORDS[m]}" for m in (MODALITY_IMAGE, MODALITY_TEXT, MODALITY_BOTH))
    return {"columns": columns, "rows": rows, "more": len(entries) - len(rows), "words": words}

