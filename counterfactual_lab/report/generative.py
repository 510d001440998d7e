"""What the report shows of a generative audit: gaps beside their controls, groups, the largest pairs.

Plain data for :func:`generative_section`, which the report's template draws (``templates/_generative.html.j2``).

* :func:`gaps_with_controls` — per prompt, every overall gap row (group null) of the probe
  metrics, with its control beside it and the call of
  :func:`counterfactual_lab.metrics.findings.assess_findings` (the one decision every view shows: the
  family-wise interval above the control's for an absolute gap; for a signed gap above or below
  it *and* away from 0; without a control the signed gap must exclude 0 and an absolute gap is
  reported, not assessed).
* :func:`group_rows` — the per-group rows of some metrics (toxicity by group).
* :func:`largest_generation_gaps` — the counterfactual pairs whose generations differ most (in max
  toxicity, else in length), with both images and their texts, for the side-by-side examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.metrics.findings import REFERENCE_NONE, VERDICT_CALLED
from counterfactual_lab.metrics.generative import (
    MAX_TOXICITY,
    VALUE,
    WORDS,
    generation_values,
    is_probe_metric,
)
from counterfactual_lab.metrics.intervals import percent_level
from counterfactual_lab.metrics.pairs import PAIRS_BY_DESIGN
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, STRATUM_OBSERVATIONAL
from counterfactual_lab.metrics.strata import comparison_stratum
from counterfactual_lab.report.examples import ImageInliner, Thumbnail
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.sentences import number
from counterfactual_lab.report.templating import render_fragment

_GAP_SUFFIXES = ("_gap_abs", "_gap_signed")


def _is_gap(metric: str) -> bool:
    return metric.endswith(_GAP_SUFFIXES) and not metric.startswith(CONTROL_PREFIX) and is_probe_metric(metric)


def gaps_with_controls(metrics: pl.DataFrame) -> list[dict[str, Any]]:
    """Overall gap rows of the probe metrics, each as its assessed row (``assess_findings``'
    columns: value, interval, n, ``verdict``, ``called``, ``sentence``, …) plus ``control`` (the
    control's metrics row, or None), ``clears_control`` (= ``called``) and ``assessed`` (whether
    the row is compared with anything at all), by prompt, metric and attribute."""
    if metrics.is_empty() or "stratum" not in metrics.columns:
        return []
    names = [m for m in metrics["metric"].unique().to_list() if _is_gap(str(m))]
    if not names:
        return []
    controls = {(r["metric"], r["stratum"], r["attribute"], r["query"]): r
                for r in metrics.filter(pl.col("metric").str.starts_with(CONTROL_PREFIX)).to_dicts()
                if r.get("phrasing") is None}  # the pooled control (one phrasing's sits beside its own row)
    # The whole table is assessed, then filtered: a gap is decided beside its control and the
    # confound diagnostics of its transition (a confounded gap is not called).
    assessed = assess_findings(metrics).filter(pl.col("metric").is_in(names) & pl.col("group").is_null()
                                               & (pl.col("stratum") != STRATUM_OBSERVATIONAL) & pl.col("phrasing").is_null())
    out = []
    for row in assessed.to_dicts():
        control = controls.get((CONTROL_PREFIX + row["metric"], row["stratum"], row["attribute"], row["query"]))
        out.append({**row, "control": control, "clears_control": row["verdict"] == VERDICT_CALLED,
                    "assessed": row["reference"] != REFERENCE_NONE})
    out.sort(key=lambda r: (str(r["query"]), str(r["metric"]), str(r["attribute"])))
    return out


def group_rows(metrics: pl.DataFrame, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-group rows (group not null) of the metrics ``names``, by prompt, stratum and attribute."""
    if metrics.is_empty():
        return []
    chosen = metrics.filter(pl.col("metric").is_in(list(names)) & pl.col("group").is_not_null())
    if "phrasing" in chosen.columns:  # the rows pooled over the phrasings (one phrasing's: the metrics table)
        chosen = chosen.filter(pl.col("phrasing").is_null())
    rows = chosen.to_dicts()
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
        stratum = comparison_stratum(rows)
        if stratum is None:
            continue
        for prompt in per_image["prompt"].unique(maintain_order=True).to_list():
            frame = rows.join(per_image.filter(pl.col("prompt") == prompt).select("content_key", pl.col(VALUE).alias("score_value")),
                              on="content_key", how="inner").with_columns(pl.lit("-").alias("top1"), pl.col("content_key").alias("score_key"))
            # The pair functions carry any score_<name> column to both sides: "key" brings the content keys along.
            pairs = PAIRS_BY_DESIGN[stratum](frame, [VALUE, "key"])
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


_GENERATION_GROUP_METRICS = ("max_toxicity", "toxicity_rate", "refusal_rate", "generation_words", "unclear_rate", "sentiment_mean")


