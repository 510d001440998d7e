"""A small published run with counterfactual sets people can review: images on disk, sets kept and
dropped by the judge, controls, metrics and a manifest, made in milliseconds (no models)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from PIL import Image
from published_runs import metrics, predictions

from counterfactual_lab.runs.publisher import RunPublisher

# (source, attribute, source value, target values, judge's drop reason per target; None = kept)
SETS = [
    ("s0", "gender", "male", ["female"], [None]),
    ("s1", "gender", "female", ["male"], [None]),
    ("s2", "gender", "male", ["female"], ["below_direction_threshold"]),
    ("s3", "gender", "female", ["male"], [None]),
    ("s0", "age", "young", ["elderly"], [None]),
    ("s1", "age", "middle-aged", ["elderly", "young"], ["below_image_threshold", "set_incomplete"]),
    ("s2", "age", "elderly", ["young"], [None]),
    ("s3", "age", "young", ["elderly"], ["below_text_threshold"]),
]
BOOTSTRAP = {"bootstrap_samples": 200, "bootstrap_seed": 0, "confidence": 0.95}


def _image(out: Path, key: str, shade: int) -> str:
    path = out / "images" / f"{key}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 48), (shade % 256, (shade * 7) % 256, (shade * 13) % 256)).save(path)
    return str(path)


def counterfactual_rows(out: Path) -> list[dict]:
    rows, shade = [], 0
    for index, (source, attribute, value, targets, reasons) in enumerate(SETS):
        set_id = f"set{index}"
        set_dropped = any(r is not None for r in reasons)
        original = _image(out, f"orig-{source}", 40 * int(source[1:]))
        common = {"source_id": source, "source_image_uri": original, "attribute": attribute, "source_value": value,
                  "caption": f"a photo of a {value} person", "seed": 0, "status": "generated",
                  "text_similarity": 0.3, "image_similarity": 0.8, "attribute_margin": None}
        shade += 17
        rows.append({**common, "set_id": set_id, "variant": "reconstruction", "control": False, "target_value": value,
                     "content_key": f"rec{index}", "image_uri": _image(out, f"rec{index}", shade),
                     "counterfactual_caption": common["caption"], "direction_similarity": None,
                     "kept": not set_dropped, "drop_reason": "set_incomplete" if set_dropped else None})
        for target, reason in zip(targets, reasons):
            shade += 17
            rows.append({**common, "set_id": set_id, "variant": "counterfactual", "control": False, "target_value": target,
                         "content_key": f"cf{index}-{target}", "image_uri": _image(out, f"cf{index}-{target}", shade),
                         "counterfactual_caption": f"a photo of a {target} person", "direction_similarity": 0.1,
                         "kept": not set_dropped, "drop_reason": reason if reason else ("set_incomplete" if set_dropped else None)})
        shade += 17
        rows.append({**common, "set_id": f"control{index}", "variant": "reconstruction", "control": True, "seed": 2,
                     "target_value": value, "content_key": f"ctl{index}", "image_uri": _image(out, f"ctl{index}", shade),
                     "counterfactual_caption": common["caption"], "direction_similarity": None, "kept": True,
                     "drop_reason": None})
    return rows


def publish_reviewable(out: Path, run_id: str = "review-run", exclude_rejected: bool = False) -> str:
    """Publish the run under ``out``; returns its folder."""
    publisher = RunPublisher(str(out), run_id, "sample")
    tables = {
        "counterfactuals": publisher.write_table("counterfactuals", pl.DataFrame(counterfactual_rows(out))),
        "predictions": publisher.write_table("predictions", predictions()),
        "metrics": publisher.write_table("metrics", metrics()),
    }
    publisher.write_manifest({
        "run_id": run_id, "tiny_models": True, "dataset": {"name": "sample", "uri": "/data/sample"},
        "metrics": BOOTSTRAP, "config": {"review": {"exclude_rejected": exclude_rejected}}, "tables": tables,
        "row_accounting": {}, "started_at": "2026-01-01T12:00:00", "finished_at": "2026-01-01T12:05:00",
    })
    return publisher.run_uri


def members(run_uri: str) -> list[tuple[str, str]]:
    """(set_id, member) of every counterfactual with an image."""
    frame = pl.read_parquet(Path(run_uri) / "counterfactuals.parquet")
    frame = frame.filter((pl.col("variant") == "counterfactual") & ~pl.col("control"))
    return list(zip(frame["set_id"].to_list(), frame["content_key"].to_list()))
