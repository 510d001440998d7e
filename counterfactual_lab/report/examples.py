"""The report's example images: which counterfactuals to show (flipped first, spread over
attributes, some the judge dropped), each beside what it is compared with, inlined as thumbnails."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.config.methods import made_from_text
from counterfactual_lab.report.markup import escaped
from counterfactual_lab.report.sentences import number

THUMBNAIL_PX = 256


@dataclass(frozen=True)
class _Pair:
    """A counterfactual and what it is compared with: its set's reconstruction, else the original."""

    row: dict[str, Any]
    original_top1: Any
    counterfactual_top1: Any
    reconstruction_uri: str | None = None  # None: reconstruction off (compared with the original)
    reconstruction_top1: Any = None

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


def select_examples(
    counterfactuals: pl.DataFrame, predictions: pl.DataFrame, max_examples: int
) -> tuple[list[_Pair], list[_Pair]]:
    """(kept pairs, dropped pairs) to show; see :func:`render_report` for the order.

    One pair per counterfactual candidate with an image; reconstructions and controls are not
    pairs of their own but the reference of their set's counterfactuals (its ``set_id``).
    """
    if counterfactuals is None or counterfactuals.is_empty() or max_examples <= 0:
        return [], []
    needed = {"image_uri", "source_image_uri"}
    if not needed <= set(counterfactuals.columns):
        return [], []
    original_top1, generated_top1 = _top1_lookup(predictions)
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
        pairs.append(
            _Pair(
                row, original_top1.get(row.get("source_id")), generated_top1.get(row.get("image_uri")),
                reconstruction, generated_top1.get(reconstruction) if reconstruction else None,
            )
        )
    kept = [p for p in pairs if p.row.get("kept")]
    dropped = [p for p in pairs if not p.row.get("kept")]
    kept = _spread_over_attributes(sorted(kept, key=lambda p: (not p.flipped, _order_key(p.row))))
    dropped = _spread_over_attributes(sorted(dropped, key=lambda p: _order_key(p.row)))
    n_kept = min(len(kept), max_examples - min(len(dropped), max_examples // 4))
    n_dropped = min(len(dropped), max_examples - n_kept)
    return kept[:n_kept], dropped[:n_dropped]


def _order_key(row: Mapping[str, Any]) -> tuple:
    return tuple(str(row.get(c)) for c in ("attribute", "source_id", "target_value", "seed"))


def _spread_over_attributes(pairs: list[_Pair]) -> list[_Pair]:
    """Round-robin over attributes (keeping each attribute's order) so one attribute cannot fill the grid."""
    by_attribute: dict[str, list[_Pair]] = {}
    for pair in pairs:
        by_attribute.setdefault(str(pair.row.get("attribute")), []).append(pair)
    # Attributes with a flip at their head come first.
    queues = sorted(by_attribute.values(), key=lambda q: (not q[0].flipped, str(q[0].row.get("attribute"))))
    out: list[_Pair] = []
    depth = 0
    while len(out) < len(pairs):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out


def _top1_lookup(predictions: pl.DataFrame | None) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """(top-1 of each original by source id, top-1 of each generated image by image URI)."""
    if predictions is None or predictions.is_empty():
        return {}, {}
    if not {"variant", "top1"} <= set(predictions.columns):
        return {}, {}
    originals, generated = {}, {}
    for row in predictions.select([c for c in ("source_id", "image_uri", "variant", "top1") if c in predictions.columns]).to_dicts():
        if row.get("variant") == "original" and row.get("source_id") is not None:
            originals.setdefault(row["source_id"], row["top1"])
        elif row.get("variant") in ("counterfactual", "reconstruction") and row.get("image_uri") is not None:
            generated.setdefault(row["image_uri"], row["top1"])
    return originals, generated


def examples_section(
    counterfactuals: pl.DataFrame, predictions: pl.DataFrame, images: "ImageInliner", max_examples: int
) -> str:
    kept, dropped = select_examples(counterfactuals, predictions, max_examples)
    total = 0 if counterfactuals is None else counterfactuals.height
    parts = ["<h2>Counterfactuals and what they are compared with</h2>"]
    if not kept and not dropped:
        parts.append("<p>No generated counterfactual images to show.</p>")
        return "".join(parts)
    from_text = "method" in counterfactuals.columns and made_from_text(counterfactuals["method"].drop_nulls().to_list())
    if from_text:
        parts.append(
            "<p>Counterfactual sets made from text (<code>text2image-sets</code>): there is no original; each member "
            "was judged against the other members of its set, and the kept sets were published under "
            "<code>sets/</code> and evaluated as a dataset of counterfactual sets.</p>"
        )
    elif any(p.reconstruction_uri for p in kept + dropped):
        parts.append(
            "<p>Each counterfactual is compared with the <b>reconstruction</b> of its set: the same source, seed and "
            "editor asked for the source's own value, so both images went through the same generator. The original "
            "is shown for reference only.</p>"
        )
    else:
        parts.append(
            "<p>Reconstruction was off (<code>generation.reconstruction: false</code>): each counterfactual is "
            "compared with the <b>real original</b>, so a difference may only say &quot;generated vs real&quot;, not the "
            "attribute.</p>"
        )
    parts.append(
        f"<p>{len(kept)} kept counterfactual(s) shown, top-1 flips first, out of {total} candidate(s). "
        "Scores are the judge's: text = counterfactual image vs its caption, direction = image change vs "
        "caption change, image = similarity to the original (preservation).</p>"
    )
    parts.append('<div class="grid">' + "".join(_pair_figure(p, images) for p in kept) + "</div>")
    if dropped:
        parts.append("<h3>Dropped by the judge (examples)</h3>")
        parts.append('<div class="grid">' + "".join(_pair_figure(p, images) for p in dropped) + "</div>")
    return "".join(parts)


def _pair_figure(pair: _Pair, images: "ImageInliner") -> str:
    row = pair.row
    change = f"{row.get('attribute')}: {row.get('source_value')} → {row.get('target_value')}"
    scores = ", ".join(
        f"{name} {number(row.get(column))}"
        for name, column in (("text", "text_similarity"), ("direction", "direction_similarity"), ("image", "image_similarity"))
        if row.get(column) is not None
    )
    if row.get("attribute_ok") is not None:
        scores += ("; " if scores else "") + f"attribute check {'passed' if row['attribute_ok'] else 'failed'}"
    if pair.counterfactual_top1 is None and (pair.reference_top1 is not None or pair.original_top1 is not None):
        # The model under audit only sees kept counterfactuals: say what it answered, not "→ None".
        why = "" if row.get("kept") else " (dropped by the judge)"
        seen = pair.reference_top1 if pair.reference_top1 is not None else pair.original_top1
        prediction = escaped(f"{seen} on the {pair.reference}; the counterfactual was not evaluated{why}")
    elif pair.reference_top1 is not None or pair.counterfactual_top1 is not None:
        verdict = f"{pair.reference}: {pair.reference_top1} → counterfactual: {pair.counterfactual_top1}"
        prediction = f'<span class="flip">{escaped(verdict)} (flipped)</span>' if pair.flipped else escaped(verdict)
        if pair.reconstruction_uri and pair.original_top1 is not None:
            prediction += f" (original: {escaped(pair.original_top1)})"
    else:
        prediction = "not evaluated"
    status = "kept" if row.get("kept") else f"dropped: {row.get('drop_reason') or row.get('status') or 'unknown'}"
    details = [
        ("change", escaped(change)),
        ("caption", escaped(row.get("caption"))),
        ("counterfactual caption", escaped(row.get("counterfactual_caption"))),
        ("explanation", escaped(row.get("explanation"))),
        ("judge", escaped(scores or "no scores")),
        ("model top-1", prediction),
        ("method, seed", escaped(f"{row.get('method')}, {row.get('seed')}")),
        ("status", escaped(status)),
        ("source id", escaped(row.get("source_id"))),
    ]
    dl = "".join(f"<tr><th>{escaped(k)}</th><td>{v}</td></tr>" for k, v in details)
    # (text2image-sets members have no original: their row's source image is empty)
    cells = [f"<div>{images.tag(row.get('source_image_uri'), 'original')}<br>original</div>"] if row.get("source_image_uri") else []
    if row.get("mask_uri"):  # inpainting: the region the edit was allowed to change
        cells.append(f"<div>{images.tag(row.get('mask_uri'), 'mask')}<br>mask</div>")
    if pair.reconstruction_uri:
        cells.append(f"<div>{images.tag(pair.reconstruction_uri, 'reconstruction')}<br>reconstruction</div>")
    cells.append(f"<div>{images.tag(row.get('image_uri'), 'counterfactual')}<br>counterfactual</div>")
    return (
        f'<figure class="pair"><div class="imgs">{"".join(cells)}'
        f"</div><figcaption><table>{dl}</table></figcaption></figure>"
    )


def thumbnail_data_uri(image: Any, max_px: int = THUMBNAIL_PX) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URI, shrunk to fit ``max_px`` (never enlarged)."""
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ImageInliner:
    """Loads each URI once, shrinks it to a thumbnail, and returns ``<img>`` tags with a PNG data URI."""

    def __init__(self, load_image: Callable[[str], Any], max_px: int = THUMBNAIL_PX) -> None:
        self._load = load_image
        self._max_px = max_px
        self._cache: dict[str, str | None] = {}
        self.errors: dict[str, str] = {}

    def data_uri(self, uri: str) -> str | None:
        if uri not in self._cache:
            try:
                self._cache[uri] = thumbnail_data_uri(self._load(uri), self._max_px)
            except Exception as exc:  # a missing image must not take the whole report down
                self._cache[uri] = None
                self.errors[uri] = f"{type(exc).__name__}: {exc}"
        return self._cache[uri]

    def tag(self, uri: str | None, alt: str) -> str:
        if not uri:
            return f'<div class="missing">{escaped(alt)}: no image</div>'
        src = self.data_uri(uri)
        if src is None:
            return f'<div class="missing">{escaped(alt)} unavailable: {escaped(uri)} ({escaped(self.errors.get(uri))})</div>'
        return f'<img src="{src}" alt="{escaped(alt)}" title="{escaped(uri)}">'
