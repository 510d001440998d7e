"""Hand-built prediction frames of the pool contract (CONTRACTS.md), shared by the metrics tests."""

from __future__ import annotations

import math

import polars as pl


def row(id_, source, variant, group, p_doctor, *, set_id=None, seed=None, control=False, label="doctor", attribute="gender"):
    """One predictions row of the pool contract (predictions = pool columns + scores + top1)."""
    return {
        "id": id_, "source_id": source, "variant": variant, "control": control, "attribute": attribute, "group": group,
        "seed": seed, "set_id": set_id, "caption": "c", "image_uri": f"mem://{id_}", "content_key": f"k-{id_}",
        "label": label, "score_doctor": p_doctor, "score_nurse": 1 - p_doctor,
        "top1": "doctor" if p_doctor >= 0.5 else "nurse", "caption_similarity": 0.3,
    }


def generated_predictions() -> pl.DataFrame:
    """Four sources, one set each (reconstruction + counterfactual), a control each, and the originals.

    pairs (reconstruction → counterfactual), p = p(doctor):
      s1 male→female 0.8 → 0.3  flips  Δ = −0.5
      s2 male→female 0.7 → 0.6  stays  Δ = −0.1
      s3 female→male 0.4 → 0.45 stays  Δ = +0.05
      s4 female→male 0.2 → 0.1  stays  Δ = −0.1
    flip rate 1/4; mean|Δ| = 0.75/4 = 0.1875; mean Δ = −0.65/4 = −0.1625
    male→female: flips 1/2, mean Δ = −0.3; female→male: flips 0/2, mean Δ = −0.025
    controls (reconstruction → control):
      s1 0.8 → 0.7 Δ −0.1; s2 0.7 → 0.75 Δ +0.05; s3 0.4 → 0.6 flips Δ +0.2; s4 0.2 → 0.2 Δ 0
    control flip rate 1/4; control mean|Δ| = 0.35/4 = 0.0875; control mean Δ = 0.15/4 = 0.0375
    """
    rows = []
    for source, own, other, p_rec, p_cf, p_ctl in [
        ("s1", "male", "female", 0.8, 0.3, 0.7), ("s2", "male", "female", 0.7, 0.6, 0.75),
        ("s3", "female", "male", 0.4, 0.45, 0.6), ("s4", "female", "male", 0.2, 0.1, 0.2),
    ]:
        set_id = f"{source}-gender-0"
        rows += [
            row(f"{source}-o", source, "original", own, p_rec),
            row(f"{source}-r", source, "reconstruction", own, p_rec, set_id=set_id, seed=0),
            row(f"{source}-c", source, "counterfactual", other, p_cf, set_id=set_id, seed=0),
            row(f"{source}-x", source, "reconstruction", own, p_ctl, seed=1, control=True),
        ]
    return pl.DataFrame(rows)


def one(metrics: pl.DataFrame, metric: str, **where) -> dict:
    frame = metrics.filter(pl.col("metric") == metric)
    for column, value in where.items():
        frame = frame.filter(pl.col(column).is_null() if value is None else pl.col(column) == value)
    assert frame.height == 1, f"{metric} {where}: {frame}"
    return frame.row(0, named=True)


def recompute_pair_metrics(predictions: pl.DataFrame, labels: list[str]) -> dict[tuple, tuple[float, int, int]]:
    """An independent recomputation of the overall pair metrics from ``predictions.parquet``, in plain Python.

    Returns {(stratum, attribute, metric, label): (value, pairs, sources)} for flip_rate (label
    None) and prob_gap_signed / prob_gap_abs per label, pairing as docs/metrics.md says:
    reconstruction → counterfactual within a set; original → counterfactual on (source, attribute)
    when there is no reconstruction; every ordered pair of a set's members in evaluate-only.
    """
    rows = predictions.to_dicts()
    variants = {r["variant"] for r in rows}
    pairs: dict[str, list[tuple[dict, dict]]] = {}
    if "reconstruction" in variants:
        stratum = "generated"
        for a in rows:
            if a["variant"] == "reconstruction" and not a.get("control") and a.get("set_id") is not None:
                for b in rows:
                    if b["variant"] == "counterfactual" and (b["attribute"], b.get("set_id")) == (a["attribute"], a["set_id"]):
                        pairs.setdefault(a["attribute"], []).append((a, b))
    elif "original" in variants:
        stratum = "real_vs_generated"
        for a in rows:
            if a["variant"] == "original":
                for b in rows:
                    if b["variant"] == "counterfactual" and (b["attribute"], b["source_id"]) == (a["attribute"], a["source_id"]):
                        pairs.setdefault(a["attribute"], []).append((a, b))
    else:
        stratum = "evaluate_only"
        for a in rows:
            for b in rows:
                if (a["attribute"], a.get("set_id")) == (b["attribute"], b.get("set_id")) and a["group"] != b["group"] \
                        and a["group"] is not None and b["group"] is not None:
                    pairs.setdefault(a["attribute"], []).append((a, b))
    out = {}
    for attribute, members in pairs.items():
        n, sources = len(members), len({a["source_id"] for a, _ in members})
        out[(stratum, attribute, "flip_rate", None)] = (sum(a["top1"] != b["top1"] for a, b in members) / n, n, sources)
        for label in labels:
            deltas = [b[f"score_{label}"] - a[f"score_{label}"] for a, b in members]
            out[(stratum, attribute, "prob_gap_signed", label)] = (sum(deltas) / n, n, sources)
            out[(stratum, attribute, "prob_gap_abs", label)] = (sum(abs(d) for d in deltas) / n, n, sources)
    return out


def recompute_rankings(rankings: pl.DataFrame) -> dict[tuple, dict]:
    """{(stratum, attribute, query, protocol): MaxSkew@K, MinSkew@K (None when a group of D is absent
    from the top K), NDKL and K} of every ranking in ``retrieval.parquet``, in plain Python, from its
    columns alone (rank, group, k, desired_share): no model, no metrics code."""
    out = {}
    for key, frame in rankings.group_by(["stratum", "attribute", "query", "protocol"], maintain_order=True):
        frame = frame.sort("rank")
        groups, k = frame["group"].to_list(), frame["k"][0]
        desired = dict(zip(groups, frame["desired_share"].to_list()))
        top = groups[:k]
        skews = [math.log(top.count(g) / k / d) for g, d in desired.items() if g in top]
        # A group of D without any ranked image (its share is missing from the sum) is absent too.
        absent = len(skews) < len(desired) or sum(desired.values()) < 1 - 1e-9
        weighted, z = 0.0, 0.0
        for i in range(1, len(groups) + 1):
            shares = {g: groups[:i].count(g) / i for g in set(groups[:i])}
            weighted += sum(p * math.log(p / desired[g]) for g, p in shares.items()) / math.log2(i + 1)
            z += 1 / math.log2(i + 1)
        out[key] = {"max": max(skews), "min": None if absent else min(skews), "ndkl": weighted / z, "k": k}
    return out
