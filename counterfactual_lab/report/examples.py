"""The report's example images: which counterfactuals to show and how, each beside what it is
compared with, inlined as small WebP thumbnails.

The grid is capped (``max_examples``), so its size does not grow with the audit. Kept pairs come
first, ordered by how much the model's answer changed: top-1 flips first, then the largest
|Δ| of the reference's top-1 label probability between reference and counterfactual, spread
over attributes (round robin) so one attribute cannot fill the grid; then up to a quarter of the
budget for ones the judge dropped, so a reader sees why.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from PIL import features

from counterfactual_lab.config.methods import made_from_text
from counterfactual_lab.report.sentences import number

THUMBNAIL_PX = 256
WEBP_QUALITY = 80
# Reference kinds the examples section explains (templates/report.html.j2).
FROM_TEXT, RECONSTRUCTION, ORIGINAL = "from text", "reconstruction", "original"


@dataclass(frozen=True)
class _Pair:
    """A counterfactual and what it is compared with: its set's reconstruction, else the original."""

    row: dict[str, Any]
    original_top1: Any
    counterfactual_top1: Any
    reconstruction_uri: str | None = None  # None: reconstruction off (compared with the original)
    reconstruction_top1: Any = None
    change: float = 0.0  # |Δ P(reference's top-1 label)| from reference to counterfactual

    @property
    def reference(self) -> str:
        return "reconstruction" if self.reconstruction_uri else "original"

    @property
    def reference_top1(self) -> Any:
        return self.reconstruction_top1 if self.reconstruction_uri else self.original_top1

    @property
    def flipped(self) -> bool:
        return (
            self.reference_top1 is not None
            and self.counterfactual_top1 is not None
            and self.reference_top1 != self.counterfactual_top1
        )


@dataclass(frozen=True)
class _Answer:
    """What the model under audit said about one image: its top-1 label and label probabilities."""

    top1: Any
    scores: Mapping[str, float] = field(default_factory=dict)


