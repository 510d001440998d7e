"""The audit config that runs a planted-bias world through the normal ``dataset-audit`` flow.

Everything is the ordinary pipeline except three choices, each because the world makes the
step moot rather than to help the audit:

* ``generation.method: planted-world``, one seed per target (the editor is exact; the seed only
  changes the artifact), ``model`` ignored by that method (written as ``planted-world``);
* the judge keeps every candidate on its scores (thresholds −1, no attribute check): the
  editor's edits are exact by construction, so the bench measures the audit's statistics, not
  the judge. Its off-target drift (``judge.max_drift``, default) stays on: it reads the scene
  outside the badge band (the editor's declared edit region) and the other attributes. The
  judge model is the fair world model (any CLIP-family model would do);
* ``audit.labels`` are the world's two labels with the prompt the world models were built
  for (``a photo of a {label}``), and one retrieval query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from counterfactual_lab.generation.planted import ATTRIBUTE, FEATURE_COLOURS
from counterfactual_lab.validity.models import DEFAULT_PROMPT
from counterfactual_lab.validity.world import LABELS

# The planted-bias world's editor (counterfactual_lab/generation/planted.py), by its row's name.
PLANTED_METHOD = "planted-world"


def world_audit_config(
    dataset_dir: str | Path,
    audit_model: str | Path,
    judge_model: str | Path,
    out_uri: str,
    *,
    name: str,
    reconstruction: bool | None = None,
    bootstrap_samples: int = 200,
    max_workers: int = 2,
    batch_size: int = 64,
    params: dict[str, Any] | None = None,
    seeds_per_target: int = 1,
    keep_per_target: int = 1,
    adaptive: bool | None = None,
    negative_controls: list[str] | None = None,
    min_group_size: int | None = None,
    prompt: str | None = None,
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """The config (a plain dict, as YAML would load it) auditing ``audit_model`` on one world.

    ``reconstruction`` sets ``generation.reconstruction`` (generated vs generated when true,
    the old real-vs-generated design when false); ``None`` leaves the key out, for a code
    base that does not have it yet. ``params``: the editor's ``generation.params`` (the bench's
    arms: ``artifact_per_target``, ``confound_*``, ``cast_std``, ``noise_std``);
    ``seeds_per_target``/``keep_per_target``/``adaptive``: sets per source; ``negative_controls``,
    ``min_group_size``, ``prompt`` (the label prompt; the text-side arm's has ``{person}``) and
    ``modalities``: ``audit.*`` (None: the defaults).
    """
    generation: dict[str, Any] = {
        "method": PLANTED_METHOD, "model": PLANTED_METHOD, "seed": 0, "seeds_per_target": seeds_per_target,
        "keep_per_target": keep_per_target, "batch_size": batch_size, "params": dict(params or {}),
    }
    if reconstruction is not None:
        generation["reconstruction"] = reconstruction
    if adaptive is not None:
        generation["adaptive"] = adaptive
    audit: dict[str, Any] = {
        "model": str(audit_model),
        "labels": list(LABELS),
        "prompt": prompt or DEFAULT_PROMPT,
        "queries": [DEFAULT_PROMPT.format(label=LABELS[0])],
        "bootstrap_samples": bootstrap_samples,
    }
    if negative_controls is not None:
        audit["negative_controls"] = list(negative_controls)
    if min_group_size is not None:
        audit["min_group_size"] = min_group_size
    if modalities is not None:
        audit["modalities"] = list(modalities)
    return {
        "dataset": {"uri": str(dataset_dir), "name": name},
        "attributes": {ATTRIBUTE: sorted(FEATURE_COLOURS[ATTRIBUTE])},
        "generation": generation,
        "judge": {
            "model": str(judge_model),
            "thresholds": {"text": -1.0, "direction": -1.0, "image": -1.0},
            "check_attribute": False,
        },
        "audit": audit,
        "output": {"uri": out_uri},
        "runtime": {"task_runner": "threads", "max_workers": max_workers, "device": "cpu", "retries": 0},
    }


def write_world_audit_config(path: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
