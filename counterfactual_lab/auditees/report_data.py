"""What the report shows of a generative audit: gaps beside their controls, groups, the largest pairs.

Plain data for :func:`counterfactual_lab.report_html.generative_audit_section`, which only draws it.

* :func:`gaps_with_controls` — per prompt, every overall gap row (group null) of the probe
  metrics, with its control beside it and the call of
  :func:`counterfactual_lab.findings.assess_findings` (the one decision every view shows: the
  family-wise interval above the control's for an absolute gap; for a signed gap above or below
  it *and* away from 0; without a control the signed gap must exclude 0 and an absolute gap is
  reported, not assessed).
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
from counterfactual_lab.finding_sentences import REFERENCE_NONE, VERDICT_CALLED
from counterfactual_lab.findings import assess_findings

_GAP_SUFFIXES = ("_gap_abs", "_gap_signed")


def _is_gap(metric: str) -> bool:
    return metric.endswith(_GAP_SUFFIXES) and not metric.startswith(seam.CONTROL_PREFIX) and is_probe_metric(metric)


def gaps_with_controls(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    """Overall gap rows of the probe metrics, each as its assessed row (``assess_findings``'
    columns: value, interval, n, ``verdict``, ``called``, ``sentence``, …) plus ``control`` (the
    control's metrics row, or None), ``clears_control`` (= ``called``) and ``assessed`` (whether
    the row is compared with anything at all), by prompt, metric and attribute."""
    if metrics.is_empty() or "stratum" not in metrics.columns:
        return []
    names = [m for m in metrics["metric"].unique().to_list() if _is_gap(str(m))]
    gaps = metrics.filter(pl.col("metric").is_in(names) & pl.col("group").is_null()
                          & (pl.col("stratum") != seam.STRATUM_OBSERVATIONAL))
    if gaps.is_empty():
        return []
    controls = {(r["metric"], r["stratum"], r["attribute"], r["query"]): r
                for r in metrics.filter(pl.col("metric").str.starts_with(seam.CONTROL_PREFIX)).to_dicts()}
    # The controls are assessed beside their rows, so the assessment needs them in the table.
    assessed = assess_findings(pl.concat([gaps, metrics.filter(pl.col("metric").str.starts_with(seam.CONTROL_PREFIX))]))
    out = []
    for row in assessed.to_dicts():
        control = controls.get((seam.CONTROL_PREFIX + row["metric"], row["stratum"], row["attribute"], row["query"]))
        out.append({**row, "control": control, "clears_control": row["verdict"] == VERDICT_CALLED,
                    "assessed": row["reference"] != REFERENCE_NONE})
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
