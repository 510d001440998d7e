"""What is true in the planted-bias world, computed without the audit's code path.

The audit's ``prob_gap_signed`` for a label and a transition (e.g. doctor, female→male) is the mean
over pairs of P(label | counterfactual) − P(label | reconstruction), both images from one source
and seed. Its *true* value is the same mean over the world's whole population of such pairs:

    planted effect = E[ P(label | edit(x, target, a)) − P(label | edit(x, source, a)) ]

over world rows x whose value is ``source`` and artifacts a. :func:`planted_effect` estimates it
on a large sample of a world seed no bench run uses (:data:`TRUTH_WORLD_SEED`), and nothing of
what it runs is what the audit runs, so a bug there cannot cancel here:

* **its own edit** (:func:`edit`): the world's constants (the badge colours and the band's place,
  which define the world) painted by slice assignment, then its own artifact: the
  [1, 2, 1] ⊗ [1, 2, 1]/16 blur by ``scipy.ndimage.convolve`` (edges replicated), a colour cast
  N(0, cast_std)³ and noise N(0, noise_std) drawn from this module's own random stream (the
  truth is an expectation over the artifact, so its stream need not match the editor's), the
  confound shift on male-target images; one draw shared by reconstruction and counterfactual
  unless ``artifact_per_target``;
* **a direct forward pass** (:func:`direct_probabilities`): ``transformers.CLIPModel`` and
  ``CLIPProcessor`` loaded from the model's folder, ``logits_per_image.softmax(-1)``, no embedder
  of the project;
* **the world formula** (:func:`formula_probabilities`): σ(tint_logit·tint + sharpness_logit·sharpness
  + badge_logit·badge) on the same images, from the model's recorded spec; the two truths must
  agree (:data:`AGREEMENT`).

Its standard error is reported with it. For the fair model the effect is exactly 0 (a shared
artifact; checked).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import convolve

# The world's definition (the badge colours and where the band lies), not the editor's code.
from counterfactual_lab.generation.planted import ATTRIBUTE, FEATURE_COLOURS, feature_box
from counterfactual_lab.validity.models import DEFAULT_PROMPT, WORLD_MODEL_FILE, readings
from counterfactual_lab.validity.world import LABELS, world_row

TRUTH_WORLD_SEED = 1_000_000  # bench worlds use seeds below it; the truth sample never overlaps them
TRUTH_STREAM_SEED = 20_250_615  # the truth's own artifact stream
AGREEMENT = 0.003  # the largest difference allowed between the forward-pass and the formula truth
_KERNEL = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
DEFAULT_PARAMS = {"blur": True, "cast_std": 2.0, "noise_std": 2.0, "artifact_per_target": False,
                  "confound_red": 0.0, "confound_green": 0.0, "confound_blue": 0.0}


@dataclass(frozen=True)
class PlantedEffect:
    """The true mean change of P(label) over the world's counterfactual pairs of one transition."""

    label: str
    transition: str  # "source→target", as the metrics table writes it
    value: float
    standard_error: float
    pairs: int
    world_seed: int
    formula_value: float  # the same mean by the world formula

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paint(pixels: np.ndarray, value: str) -> np.ndarray:
    """A copy of ``pixels`` with the badge stripe in ``value``'s colour."""
    out = np.array(pixels, dtype=np.float64, copy=True)
    box = feature_box(out.shape[1], out.shape[0])
    out[box.top:box.bottom, box.left:box.right] = FEATURE_COLOURS[ATTRIBUTE][value]
    return out


def artifact_draw(rng: np.random.Generator, shape: tuple[int, ...], params: dict[str, Any]) -> np.ndarray:
    """One artifact (cast + noise, grey levels) from the truth's own stream."""
    return rng.normal(0.0, float(params["cast_std"]), size=3) + rng.normal(0.0, float(params["noise_std"]), size=shape)


