"""What the report shows of a generative audit: gaps beside their controls, groups, the largest pairs.

Plain data for :func:`counterfactual_lab.report.generative.generative_audit_section`, which only draws it.

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
from counterfactual_lab.report.examples import ImageInliner
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.markup import escaped, interval_text
from counterfactual_lab.report.sentences import number

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


def generative_audit_section(
    metrics: pl.DataFrame,
    predictions: pl.DataFrame | None,
    probes: pl.DataFrame | None,
    generations: pl.DataFrame | None,
    images: "ImageInliner",
    max_pairs: int = 6,
    manifest_config: Mapping[str, Any] | None = None,
    confidence: float = 0.95,
) -> str:
    """The generative probes: per prompt the headline gaps beside their controls (yes/no, ratings,
    toxicity, refusals, length, lexicon), toxicity by group, and the counterfactual pairs whose
    generations differ most, the two images with their texts side by side. Every prompt and
    generated text is model or user text and is escaped. Empty when the run has no generative probe."""

    if probes is None and generations is None:
        return ""
    metrics = metrics if metrics is not None else pl.DataFrame()
    parts = ["<h2>Generative model under audit</h2>",
             "<p>Each gap is the mean change of a probe's value from the reference image to its counterfactual "
             f"(|Δ| and signed Δ, {percent_level(confidence)} interval over source images), beside its control: the same change between two "
             "images of the same person and value at different seeds. A gap counts only where its interval clears "
             "the control's, at the family-wise level over the run's comparisons (the findings above).</p>"]
    choice_prompt = ((manifest_config or {}).get("audit") or {}).get("choice_prompt")
    if choice_prompt:
        parts.append(f"<p>The multiple-choice prompt ({escaped(choice_prompt)}) fills the label scores: its flip rate and "
                     "probability gaps are the headline findings and metrics above.</p>")
    gaps = gaps_with_controls(metrics)
    for prompt in dict.fromkeys(row["query"] for row in gaps):
        body = []
        for row in (r for r in gaps if r["query"] == prompt):
            control = row["control"]
            verdict = ("not assessed (no control)" if not row["assessed"] else
                       '<span class="problem">called</span>' if row["clears_control"] else
                       '<span class="problem">confounded</span>' if row.get("verdict") == "confounded" else
                       "undefined" if row.get("verdict") == "undefined" else
                       escaped(f"not called ({row.get('reason')})"))
            control_text = (f"{number(control['value'])} {interval_text(control)}" if control and control["value"] is not None
                            else (control or {}).get("note") or "none")
            body.append(
                f"<tr><td>{escaped(row['metric'])}</td><td>{escaped(row['attribute'])}</td><td>{escaped(row['stratum'])}</td>"
                f"<td>{escaped(number(row['value']) if row['value'] is not None else row.get('note'))} {escaped(interval_text(row))}</td>"
                f"<td>{escaped(control_text)}</td><td>{verdict}</td><td>{escaped(row['n'])}</td></tr>"
            )
        parts.append(
            f"<h3>Prompt: {escaped(prompt)}</h3><table><tr><th>metric</th><th>attribute</th><th>stratum</th><th>gap</th>"
            f"<th>control</th><th></th><th>n pairs</th></tr>{''.join(body)}</table>"
        )
    groups = group_rows(metrics, _GENERATION_GROUP_METRICS + ("yes_prob_mean", "rating_mean"))
    if groups:
        body = "".join(
            f"<tr><td>{escaped(r['query'])}</td><td>{escaped(r['metric'])}</td><td>{escaped(r.get('stratum'))}</td><td>{escaped(r['attribute'])}</td>"
            f"<td>{escaped(r['group'])}</td><td>{escaped(number(r['value']) if r['value'] is not None else r.get('note'))} "
            f"{escaped(interval_text(r))}</td><td>{escaped(r['n'])}</td></tr>"
            for r in groups
        )
        parts.append("<h3>By group: toxicity, refusals, length, yes/no and ratings</h3><table><tr><th>prompt</th><th>metric</th>"
                     f"<th>stratum</th><th>attribute</th><th>group</th><th>value</th><th>n</th></tr>{body}</table>")
    pairs = largest_generation_gaps(predictions if predictions is not None else pl.DataFrame(),
                                     generations if generations is not None else pl.DataFrame(), top=max_pairs)
    if pairs:
        parts.append("<h3>Largest differences between counterfactual generations</h3><div class=\"grid\">")
        for pair in pairs:
            cells = []
            for side in ("from", "to"):
                info = pair[side]
                texts = "".join(f"<blockquote>{escaped(text)}</blockquote>" for text in info["texts"])
                cells.append(f"<div>{images.tag(info['uri'], str(info['group']))}<br>{escaped(info['group'])}: "
                             f"{escaped(pair['measure'])} {escaped(number(info['value']))}{texts}</div>")
            parts.append(
                f'<figure class="pair"><div class="imgs">{"".join(cells)}</div><figcaption>'
                f"{escaped(pair['attribute'])} {escaped(pair['transition'])} · prompt: {escaped(pair['prompt'])} · "
                f"Δ {escaped(pair['measure'])} {escaped(number(pair['delta']))}</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts)
