"""What the report shows of a generative audit: gaps beside their controls, groups, the largest pairs.

Plain data for :func:`counterfactual_lab.report_html.generative_audit_section`, which only draws it.

* :func:`gaps_with_controls` — per prompt, every overall gap row (group null) of the probe
  metrics, with its control's value and interval beside it and whether the gap's interval clears
  the control's: above it for an absolute gap; for a signed gap above or below it *and* away
  from 0 (a control made at another seed can carry a shift of its own). Where the run has no
  control (evaluate-only, reconstruction off) the signed gap must exclude 0, and an absolute gap
  is not assessed (it is positive whenever anything varies).
* :func:`group_rows` — the per-group rows of some metrics (toxicity by group).
* :func:`largest_generation_gaps` — the counterfactual pairs whose generations differ most (in max
  toxicity, else in length), with both images and their texts, for the side-by-side examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from counterfactual_lab.auditees import metric_seam as seam
from counterfactual_lab.auditees.metrics import MAX_TOXICITY, VALUE, WORDS, generation_values, is_probe_metric

_GAP_SUFFIXES = ("_gap_abs", "_gap_signed")


def _is_gap(metric: str) -> bool:
    return metric.endswith(_GAP_SUFFIXES) and not metric.startswith(seam.CONTROL_PREFIX) and is_probe_metric(metric)


def _excludes(low: Any, high: Any, ref_low: Any, ref_high: Any, either: bool) -> bool:
    if None in (low, high, ref_low, ref_high):
        return False
    return low > ref_high or (either and high < ref_low)


def gaps_with_controls(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    """Overall gap rows of the probe metrics with their control beside them (module doc), by prompt."""
    if metrics.is_empty() or "stratum" not in metrics.columns:
        return []
    rows = metrics.to_dicts()
    controls = {(r["metric"], r["stratum"], r["attribute"], r["query"]): r for r in rows if str(r["metric"]).startswith(seam.CONTROL_PREFIX)}
    out = []
    for row in rows:
        metric = str(row["metric"])
        if not _is_gap(metric) or row["group"] is not None or row["stratum"] == seam.STRATUM_OBSERVATIONAL:
            continue
        signed = metric.endswith("_gap_signed")
        control = controls.get((seam.CONTROL_PREFIX + metric, row["stratum"], row["attribute"], row["query"]))
        assessed = row["value"] is not None
        if control is not None and control["value"] is not None:
            clears = _excludes(row["ci_low"], row["ci_high"], control["ci_low"], control["ci_high"], signed)
            if signed:
                clears = clears and _excludes(row["ci_low"], row["ci_high"], 0.0, 0.0, True)
        elif signed:
            clears = _excludes(row["ci_low"], row["ci_high"], 0.0, 0.0, True)
        else:
            clears, assessed = False, False
        out.append({**row, "control": control, "clears_control": bool(clears), "assessed": assessed})
    out.sort(key=lambda r: (str(r["query"]), str(r["metric"]), str(r["attribute"])))
    return out


def group_rows(metrics: pl.DataFrame, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-group rows (group not null) of the metrics ``names``, by prompt, stratum and attribute."""
    if metrics.is_empty():
        return []
    rows = metrics.filter(pl.col("metric").is_in(list(names)) & pl.col("group").is_not_null()).to_dicts()
    rows.sort(key=lambda r: (str(r["query"]), str(r.get("stratum")), str(r["attribute"]), str(r["metric"]), str(r["group"])))
    return rows


def largest_generation_gaps(predictions: pl.DataFrame, generations: pl.DataFrame, top: int = 6) -> list[dict[str, Any]]:
    """The ``top`` counterfactual pairs whose generations differ most, with images and texts.

    The difference is |Δ max toxicity| when the texts were scored for toxicity, else |Δ words|.
    Each item: attribute, prompt, transition, measure, from/to (group, image URI, value, texts).
    """
    if predictions.height == 0 or generations.height == 0:
        return []
    values = generation_values(generations, (), 0.5)
    family = MAX_TOXICITY if MAX_TOXICITY in values else WORDS
    if family not in values:
        return []
    per_image = values[family][0]
    pool = predictions.select("id", "source_id", "variant", "control", "attribute", "group", "set_id", "content_key", "image_uri")
    uris = dict(pool.select("content_key", "image_uri").unique(subset="content_key").iter_rows())
    texts = {
        key: [t for _, t in sorted(zip(group["sample"].to_list(), group["text"].to_list()))]
        for key, group in generations.group_by(["content_key", "prompt"])
    }
    candidates = []
    for (attribute,), rows in pool.group_by(["attribute"]):
        stratum = seam.comparison_stratum(rows)
        if stratum is None:
            continue
        for prompt in per_image["prompt"].unique(maintain_order=True).to_list():
            frame = rows.join(per_image.filter(pl.col("prompt") == prompt).select("content_key", pl.col(VALUE).alias("score_value")),
                              on="content_key", how="inner").with_columns(pl.lit("-").alias("top1"), pl.col("content_key").alias("score_key"))
            # The pair functions carry any score_<name> column to both sides: "key" brings the content keys along.
            pairs = seam.PAIRS[stratum](frame, [VALUE, "key"])
            for pair in pairs.to_dicts():
                delta = pair["score_value_to"] - pair["score_value_from"]
                candidates.append({
                    "attribute": attribute, "prompt": prompt, "transition": pair["transition"], "measure": family.name,
                    "delta": delta,
                    "from": {"group": pair["from_group"], "uri": uris.get(pair["score_key_from"]), "value": pair["score_value_from"],
                             "texts": texts.get((pair["score_key_from"], prompt), [])},
                    "to": {"group": pair["to_group"], "uri": uris.get(pair["score_key_to"]), "value": pair["score_value_to"],
                           "texts": texts.get((pair["score_key_to"], prompt), [])},
                })
    candidates.sort(key=lambda c: -abs(c["delta"]))
    return candidates[:top]