@dataclass(frozen=True)
class GapLine:
    """One probe gap beside its control, as text: the table row of its prompt."""

    metric: str
    attribute: str
    stratum: str
    gap: str
    control: str
    verdict: str
    notable: bool  # called or confounded: drawn as a problem
    n: str


@dataclass(frozen=True)
class GenerationPair:
    """One counterfactual pair whose generations differ most: both sides' image, value and texts."""

    attribute: str
    transition: str
    prompt: str
    measure: str
    delta: str
    sides: list[tuple[Thumbnail, str, list[str]]]  # (image, "group: measure value", texts)


@dataclass(frozen=True)
class GenerativeSection:
    """What the report shows of a generative model under audit (module doc)."""

    level: str
    choice_prompt: str | None
    prompts: list[tuple[str, list[GapLine]]]
    groups: list[list[str]]
    pairs: list[GenerationPair]


def _verdict(row: dict[str, Any]) -> tuple[str, bool]:
    if not row["assessed"]:
        return "not assessed (no control)", False
    if row["clears_control"]:
        return "called", True
    if row.get("verdict") == "confounded":
        return "confounded", True
    if row.get("verdict") == "undefined":
        return "undefined", False
    return f"not called ({row.get('reason')})" if row.get("reason") else "within its control", False


def interval_text(row: Mapping[str, Any] | None) -> str:
    """'[low, high]' of a metrics row, or '' without an interval."""
    if not row or row.get("ci_low") is None or row.get("ci_high") is None:
        return ""
    return f"[{number(row['ci_low'])}, {number(row['ci_high'])}]"


def _value_text(row: Mapping[str, Any]) -> str:
    value = number(row["value"]) if row.get("value") is not None else str(row.get("note") or "")
    return f"{value} {interval_text(row)}".strip()


def generative_section(
    metrics: pl.DataFrame,
    predictions: pl.DataFrame | None,
    probes: pl.DataFrame | None,
    generations: pl.DataFrame | None,
    images: ImageInliner,
    max_pairs: int = 6,
    manifest_config: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> GenerativeSection | None:
    """The generative probes: per prompt the headline gaps beside their controls (yes/no, ratings,
    toxicity, refusals, length, lexicon), toxicity by group, and the counterfactual pairs whose
    generations differ most, the two images with their texts side by side. None when the run has
    no generative probe. (Every prompt and generated text is model or user text: the template escapes it.)"""
    if probes is None and generations is None:
        return None
    metrics = metrics if metrics is not None else pl.DataFrame()
    gaps = gaps_with_controls(metrics)
    prompts = []
    for prompt in dict.fromkeys(row["query"] for row in gaps):
        lines = []
        for row in (r for r in gaps if r["query"] == prompt):
            control = row["control"]
            control_text = (f"{number(control['value'])} {interval_text(control)}".strip()
                            if control and control["value"] is not None else str((control or {}).get("note") or "none"))
            verdict, notable = _verdict(row)
            lines.append(GapLine(str(row["metric"]), str(row["attribute"]), str(row["stratum"]), _value_text(row),
                                 control_text, verdict, notable, "" if row["n"] is None else str(row["n"])))
        prompts.append((str(prompt), lines))
    groups = [[str(r["query"]), str(r["metric"]), str(r.get("stratum")), str(r["attribute"]), str(r["group"]),
               _value_text(r), "" if r["n"] is None else str(r["n"])]
              for r in group_rows(metrics, _GENERATION_GROUP_METRICS + ("yes_prob_mean", "rating_mean"))]
    pairs = []
    for pair in largest_generation_gaps(predictions if predictions is not None else pl.DataFrame(),
                                        generations if generations is not None else pl.DataFrame(), top=max_pairs):
        sides = [(images.thumbnail(pair[side]["uri"], str(pair[side]["group"])),
                  f"{pair[side]['group']}: {pair['measure']} {number(pair[side]['value'])}",
                  [str(t) for t in pair[side]["texts"]]) for side in ("from", "to")]
        pairs.append(GenerationPair(str(pair["attribute"]), str(pair["transition"]), str(pair["prompt"]),
                                    str(pair["measure"]), number(pair["delta"]), sides))
    choice_prompt = ((manifest_config or {}).get("audit") or {}).get("choice_prompt")
    return GenerativeSection(percent_level(confidence), choice_prompt, prompts, groups, pairs)


def generative_audit_section(metrics: pl.DataFrame, predictions: pl.DataFrame | None, probes: pl.DataFrame | None,
                             generations: pl.DataFrame | None, images: ImageInliner, max_pairs: int = 6,
                             manifest_config: Mapping[str, Any] | None = None, confidence: float = 0.95) -> str:
    """:func:`generative_section` as the report's HTML fragment ("" without a generative probe)."""
    section = generative_section(metrics, predictions, probes, generations, images, max_pairs, manifest_config, confidence)
    return "" if section is None else render_fragment("_generative.html.j2", generative=section)