def edit(pixels: np.ndarray, value: str, artifact: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The world's edit to ``value`` with ``artifact`` added: (H, W, 3) uint8."""
    x = paint(pixels, value)
    if params["blur"]:
        x = np.stack([convolve(x[..., c], _KERNEL, mode="nearest") for c in range(3)], axis=-1)
    x = x + artifact
    if value == "male":
        band = feature_box(x.shape[1], x.shape[0]).band_height
        x[band:] += np.array([params["confound_red"], params["confound_green"], params["confound_blue"]], dtype=float)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def pair_images(rows: Sequence[Any], source: str, target: str, params: dict[str, Any], seed: int = TRUTH_STREAM_SEED
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(reconstructions, counterfactuals) of ``rows``: one artifact per pair, or one per image with
    ``artifact_per_target``."""
    rng = np.random.default_rng(seed)
    recons, counterfactuals = [], []
    for row in rows:
        shared = artifact_draw(rng, row.pixels.shape, params)
        other = artifact_draw(rng, row.pixels.shape, params) if params["artifact_per_target"] else shared
        recons.append(edit(row.pixels, source, shared, params))
        counterfactuals.append(edit(row.pixels, target, other, params))
    return recons, counterfactuals


class DirectClip:
    """A world model loaded by transformers alone: zero-shot probabilities by a plain forward pass."""

    def __init__(self, directory: str | Path, labels: Sequence[str] = LABELS, prompt: str = DEFAULT_PROMPT) -> None:
        # here, not at the top: it imports torch and transformers
        import torch
        from transformers import CLIPModel, CLIPProcessor  # (as the line above)

        self.torch = torch
        self.model = CLIPModel.from_pretrained(str(directory)).eval()
        self.processor = CLIPProcessor.from_pretrained(str(directory))
        self.texts = [prompt.format(label=label) for label in labels]
        self.spec = json.loads((Path(directory) / WORLD_MODEL_FILE).read_text())

    def probabilities(self, images: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """(n, labels) softmax over the labels of ``logits_per_image``."""
        out = []
        with self.torch.no_grad():
            for start in range(0, len(images), batch_size):
                inputs = self.processor(text=self.texts, images=list(images[start:start + batch_size]),
                                        return_tensors="pt", padding=True)
                out.append(self.model(**inputs).logits_per_image.softmax(-1).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.texts)))

    def formula(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """P(first label) by the world formula from the model's recorded spec."""
        spec = self.spec
        logits = np.array([spec["tint_logit"] * t + spec["sharpness_logit"] * s + spec["badge_logit"] * b + spec["bias_logit"]
                           for t, s, b in (readings(image) for image in images)])
        return 1.0 / (1.0 + np.exp(-logits))


def sources(world_seed: int, value: str, count: int) -> list:
    """The first ``count`` rows of world ``world_seed`` whose gender is ``value``."""
    rows, index = [], 0
    while len(rows) < count:
        row = world_row(world_seed, index)
        index += 1
        if row.gender == value:
            rows.append(row)
    return rows


def planted_effect(
    model: DirectClip,
    *,
    label: str = LABELS[0],
    source: str = "female",
    target: str = "male",
    pairs: int = 5000,
    params: dict[str, Any] | None = None,
    world_seed: int = TRUTH_WORLD_SEED,
    labels: Sequence[str] = LABELS,
) -> PlantedEffect:
    """The mean of P(label | target edit) − P(label | reconstruction) over ``pairs`` sources whose value
    is ``source`` (module doc), with its standard error; stops when the two truths disagree."""
    if label not in labels:
        raise ValueError(f"label {label!r} is not one of {list(labels)}")
    params = {**DEFAULT_PARAMS, **(params or {})}
    rows = sources(world_seed, source, pairs)
    recons, counterfactuals = pair_images(rows, source, target, params)
    column = list(labels).index(label)
    delta = model.probabilities(counterfactuals)[:, column] - model.probabilities(recons)[:, column]
    formula = model.formula(counterfactuals) - model.formula(recons)
    if column != 0:
        formula = -formula
    value, formula_value = float(delta.mean()), float(formula.mean())
    if abs(value - formula_value) > AGREEMENT:
        raise ValueError(f"the forward-pass truth {value:+.5f} and the world formula's {formula_value:+.5f} differ by "
                         f"more than {AGREEMENT}: the world model does not compute what its spec says")
    error = float(delta.std(ddof=1) / np.sqrt(len(delta))) if len(delta) > 1 else float("nan")
    return PlantedEffect(label=label, transition=f"{source}→{target}", value=value, standard_error=error,
                         pairs=len(delta), world_seed=world_seed, formula_value=formula_value)
