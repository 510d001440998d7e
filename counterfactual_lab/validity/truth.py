"""What is true in the planted-bias world, measured from the models themselves.

The audit's ``prob_gap_signed`` for a label and a transition (e.g. doctor, female→male) is
the mean over pairs of P(label | counterfactual) − P(label | reconstruction), where both
images come from the same source and seed. Its *true* value in this world is the same mean
over the world's whole population of such pairs:

    planted effect = E[ P(label | edit(x, target, s)) − P(label | edit(x, source, s)) ]

over world rows x whose value is ``source`` and artifact seeds s. :func:`planted_effect`
estimates it on a large sample drawn from a world seed that no bench run uses
(``TRUTH_WORLD_SEED``), through the same editor functions and the same model-loading and
zero-shot code as the audit (``ClipEmbedder``). Its standard error is reported with it.
For the fair model the effect is exactly 0 by construction (and checked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.generation.planted import (
    ATTRIBUTE,
    apply_artifact,
    paint_feature,
)
from counterfactual_lab.validity.audit_config import PLANTED_METHOD
from counterfactual_lab.validity.models import DEFAULT_PROMPT
from counterfactual_lab.validity.world import LABELS, png_bytes, world_row

TRUTH_WORLD_SEED = 1_000_000  # bench worlds use seeds 0, 1, ...; the truth sample never overlaps them



@dataclass(frozen=True)
class PlantedEffect:
    """The true mean change of P(label) over the world's counterfactual pairs of one transition."""

    label: str
    transition: str  # "source→target", as the metrics table writes it
    value: float
    standard_error: float
    pairs: int
    world_seed: int
    item_seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_probabilities(embedder, images: Sequence[Image.Image], labels: Sequence[str] = LABELS,
                        prompt: str = DEFAULT_PROMPT) -> np.ndarray:
    """(n, len(labels)) zero-shot probabilities, computed as the audit computes them."""
    image_embeddings = embedder.embed_images(list(images))
    text_embeddings = embedder.embed_texts([prompt.format(label=label) for label in labels])
    return embedder.zero_shot(image_embeddings, text_embeddings)


def edited(pixels: np.ndarray, source_key: str, value: str, seed: int, params: dict[str, Any] | None = None) -> Image.Image:
    """What the validation editor outputs for this source, target value and seed."""
    params = {**{name: p.default for name, p in METHODS[PLANTED_METHOD].params.items()}, **(params or {})}
    out = apply_artifact(
        paint_feature(pixels, ATTRIBUTE, value), source_key, seed,
        blur=params["blur"], cast_std=float(params["cast_std"]), noise_std=float(params["noise_std"]),
    )
    return Image.fromarray(out, "RGB")


def _sources(world_seed: int, value: str | None, count: int) -> list:
    """The first ``count`` rows of world ``world_seed`` whose gender is ``value`` (any when None)."""
    rows, index = [], 0
    while len(rows) < count:
        row = world_row(world_seed, index)
        index += 1
        if value is None or row.gender == value:
            rows.append(row)
    return rows


def _key(row) -> str:
    return hashlib.sha256(png_bytes(row.pixels)).hexdigest()  # what the ingest uses as its content key


def _summary(delta: np.ndarray) -> tuple[float, float]:
    return float(delta.mean()), float(delta.std(ddof=1) / np.sqrt(len(delta))) if len(delta) > 1 else float("nan")


def planted_effect(
    embedder,
    *,
    label: str = LABELS[0],
    source: str = "female",
    target: str = "male",
    pairs: int = 2000,
    world_seed: int = TRUTH_WORLD_SEED,
    item_seed: int = 0,
    labels: Sequence[str] = LABELS,
    prompt: str = DEFAULT_PROMPT,
    params: dict[str, Any] | None = None,
) -> PlantedEffect:
    """The mean of P(label | target edit) − P(label | reconstruction) over ``pairs`` sources whose
    value is ``source`` (see the module docstring), with its standard error."""
    if label not in labels:
        raise ValueError(f"label {label!r} is not one of {list(labels)}")
    rows = _sources(world_seed, source, pairs)
    keys = [_key(row) for row in rows]
    reconstructions = [edited(row.pixels, key, source, item_seed, params) for row, key in zip(rows, keys)]
    counterfactuals = [edited(row.pixels, key, target, item_seed, params) for row, key in zip(rows, keys)]
    column = list(labels).index(label)
    delta = (
        label_probabilities(embedder, counterfactuals, labels, prompt)[:, column]
        - label_probabilities(embedder, reconstructions, labels, prompt)[:, column]
    )
    value, standard_error = _summary(delta)
    return PlantedEffect(
        label=label, transition=f"{source}→{target}", value=value, standard_error=standard_error,
        pairs=len(delta), world_seed=world_seed, item_seed=item_seed,
    )


def artifact_effects(
    embedder,
    *,
    label: str = LABELS[0],
    sources: int = 1000,
    world_seed: int = TRUTH_WORLD_SEED,
    labels: Sequence[str] = LABELS,
    prompt: str = DEFAULT_PROMPT,
) -> dict[str, float]:
    """How the generator's artifact alone moves P(label), on ``sources`` rows of either gender:

    * ``generated_minus_original``: mean P(label | reconstruction, seed 0) − P(label | original),
      what a real-vs-generated comparison sees even when nothing protected changed;
    * ``seed_change_abs``: mean |P(label | reconstruction, seed 1) − P(label | reconstruction, seed 0)|,
      the generator's own variation (what the audit's control measures);
    * ``accuracy``: share of originals whose top label is their ground-truth label.
    """
    rows = _sources(world_seed, None, sources)
    keys = [_key(row) for row in rows]
    column = list(labels).index(label)

    def probability(images):
        return label_probabilities(embedder, images, labels, prompt)

    original = probability([Image.fromarray(row.pixels, "RGB") for row in rows])
    seed0 = probability([edited(row.pixels, key, row.gender, 0) for row, key in zip(rows, keys)])[:, column]
    seed1 = probability([edited(row.pixels, key, row.gender, 1) for row, key in zip(rows, keys)])[:, column]
    truth = np.array([list(labels).index(row.label) for row in rows])
    return {
        "generated_minus_original": float((seed0 - original[:, column]).mean()),
        "seed_change_abs": float(np.abs(seed1 - seed0).mean()),
        "accuracy": float((original.argmax(axis=1) == truth).mean()),
    }
