"""``PlantedWorldEditor`` (generation method ``planted-world``): an exact editor with a generator's artifact.

It exists to validate the audit, never to make counterfactuals of real photographs. On the
planted-bias world (:mod:`counterfactual_lab.validity.world`, whose feature stripe is painted here) it does what an ideal
counterfactual generator would do, plus what every real one also does:

1. **the edit**: repaint the feature stripe in the target value's colour
   (:func:`paint_feature`); no other pixel changes. A
   reconstruction (target = the source's own value) repaints the same colour: no change;
2. **the artifact**, on every image it outputs, reconstructions included: a 3×3 binomial
   blur ([1, 2, 1]/4 in each direction, edges replicated; it removes the scene's
   checkerboard texture entirely), then a colour cast (one offset per channel,
   N(0, ``cast_std``) grey levels) and per-pixel noise (N(0, ``noise_std``)), rounded to 8 bits.

The cast and noise are drawn from a generator seeded with sha256(source image key, item
seed), not the target value: the reconstruction and the counterfactuals of one (source,
seed) carry the *same* artifact and differ in the stripe alone, while another seed gives
another artifact (the generator's own variation, which the audit's control measures). The
stripe keeps a margin inside the band, so the blur never carries it into the scene.

Two params make the worlds of ``bench/validity.py`` that can fail the audit:

* ``artifact_per_target`` (false): the artifact's generator is seeded with the target value too,
  so a reconstruction and its counterfactuals get independent casts and noise and differ beyond
  the stripe: a fair model's answers then move on every pair, and only the statistics keep it
  from being called;
* ``confound_red``, ``confound_green``, ``confound_blue`` (0 grey levels, within ±64): added,
  before rounding, to every scene pixel of an image whose target value is ``male``
  (reconstructions of male sources included): a generator that shifts colour with the attribute.
  Female→male pairs drift by +shift, male→female by −shift, control pairs not at all.

:func:`edit_region` is the band, which the method row declares as the region it edits
(``Method.edit_region``): the judge reads off-target drift outside it.

Like the diffusion editors it implements :class:`~counterfactual_lab.generation.editor.ImageEditor`
(``edit(items, sources) -> images``) and runs through the normal generate task: content keys,
the image store and the batch cache work as for any method. It loads no weights:
``generation.model`` is ignored (any string), and
``steps``, ``guidance_scale`` and ``device`` mean nothing to it. ``generation.resolution``
resizes the source first, as the diffusion editors do. ``generation.params``: ``blur``
(true), ``cast_std`` (2.0), ``noise_std`` (2.0), ``artifact_per_target`` (false),
``confound_red``/``_green``/``_blue`` (0). ``generation.model`` does not enter the generator's
fingerprint: the method has no weights, so the run keys its generator as ``method:planted-world``
(``weightless_identity``); its params do (``GenerationSection.fingerprint_fields``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from counterfactual_lab.config.methods import check_method_params, method_facts
from counterfactual_lab.errors import UserError
from counterfactual_lab.plan.work_items import WorkItem

if TYPE_CHECKING:
    from counterfactual_lab.config.audit_config import GenerationSection

ATTRIBUTE = "gender"
# The rendered value of each gender: the stripe colour (RGB). Their red-minus-blue readings
# are opposite (+190 / -190) and their other channels close, so one colour axis tells them apart.
FEATURE_COLOURS: dict[str, dict[str, tuple[int, int, int]]] = {
    ATTRIBUTE: {"female": (230, 100, 40), "male": (40, 100, 230)},
}

@dataclass(frozen=True)
class FeatureBox:
    """Where the feature is: rows ``top:bottom`` and columns ``left:right`` (end exclusive),
    inside the band ``0:band_height``."""

    band_height: int
    top: int
    bottom: int
    left: int
    right: int


def feature_box(width: int, height: int) -> FeatureBox:
    """The stripe's place in an image of this size (the band is the top sixth, at least 4 rows).

    The stripe keeps a margin of a quarter band above and below, so a 3×3 blur of the stripe
    never reaches the scene: at 48 px the band is patch row 0 and the stripe rows 2..5.
    """
    if width < 8 or height < 24:
        raise UserError(f"the planted-bias feature needs an image of at least 8×24 pixels, got {width}×{height}")
    band = max(4, height // 6)
    margin = max(1, band // 4)
    side = max(1, width // 8)
    return FeatureBox(band_height=band, top=margin, bottom=band - margin, left=side, right=width - side)


def feature_colour(attribute: str, value: str) -> tuple[int, int, int]:
    """The stripe colour that renders ``value`` of ``attribute``; a clear error for anything else."""
    colours = FEATURE_COLOURS.get(attribute)
    if colours is None:
        raise UserError(
            f"the planted-bias world renders only {sorted(FEATURE_COLOURS)} as a feature, not {attribute!r}; "
            "audit attributes: {gender: [female, male]} with generation.method planted-world"
        )
    for name, colour in colours.items():
        if name.casefold() == str(value).casefold():
            return colour
    raise UserError(f"the planted-bias world has no rendering for {attribute} value {value!r}; it has {sorted(colours)}")


def paint_feature(pixels: np.ndarray, attribute: str, value: str) -> np.ndarray:
    """A copy of ``pixels`` (H, W, 3 uint8) with the stripe painted in ``value``'s colour.

    Only the stripe's pixels change: this is the whole of an attribute edit in this world.
    """
    height, width = pixels.shape[:2]
    box = feature_box(width, height)
    out = np.array(pixels, dtype=np.uint8, copy=True)
    out[box.top : box.bottom, box.left : box.right] = feature_colour(attribute, value)
    return out




def edit_region(width: int, height: int) -> np.ndarray:
    """The (H, W) boolean region this editor changes: the band (the stripe and its margin, which the
    blur may touch). Everything outside it is the scene."""
    region = np.zeros((height, width), dtype=bool)
    region[: feature_box(width, height).band_height] = True
    return region


# The target value whose images the confound params shift (the world's "male" badge).
CONFOUNDED_VALUE = "male"


def artifact_generator(source_key: str, seed: int, target: str | None = None) -> np.random.Generator:
    """The random generator of one (source image, seed): the same for every target value; with
    ``target`` (``artifact_per_target``), one per (source, seed, target)."""
    suffix = "" if target is None else f":{target}"
    digest = hashlib.sha256(f"validation-artifact:{source_key}:{seed}{suffix}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def binomial_blur(pixels: np.ndarray) -> np.ndarray:
    """3×3 blur with kernel [1, 2, 1]/4 ⊗ [1, 2, 1]/4, edges replicated; float64 out.

    Its response at the highest frequency is zero: a one-pixel checkerboard becomes flat.
    """
    x = np.asarray(pixels, dtype=np.float64)
    padded = np.pad(x, ((1, 1), (0, 0), (0, 0)), mode="edge")
    x = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]) / 4


def apply_artifact(
    pixels: np.ndarray, source_key: str, seed: int, *, blur: bool = True, cast_std: float = 2.0, noise_std: float = 2.0,
    target: str | None = None, shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """The generator's artifact on (H, W, 3) uint8 ``pixels``: blur, seeded cast and noise; uint8 out.

    ``target``: seed the artifact per target value too (``artifact_per_target``); ``shift``: grey
    levels added to every scene pixel (below the band) before rounding (the confound params).
    """
    rng = artifact_generator(source_key, seed, target)
    x = binomial_blur(pixels) if blur else np.asarray(pixels, dtype=np.float64)
    cast = rng.normal(0.0, cast_std, size=3)
    noise = rng.normal(0.0, noise_std, size=x.shape)
    out = x + cast + noise
    if any(shift):
        band = feature_box(x.shape[1], x.shape[0]).band_height
        out[band:] += np.asarray(shift, dtype=np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def confound_shift(params: dict[str, Any], target: str) -> tuple[float, float, float]:
    """The colour shift the confound params put on an image of ``target`` (zero for other values)."""
    if str(target).casefold() != CONFOUNDED_VALUE:
        return (0.0, 0.0, 0.0)
    return (float(params["confound_red"]), float(params["confound_green"]), float(params["confound_blue"]))


def artifact_params(generation: GenerationSection) -> dict[str, Any]:
    """``generation.params`` of this method with defaults filled, the std's as floats.

    Checked by :func:`counterfactual_lab.config.methods.check_method_params`, the one place every
    method's params are checked (names, bounds, the side multiple); a
    :class:`~counterfactual_lab.errors.UserError` names the key.
    """
    params = check_method_params(generation)
    return {**params, "cast_std": float(params["cast_std"]), "noise_std": float(params["noise_std"])}


class PlantedWorldEditor:
    """The planted-bias world's editor: exact feature edits plus a seeded generator artifact.

    Exists to validate the audit (``bench/validity.py``); see the module docstring for what
    it does to each image. ``edit(items, sources)[i]`` is the edited ``sources[i]``.
    """

    def __init__(self, generation: GenerationSection, device: str = "auto") -> None:
        method_facts(generation.method).require_editor(type(self))
        self.method = generation.method
        self.generation = generation
        self.params = artifact_params(generation)
        self.device = "cpu"  # numpy only; the device preference has nothing to choose

    def edit(self, items: list[WorkItem], sources: list[Image.Image]) -> list[Image.Image]:
        if len(items) != len(sources):
            raise ValueError(f"edit() got {len(items)} items but {len(sources)} source images")
        return [self.edit_one(item, source) for item, source in zip(items, sources)]

    def edit_one(self, item: WorkItem, source: Image.Image) -> Image.Image:
        """One item: resize if asked, repaint the feature in the target value, add the artifact."""
        image = source.convert("RGB")
        resolution = self.generation.resolution
        if resolution is not None and image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        edited = paint_feature(np.asarray(image), item.attribute, item.target_value)
        out = apply_artifact(
            edited, item.source_key, item.seed,
            blur=self.params["blur"], cast_std=self.params["cast_std"], noise_std=self.params["noise_std"],
            target=item.target_value if self.params["artifact_per_target"] else None,
            shift=confound_shift(self.params, item.target_value),
        )
        return Image.fromarray(out, "RGB")
