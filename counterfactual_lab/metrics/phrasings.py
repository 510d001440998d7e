"""Phrasing robustness: a probe asked in several phrasings, its rows per phrasing, pooled, and their spread.

A prompt of the config (``audit.prompt``, ``audit.choice_prompt``, a yes/no question, a rating or
generate prompt) may list other phrasings (``audit.phrasings``); every image is asked in each. The
size of a bias can change with the wording (FOCUS/REFLECT 2026), so every pair metric of such a
probe is measured

* **pooled** (``phrasing`` null): over every (pair, phrasing), its interval resampling source
  images and phrasings (:func:`~counterfactual_lab.metrics.intervals.crossed_mean_estimates`): the
  row that is compared and called, in the run's family;
* **per phrasing** (``phrasing`` = the phrasing as configured): the same metric on that phrasing's
  pairs alone, with its own control; descriptive (reported, outside the family: the pooled row
  already tests the probe, and testing each phrasing too would multiply m by K + 1);
* ``phrasing_spread`` (``measure`` = the metric, ``<metric>:<measure>`` for one that has a measure;
  ``phrasing`` null): max_k v_k − min_k v_k, the range
  of the per-phrasing values v_k of each pooled row; descriptive, no interval (a range over a
  handful of phrasings has no sampling distribution worth the name), never in the family.

A called pooled row is ``robust`` when every phrasing's gap has the same sign (a signed gap: v_k;
a row called above its control: v_k − c_k, c_k that phrasing's control), else
``phrasing-dependent`` (:mod:`counterfactual_lab.metrics.findings`, column ``robustness``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from counterfactual_lab.metrics.counterfactual_fairness import PHRASING
from counterfactual_lab.metrics.schema import CONTROL_PREFIX, DEFAULT_MODALITY, Estimate, metric_row

PHRASING_SPREAD = "phrasing_spread"
# The robustness of a called row (findings' ``robustness`` column).
ROBUST, PHRASING_DEPENDENT = "robust", "phrasing-dependent"


def phrasing_queries(audit: Any) -> dict[str, tuple[str, str]]:
    """Each phrasing of a configured prompt → (the prompt as configured: the rows' ``query``, the
    phrasing). A prompt without other phrasings is absent (its rows carry no phrasing)."""
    out: dict[str, tuple[str, str]] = {}
    for prompt, alternatives in (getattr(audit, "phrasings", None) or {}).items():
        for text in [prompt, *alternatives]:
            out[text] = (prompt, text)
    return out


def by_query(prompts: Sequence[str], audit: Any) -> dict[str, list[str]]:
    """The prompts as configured among ``prompts`` → their phrasings present, the configured one first
    (a prompt without other phrasings is its own one phrasing)."""
    known = phrasing_queries(audit)
    out: dict[str, list[str]] = {}
    for prompt in prompts:
        query, phrasing = known.get(prompt, (prompt, prompt))
        out.setdefault(query, []).append(phrasing)
    order = {text: i for i, text in enumerate(known)}
    return {query: sorted(texts, key=lambda t: order.get(t, -1)) for query, texts in out.items()}


def label_phrasings(audit: Any, prompt: str | None) -> list[str]:
    """The phrasings of a label prompt (``audit.prompt`` or ``audit.choice_prompt``), the configured one first."""
    if prompt is None:
        return []
    return [prompt, *((getattr(audit, "phrasings", None) or {}).get(prompt, []))]


def stack_phrasings(frames: Sequence[tuple[str, pl.DataFrame]]) -> pl.DataFrame:
    """Pair frames of each phrasing, one frame with a ``phrasing`` column (one phrasing: as it is)."""
    if len(frames) == 1:
        return frames[0][1]
    return pl.concat([frame.with_columns(pl.lit(text, dtype=pl.String).alias(PHRASING)) for text, frame in frames],
                     how="vertical_relaxed")


def phrasing_subsets(pairs: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """(phrasing, its pairs) of stacked pairs, in the order they were stacked; [] for one phrasing."""
    if PHRASING not in pairs.columns:
        return []
    return [(text, pairs.filter(pl.col(PHRASING) == text)) for text in pairs[PHRASING].unique(maintain_order=True).to_list()]


def first_phrasing(pairs: pl.DataFrame) -> pl.DataFrame:
    """The pairs of the configured phrasing alone (what a probe not measured per phrasing reads)."""
    subsets = phrasing_subsets(pairs)
    return subsets[0][1].drop(PHRASING) if subsets else pairs


def phrased_rows(make: Callable[[pl.DataFrame], list[dict[str, Any]]], pairs: pl.DataFrame,
                 with_spread: bool = True) -> list[dict[str, Any]]:
    """``make(pairs)`` pooled over the phrasings of stacked ``pairs``, then ``make`` on each phrasing's
    pairs (``phrasing`` set), then the ``phrasing_spread`` rows (module doc). One phrasing, or no pairs
    at all (the pooled rows say why): ``make(pairs)``."""
    rows = make(pairs)
    subsets = phrasing_subsets(pairs)
    if not subsets or pairs.height == 0:
        return rows
    per_phrasing = []
    for text, subset in subsets:
        for row in make(subset.drop(PHRASING)):
            row["phrasing"] = text
            per_phrasing.append(row)
    return rows + per_phrasing + (spread_rows(rows, per_phrasing) if with_spread else [])


def _key(row: Mapping[str, Any]) -> tuple:
    return (row["metric"], row["stratum"], row["attribute"], row.get("group"), row.get("label"), row.get("query"),
            row.get("measure"), row.get("modality") or DEFAULT_MODALITY)


def spread_rows(pooled: Sequence[Mapping[str, Any]], per_phrasing: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One ``phrasing_spread`` row per pooled non-control row: the range of its per-phrasing values."""
    by_key: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in per_phrasing:
        by_key.setdefault(_key(row), []).append(row)
    out = []
    for row in pooled:
        if row["metric"].startswith(CONTROL_PREFIX) or row["metric"] == PHRASING_SPREAD:
            continue
        members = by_key.get(_key(row), [])
        if not members:
            continue
        values = [m["value"] for m in members]
        if any(v is None for v in values):
            missing = [m["phrasing"] for m in members if m["value"] is None]
            estimate = Estimate.undefined(f"no value in phrasing(s) {missing}", n=row["n"], n_sources=row["n_sources"])
        else:
            low = min(members, key=lambda m: m["value"])
            high = max(members, key=lambda m: m["value"])
            estimate = Estimate(high["value"] - low["value"], n=row["n"], n_sources=row["n_sources"], method=None,
                                note=f"range over {len(members)} phrasings: {low['value']:.4g} ({low['phrasing']!r}) to "
                                     f"{high['value']:.4g} ({high['phrasing']!r})")
        of = row["metric"] if not row.get("measure") else f"{row['metric']}:{row['measure']}"
        out.append(metric_row(PHRASING_SPREAD, row["stratum"], row["attribute"], estimate, group=row.get("group"),
                              label=row.get("label"), query=row.get("query"), measure=of,
                              modality=row.get("modality") or DEFAULT_MODALITY))
    return out
