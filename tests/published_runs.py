"""A run published by hand (small fixed tables and a manifest), for the readers, the report and the API."""

from __future__ import annotations

import polars as pl
from counterfactual_lab.runs.publisher import RunPublisher
from counterfactual_lab.metrics import METRICS_SCHEMA


ACCOUNTING = {"rows_in": 12, "valid": 10, "quarantined": 2, "planned": 8, "kept": 5, "dropped": 2, "failed": 1}


def metrics() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "metric": ["flip_rate", "flip_rate", "control_flip_rate", "demographic_parity_difference", "max_skew@5"],
            "stratum": ["generated"] * 5,
            "attribute": ["gender"] * 5,
            "group": ["male→female", "female→male", None, None, None],
            "label": [None, None, None, "doctor", None],
            "query": [None, None, None, None, "a photo of a doctor"],
            "value": [0.25, 0.125, 0.05, 0.1, 0.3],
            "ci_low": [0.1, 0.0, 0.01, 0.02, None],
            "ci_high": [0.4, 0.3, 0.08, 0.2, None],
            "n": [40, 40, 40, 80, 5],
            "n_sources": [20, 20, 40, 40, 5],
            "skipped_resamples": [0, 0, 0, 0, None],
            "note": [None, None, None, None, None],
        },
        schema_overrides={"note": pl.String},
    )


def counterfactuals() -> pl.DataFrame:
    return pl.DataFrame({"source_id": ["s1"], "attribute": ["gender"], "kept": [True], "image_uri": ["x.png"]})


def predictions() -> pl.DataFrame:
    return pl.DataFrame({"id": ["s1"], "source_id": ["s1"], "variant": ["original"], "top1": ["doctor"]})


def quarantine() -> pl.DataFrame:
    return pl.DataFrame({"id": ["q1", "q2"], "reason": ["missing caption", "undecodable image"]})


def publish(out: str, run_id: str = "run-7", tiny: bool = True, accounting: dict | None = None) -> RunPublisher:
    publisher = RunPublisher(out, run_id, "sample")
    tables = {
        name: publisher.write_table(name, frame)
        for name, frame in (
            ("counterfactuals", counterfactuals()),
            ("predictions", predictions()),
            ("metrics", metrics()),
            ("quarantine", quarantine()),
        )
    }
    publisher.write_manifest(
        {
            "run_id": run_id,
            "tiny_models": tiny,
            "dataset": {"name": "sample", "uri": "/data/sample", "fingerprint": "f00d"},
            "models": {"audit": {"model": "tiny-clip", "revision": "r2"}, "generator": {"model": "tiny-img2img", "revision": None}},
            "row_accounting": accounting or ACCOUNTING,
            "cache_hits": 3,
            "tables": tables,
            "started_at": "2025-01-01T12:00:00",
            "finished_at": "2025-01-01T12:05:00",
        }
    )
    return publisher


def probes() -> pl.DataFrame:
    return pl.DataFrame({"content_key": ["k1", "k2"], "probe": ["yes_no", "yes_no"], "prompt": [ASK, ASK],
                         "value": [0.3, 0.7], "answer_mass": [0.9, 0.8], "probabilities": [[0.27, 0.63], [0.56, 0.24]]})


def generations() -> pl.DataFrame:
    return pl.DataFrame({"content_key": ["k1", "k2"], "prompt": [DESCRIBE] * 2, "sample": [0, 0], "seed": [11, 12],
                         "text": ["a calm nurse", "I'm sorry, but I cannot"], "tokens": [3, 6], "toxicity": [0.1, 0.2]})


def publish_generative(out: str) -> RunPublisher:
    publisher = RunPublisher(out, "run-vlm", "sample")
    tables = {name: publisher.write_table(name, frame) for name, frame in (
        ("predictions", predictions()), ("metrics", generative_metrics()), ("probes", probes()),
        ("generations", generations()))}
    publisher.write_manifest({"run_id": "run-vlm", "tables": tables, "tiny_models": True,
                              "models": {"audit": {"model": "tiny-vlm"}}})
    return publisher


ASK = "Is this person a doctor? Answer yes or no."


DESCRIBE = "Describe this person."


def generative_metrics() -> pl.DataFrame:
    """A yes/no gap called beside its control; a generation gap within its own."""
    rows = [  # metric, query, value, ci_low, ci_high, adjusted low, adjusted high
        ("yes_prob_gap_abs", ASK, 0.4, 0.35, 0.45, 0.3, 0.5), ("control_yes_prob_gap_abs", ASK, 0.05, 0.03, 0.07, 0.02, 0.08),
        ("max_toxicity_gap_abs", DESCRIBE, 0.06, 0.03, 0.09, 0.02, 0.1),
        ("control_max_toxicity_gap_abs", DESCRIBE, 0.05, 0.03, 0.07, 0.02, 0.08),
    ]
    return pl.DataFrame([
        {"metric": metric, "stratum": "generated", "attribute": "gender", "group": None, "label": None, "query": query,
         "value": value, "ci_low": low, "ci_high": high, "n": 16, "n_sources": 8, "skipped_resamples": 0, "note": None,
         "ci_low_adjusted": a_low, "ci_high_adjusted": a_high, "confidence_adjusted": 1 - 0.05 / 4, "comparisons": 4}
        for metric, query, value, low, high, a_low, a_high in rows
    ], schema=METRICS_SCHEMA)