def select_examples(
    counterfactuals: pl.DataFrame, predictions: pl.DataFrame, max_examples: int
) -> tuple[list[_Pair], list[_Pair]]:
    """(kept pairs, dropped pairs) to show, in the module doc's order.

    One pair per counterfactual candidate with an image; reconstructions and controls are not
    pairs of their own but the reference of their set's counterfactuals (its ``set_id``).
    """
    if counterfactuals is None or counterfactuals.is_empty() or max_examples <= 0:
        return [], []
    needed = {"image_uri", "source_image_uri"}
    if not needed <= set(counterfactuals.columns):
        return [], []
    originals, generated = _answers(predictions)
    rows = counterfactuals.filter(pl.col("image_uri").is_not_null() & pl.col("source_image_uri").is_not_null()).to_dicts()
    reconstructions = {
        row.get("set_id"): row["image_uri"]
        for row in rows
        if row.get("variant") == "reconstruction" and not row.get("control") and row.get("set_id") is not None
    }
    pairs = []
    for row in rows:
        if row.get("variant", "counterfactual") != "counterfactual":
            continue
        reconstruction = reconstructions.get(row.get("set_id"))
        original = originals.get(row.get("source_id"), _Answer(None))
        reference = generated.get(reconstruction, _Answer(None)) if reconstruction else original
        counterfactual = generated.get(row.get("image_uri"), _Answer(None))
        pairs.append(_Pair(row, original.top1, counterfactual.top1, reconstruction,
                           reference.top1 if reconstruction else None, _change(reference, counterfactual)))
    kept = [p for p in pairs if p.row.get("kept")]
    dropped = [p for p in pairs if not p.row.get("kept")]
    kept = _spread_over_attributes(sorted(kept, key=lambda p: (not p.flipped, -p.change, _order_key(p.row))))
    dropped = _spread_over_attributes(sorted(dropped, key=lambda p: _order_key(p.row)))
    n_kept = min(len(kept), max_examples - min(len(dropped), max_examples // 4))
    n_dropped = min(len(dropped), max_examples - n_kept)
    return kept[:n_kept], dropped[:n_dropped]


def _change(reference: _Answer, counterfactual: _Answer) -> float:
    label = reference.top1
    if label is None or label not in reference.scores or label not in counterfactual.scores:
        return 0.0
    return abs(counterfactual.scores[label] - reference.scores[label])


def _order_key(row: Mapping[str, Any]) -> tuple:
    return tuple(str(row.get(c)) for c in ("attribute", "source_id", "target_value", "seed"))


def _spread_over_attributes(pairs: list[_Pair]) -> list[_Pair]:
    """Round-robin over attributes (keeping each attribute's order) so one attribute cannot fill the grid."""
    by_attribute: dict[str, list[_Pair]] = {}
    for pair in pairs:
        by_attribute.setdefault(str(pair.row.get("attribute")), []).append(pair)
    # Attributes whose first pair changes the answer most come first.
    queues = sorted(by_attribute.values(), key=lambda q: (not q[0].flipped, -q[0].change, str(q[0].row.get("attribute"))))
    out: list[_Pair] = []
    depth = 0
    while len(out) < len(pairs):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out


def _answers(predictions: pl.DataFrame | None) -> tuple[dict[Any, _Answer], dict[Any, _Answer]]:
    """(each original's answer by source id, each generated image's answer by image URI)."""
    if predictions is None or predictions.is_empty() or not {"variant", "top1"} <= set(predictions.columns):
        return {}, {}
    scores = [c for c in predictions.columns if c.startswith("score_")]
    columns = [c for c in ("source_id", "image_uri", "variant", "top1") if c in predictions.columns] + scores
    originals: dict[Any, _Answer] = {}
    generated: dict[Any, _Answer] = {}
    for row in predictions.select(columns).iter_rows(named=True):
        answer = _Answer(row["top1"], {c.removeprefix("score_"): row[c] for c in scores if row[c] is not None})
        if row["variant"] == "original" and row.get("source_id") is not None:
            originals.setdefault(row["source_id"], answer)
        elif row["variant"] in ("counterfactual", "reconstruction") and row.get("image_uri") is not None:
            generated.setdefault(row["image_uri"], answer)
    return originals, generated


# --- what the template draws ---------------------------------------------------------------------


@dataclass(frozen=True)
class Thumbnail:
    """One inlined image (``src`` a data URI) or why there is none (``missing``)."""

    alt: str
    src: str | None = None
    width: int = 0
    height: int = 0
    missing: str | None = None


@dataclass(frozen=True)
class ExampleFigure:
    """One counterfactual beside what it is compared with: its images, the model's answers, the judge's scores."""

    images: list[tuple[str, Thumbnail]]
    prediction: str
    flipped: bool
    details: list[tuple[str, str]]


@dataclass(frozen=True)
class Examples:
    """The examples section: what each counterfactual is compared with, the figures, and the candidate count."""

    reference: str | None  # FROM_TEXT, RECONSTRUCTION, ORIGINAL; None: nothing to show
    kept: list[ExampleFigure]
    dropped: list[ExampleFigure]
    candidates: int


def examples(counterfactuals: pl.DataFrame, predictions: pl.DataFrame, images: "ImageInliner", max_examples: int) -> Examples:
    """The examples section's figures (module doc)."""
    kept, dropped = select_examples(counterfactuals, predictions, max_examples)
    total = 0 if counterfactuals is None else counterfactuals.height
    if not kept and not dropped:
        return Examples(None, [], [], total)
    if "method" in counterfactuals.columns and made_from_text(counterfactuals["method"].drop_nulls().to_list()):
        reference = FROM_TEXT
    elif any(p.reconstruction_uri for p in kept + dropped):
        reference = RECONSTRUCTION
    else:
        reference = ORIGINAL
    return Examples(reference, [_figure(p, images) for p in kept], [_figure(p, images) for p in dropped], total)


def _prediction(pair: _Pair) -> str:
    row = pair.row
    if pair.counterfactual_top1 is None and (pair.reference_top1 is not None or pair.original_top1 is not None):
        # The model under audit only sees kept counterfactuals: say what it answered, not "→ None".
        why = "" if row.get("kept") else " (dropped by the judge)"
        seen = pair.reference_top1 if pair.reference_top1 is not None else pair.original_top1
        return f"{seen} on the {pair.reference}; the counterfactual was not evaluated{why}"
    if pair.reference_top1 is None and pair.counterfactual_top1 is None:
        return "not evaluated"
    text = f"{pair.reference}: {pair.reference_top1} → counterfactual: {pair.counterfactual_top1}"
    if pair.flipped:
        text += " (flipped)"
    if pair.reconstruction_uri and pair.original_top1 is not None:
        text += f" (original: {pair.original_top1})"
    return text


def _figure(pair: _Pair, images: "ImageInliner") -> ExampleFigure:
    row = pair.row
    scores = ", ".join(
        f"{name} {number(row.get(column))}"
        for name, column in (("text", "text_similarity"), ("direction", "direction_similarity"), ("image", "image_similarity"))
        if row.get(column) is not None
    )
    if row.get("attribute_ok") is not None:
        scores += ("; " if scores else "") + f"attribute check {'passed' if row['attribute_ok'] else 'failed'}"
    status = "kept" if row.get("kept") else f"dropped: {row.get('drop_reason') or row.get('status') or 'unknown'}"
    details = [
        ("change", f"{row.get('attribute')}: {row.get('source_value')} → {row.get('target_value')}"),
        ("caption", row.get("caption")),
        ("counterfactual caption", row.get("counterfactual_caption")),
        ("explanation", row.get("explanation")),
        ("judge", scores or "no scores"),
        ("method, seed", f"{row.get('method')}, {row.get('seed')}"),
        ("status", status),
        ("source id", row.get("source_id")),
    ]
    if pair.change:
        details.insert(5, ("answer change", f"|Δ P(top-1)| {number(pair.change)}"))
    shown: list[tuple[str, Thumbnail]] = []
    if row.get("source_image_uri"):  # (text2image-sets members have no original)
        shown.append(("original", images.thumbnail(row.get("source_image_uri"), "original")))
    if row.get("mask_uri"):  # inpainting: the region the edit was allowed to change
        shown.append(("mask", images.thumbnail(row.get("mask_uri"), "mask")))
    if pair.reconstruction_uri:
        shown.append(("reconstruction", images.thumbnail(pair.reconstruction_uri, "reconstruction")))
    shown.append(("counterfactual", images.thumbnail(row.get("image_uri"), "counterfactual")))
    return ExampleFigure(shown, _prediction(pair), pair.flipped,
                         [(k, "" if v is None else str(v)) for k, v in details])


def _encoded(image: Any, max_px: int) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes, MIME type, size) of ``image`` shrunk to fit ``max_px`` (never enlarged): WebP at
    quality 80 where Pillow has it (a tenth of a PNG's size for a photo), else PNG."""
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    if features.check("webp"):
        image.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=4)
        return buffer.getvalue(), "image/webp", image.size
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue(), "image/png", image.size


def thumbnail_data_uri(image: Any, max_px: int = THUMBNAIL_PX) -> str:
    """A PIL image as a ``data:image/webp;base64,...`` URI (PNG without WebP), shrunk to fit ``max_px``."""
    data, mime, _ = _encoded(image, max_px)
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


class ImageInliner:
    """Loads each URI once and shrinks it to a thumbnail data URI; an image that fails to load is a
    placeholder naming the URI and the error, not a failed report."""

    def __init__(self, load_image: Callable[[str], Any], max_px: int = THUMBNAIL_PX) -> None:
        self._load = load_image
        self._max_px = max_px
        self._cache: dict[str, tuple[str, tuple[int, int]] | None] = {}
        self.errors: dict[str, str] = {}

    def _data_uri(self, uri: str) -> tuple[str, tuple[int, int]] | None:
        if uri not in self._cache:
            try:
                data, mime, size = _encoded(self._load(uri), self._max_px)
                self._cache[uri] = (f"data:{mime};base64," + base64.b64encode(data).decode("ascii"), size)
            except Exception as exc:  # a missing image must not take the whole report down
                self._cache[uri] = None
                self.errors[uri] = f"{type(exc).__name__}: {exc}"
        return self._cache[uri]

    def thumbnail(self, uri: str | None, alt: str) -> Thumbnail:
        if not uri:
            return Thumbnail(alt, missing=f"{alt}: no image")
        found = self._data_uri(uri)
        if found is None:
            return Thumbnail(alt, missing=f"{alt} unavailable: {uri} ({self.errors.get(uri)})")
        src, (width, height) = found
        return Thumbnail(alt, src, width, height)
