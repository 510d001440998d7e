"""Benchmark: our generation stage against the bare diffusers loop a user would write.

Both sides do the same work, side by side in one process: load the same local
random-weight pipeline from disk, then for every batch of ``--batch-size`` work items read the
source PNGs (and masks), run the pipeline with one seeded generator per item, and write one PNG
per item. Ours is :func:`counterfactual_lab.generation.generate_batch` over the batches (exactly
what one Prefect generation task runs, minus Prefect), into a fresh content-addressed store; then
a warm rerun of ours over the same store, where every key is already stored.

Methods (``--method``):

* ``img2img`` (default) and ``instruct-pix2pix``: 16 sources × 2 targets × 2 seeds;
* ``inpaint``: the same items, each source with a polygon mask (an ellipse over its centre); the
  baseline composites its output over the source through the mask, as ours does;
* ``text2image-sets``: counterfactual sets of 4 members (2 races × 2 genders) per occupation
  template, 2 seeds; both sides give every member of a set the same initial latents (``randn``
  from the set's seed) and batch whole sets, as the audit's tasks do (attention sharing off: the
  bare loop has none).

Default: a "tiny but not trivial" model (``tiny_parts.SMALL``), 64×64 images, 8 steps, 64 items,
batch size 8, CPU. The script checks that both sides write the same pixels. ``--notebook`` also
times the loop a notebook user writes (the pipeline loaded once in fp32, one item per call) and
reports ``speedup_vs_notebook`` = notebook / ours. Last line JSON:
``{"bench": "generate", "ours_s", "baseline_s", "ratio": baseline/ours, "warm_rerun_s", ...}``.

    python bench/generate.py                      # the CPU figures in bench/RESULTS.md
    python bench/generate.py --method text2image-sets --items 32 --repeats 1 --notebook
    python bench/generate.py --items 16 --repeats 1   # a quick look

It imports nothing beyond torch, diffusers, transformers, PIL and the pydantic/fsspec/polars-free
parts of counterfactual_lab when those are missing (bench/gpu_generate.py reuses it on GPU boxes).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from counterfactual_lab.config.methods import METHODS as METHOD_FACTS  # noqa: E402
from counterfactual_lab.models.diffusion import _dtype_kwarg, clear_pipeline_cache  # noqa: E402
from counterfactual_lab.models.devices import dtype_for, resolve_device
from counterfactual_lab.generation.editor import clear_editor_cache
from counterfactual_lab.generation.batch import generate_batch
from counterfactual_lab.generation.editor import output_size
from counterfactual_lab.plan.masks import masked_item_key, polygon_mask  # noqa: E402
from counterfactual_lab.plan.work_items import WorkItem, chunk, generator_fingerprint, work_item_key  # noqa: E402
from counterfactual_lab.generation.text2image_sets import SetTemplate, chunk_sets, plan_member_sets  # noqa: E402

# The methods the bench can time: every method with weights whose pipeline makes a batch in one call
# (LEDITS++ edits one image per call after an inversion: no bare batched loop to compare with).
METHODS = tuple(name for name, facts in METHOD_FACTS.items() if facts.has_weights and not facts.inverts)
OCCUPATIONS = ("doctor", "nurse", "teacher", "engineer", "pilot", "chef", "farmer", "lawyer", "judge", "baker",
               "dancer", "singer", "writer", "painter", "driver", "guard")
TARGETS = [("male", "female", "make the man a woman", "a photo of a woman"),
           ("female", "male", "make the woman a man", "a photo of a man")]


@dataclass
class BenchGeneration:
    """The fields of ``config.GenerationSection`` that generation reads (used where pydantic is missing)."""

    method: str = "img2img"
    model: str = ""
    revision: str | None = None
    steps: int = 8
    guidance_scale: float = 7.5
    seed: int = 0
    seeds_per_target: int = 2
    keep_per_target: int = 1
    batch_size: int = 8
    resolution: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("method", "model", "revision", "steps", "guidance_scale", "resolution", "params")}


@dataclass
class BenchConfig:
    """What ``text2image_sets.plan_member_sets`` reads of an audit config: its generation section."""

    generation: Any


class LocalImageStore:
    """``storage.ImageStore``'s contract on a local folder (used where fsspec is missing)."""

    def __init__(self, root_uri: str):
        self.root_uri = root_uri
        self.storage_options = None

    def uri(self, key: str) -> str:
        return os.path.join(self.root_uri, "images", f"{key}.png")

    def existing(self, keys: list[str]) -> set[str]:
        folder = os.path.join(self.root_uri, "images")
        names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        return {k for k in keys if f"{k}.png" in names}

    def put_png(self, key: str, image: Image.Image) -> str:
        uri = self.uri(key)
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        tmp = f"{uri}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, uri)
        return uri

    def get(self, key: str) -> Image.Image:
        with Image.open(self.uri(key)) as image:
            return image.convert("RGB")

    def load(self, uri: str) -> Image.Image:
        with Image.open(uri) as image:
            return image.convert("RGB")


def generation_config(**fields: Any):
    """The real pydantic ``GenerationSection`` when importable, else the stand-in."""
    try:
        from counterfactual_lab.config.audit_config import GenerationSection
    except ImportError:
        return BenchGeneration(**fields)
    return GenerationSection(**fields)


def image_store(root: str):
    try:
        from counterfactual_lab.storage.files import ImageStore
    except ImportError:
        return LocalImageStore(root)
    return ImageStore(root)


def make_sources(count: int, size: int, store) -> list[tuple[str, str]]:
    """``count`` seeded synthetic photos (smooth gradients + noise) stored as PNG under their sha256."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size] / size
    sources = []
    for _ in range(count):
        base = np.stack([np.sin(xs * rng.uniform(1, 6) + rng.uniform(0, 6)) for _ in range(3)], axis=-1)
        pixels = np.clip((base * 0.4 + 0.5 + rng.normal(0, 0.05, base.shape)) * 255, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        key = hashlib.sha256(buffer.getvalue()).hexdigest()
        sources.append((key, store.put_png(key, image)))
    return sources


def make_items(sources: list[tuple[str, str]], generation, seeds_per_target: int = 2) -> list[WorkItem]:
    """Work items as the planner makes them: source × change × seed, each with its content key."""
    fingerprint = generator_fingerprint(generation.fingerprint_fields())
    items = []
    for index, (source_key, uri) in enumerate(sources):
        for source_value, target_value, instruction, caption in TARGETS:
            for seed in range(generation.seed, generation.seed + seeds_per_target):
                key = work_item_key(source_key, "gender", source_value, target_value, seed, caption, fingerprint)
                items.append(WorkItem(
                    source_id=f"row-{index}", source_key=source_key, source_image_uri=uri,
                    caption="a photo of a person", attribute="gender", source_value=source_value,
                    target_value=target_value, seed=seed, counterfactual_caption=caption,
                    explanation="", instruction=instruction, generator=fingerprint, content_key=key,
                ))
    return items


def add_masks(items: list[WorkItem], size: int, store) -> list[WorkItem]:
    """Each item with its source's mask (an ellipse over the centre, as a 24-point polygon)."""
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    points = [[size / 2 + size * 0.3 * np.cos(a), size / 2 + size * 0.4 * np.sin(a)] for a in angles]
    mask = polygon_mask(points, (size, size))
    mask_uri = store.put_png("mask-ellipse", mask)
    return [replace(item, content_key=masked_item_key(item.content_key, "mask-ellipse"), mask_uri=mask_uri)
            for item in items]


def make_set_items(items_count: int, generation) -> list[WorkItem]:
    """Members of counterfactual sets: an occupation template × 2 races × 2 genders, 2 seeds."""
    templates = []
    for occupation in OCCUPATIONS[: max(1, items_count // 8)]:
        template = f"a photo of a {{race}} {{gender}} {occupation}"
        members = tuple(
            (((("race", race), ("gender", gender))), template.format(race=race, gender=gender))
            for race in ("Black", "White") for gender in ("female", "male")
        )
        templates.append(SetTemplate(source_id=occupation, template=template, attributes=("race", "gender"),
                                     members=members, explanation=("",) * len(members)))
    return plan_member_sets(templates, BenchConfig(generation))[:items_count]


def batches_of(items: list[WorkItem], generation, size: int | None = None) -> list[list[WorkItem]]:
    """The batches our tasks get: whole sets for text2image-sets, else consecutive items."""
    size = size or generation.batch_size
    return chunk(items, size) if METHOD_FACTS[generation.method].reads_source else chunk_sets(items, size)


def baseline_loop(items: list[WorkItem], generation, out_dir: Path, device: torch.device, *,
                  dtype: torch.dtype | None = None, batch_size: int | None = None) -> float:
    """The loop a user writes with diffusers alone; returns its wall time (load included).

    ``dtype`` (default: fp16 on CUDA, fp32 elsewhere) and ``batch_size`` (default: the config's)
    make it the notebook loop: ``dtype=torch.float32, batch_size=1``.
    """
    import diffusers

    started = time.perf_counter()
    cls = getattr(diffusers, METHOD_FACTS[generation.method].pipeline_class)
    pipe = cls.from_pretrained(
        generation.model, use_safetensors=True, safety_checker=None, requires_safety_checker=False,
        **_dtype_kwarg(dtype or dtype_for(device)),
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The pipeline calls of ours: each task's batch (whole sets for text2image-sets) in calls of at
    # most batch_size items; the notebook loop: one item per call.
    calls = chunk(items, batch_size) if batch_size else [
        part for batch in batches_of(items, generation) for part in chunk(batch, generation.batch_size)]
    for batch in calls:
        kwargs: dict[str, Any] = dict(num_inference_steps=generation.steps, guidance_scale=generation.guidance_scale,
                                      generator=[torch.Generator().manual_seed(item.seed) for item in batch])
        images, masks = [], []
        if METHOD_FACTS[generation.method].reads_source:
            for item in batch:
                with Image.open(item.source_image_uri) as image:
                    images.append(image.convert("RGB"))
                if item.mask_uri:
                    with Image.open(item.mask_uri) as mask:
                        masks.append(mask.convert("L"))
        if generation.method == "img2img":
            kwargs.update(image=images, prompt=[item.counterfactual_caption for item in batch],
                          strength=generation.params.get("strength", 0.6), eta=0.0)
        elif generation.method == "instruct-pix2pix":
            kwargs.update(image=images, prompt=[item.instruction for item in batch],
                          image_guidance_scale=generation.params.get("image_guidance_scale", 1.5))
        elif generation.method == "inpaint":
            width, height = output_size(images[0], generation.resolution, 8)
            kwargs.update(image=images, mask_image=masks, prompt=[item.counterfactual_caption for item in batch],
                          height=height, width=width, strength=1.0, eta=0.0)
        else:  # text2image-sets: every member of a set from its seed's noise
            side = generation.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
            shape = (1, pipe.unet.config.in_channels, side // pipe.vae_scale_factor, side // pipe.vae_scale_factor)
            latents = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(item.seed)) for item in batch])
            kwargs.update(prompt=[item.counterfactual_caption for item in batch], height=side, width=side, eta=0.0,
                          latents=latents.to(device, pipe.unet.dtype))
        with torch.inference_mode():
            outputs = pipe(**kwargs).images
        for index, (item, output) in enumerate(zip(batch, outputs)):
            if generation.method == "inpaint":  # keep every pixel outside the mask
                source = images[index]
                output = Image.composite(output.resize(source.size, Image.Resampling.BICUBIC), source,
                                         masks[index].point(lambda v: 255 if v > 127 else 0))
            output.save(out_dir / f"{item.content_key}.png")
    seconds = time.perf_counter() - started
    del pipe
    return seconds


def ours(items: list[WorkItem], generation, store, device: str) -> tuple[float, list]:
    """Our stage: one ``generate_batch`` per batch, as the Prefect tasks run it."""
    started = time.perf_counter()
    records = []
    for batch in batches_of(items, generation):
        records += generate_batch(batch, generation, store, device=device)
    return time.perf_counter() - started, records


def _free(device: torch.device) -> None:
    clear_editor_cache()
    clear_pipeline_cache()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def compare(model_dir: str, *, method: str, items_count: int, size: int, steps: int, batch_size: int,
            device: str, repeats: int, work: Path, extra: dict[str, Any] | None = None,
            notebook: bool = False) -> dict[str, Any]:
    """Run baseline and ours ``repeats`` times each, alternating; fastest run per side counts.
    ``notebook``: also time the notebook loop once (fp32, batch 1, pipeline loaded once)."""
    torch_device = resolve_device(device)
    params = {"mask": {"column": "mask"}} if method == "inpaint" else {}
    generation = generation_config(method=method, model=model_dir, steps=steps, batch_size=batch_size,
                                   seeds_per_target=2, params=params, **({"resolution": size} if method == "text2image-sets" else {}))
    source_store = image_store(str(work / "sources"))
    if method == "text2image-sets":
        items = make_set_items(items_count, generation)
    else:
        sources_count = max(1, items_count // (2 * len(TARGETS)))
        items = make_items(make_sources(sources_count, size, source_store), generation)[:items_count]
        if method == "inpaint":
            items = add_masks(items, size, source_store)

    # Warm-up outside the clock: the first load in a process pays one-off import costs.
    baseline_loop(items[: min(2, len(items))], generation, work / "warmup", torch_device)
    _free(torch_device)

    baseline_runs, ours_runs = [], []
    store = None
    for repeat in range(repeats):
        baseline_runs.append(baseline_loop(items, generation, work / f"baseline-{repeat}", torch_device))
        _free(torch_device)
        store = image_store(str(work / f"ours-{repeat}"))  # fresh: a cold run
        seconds, records = ours(items, generation, store, device)
        ours_runs.append(seconds)
        failed = [r for r in records if r.status != "generated"]
        if failed:
            raise SystemExit(f"{len(failed)} items did not generate: {failed[0]}")
        if repeat < repeats - 1:
            _free(torch_device)
    warm_seconds, warm_records = ours(items, generation, store, device)  # same store: all cached
    assert all(r.status == "cached" for r in warm_records), "warm rerun generated something"
    notebook_s = None
    if notebook:
        _free(torch_device)
        notebook_s = baseline_loop(items, generation, work / "notebook", torch_device, dtype=torch.float32, batch_size=1)

    # Same work on both sides: compare the pixels each wrote.
    max_diff = 0
    for item in items:
        a = np.asarray(Image.open(store.uri(item.content_key)).convert("RGB"), dtype=int)
        b = np.asarray(Image.open(work / "baseline-0" / f"{item.content_key}.png").convert("RGB"), dtype=int)
        max_diff = max(max_diff, int(np.abs(a - b).max()))

    ours_s, baseline_s = min(ours_runs), min(baseline_runs)
    result = {
        "bench": "generate",
        "ours_s": round(ours_s, 3),
        "baseline_s": round(baseline_s, 3),
        "ratio": round(baseline_s / ours_s, 3),
        "warm_rerun_s": round(warm_seconds, 4),
        "warm_fraction_of_cold": round(warm_seconds / ours_s, 4),
        "ours_runs_s": [round(s, 3) for s in ours_runs],
        "baseline_runs_s": [round(s, 3) for s in baseline_runs],
        "max_pixel_diff": max_diff,
        "method": method, "items": len(items), "size": size, "steps": steps, "batch_size": batch_size,
        "device": str(torch_device),
        "device_name": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu",
        "dtype": str(dtype_for(torch_device)).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "config_class": type(generation).__name__, "store_class": type(store).__name__,
    }
    if notebook_s is not None:
        result.update(notebook_s=round(notebook_s, 3), speedup_vs_notebook=round(notebook_s / ours_s, 3))
    if hasattr(os, "getloadavg"):
        result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result.update(extra or {})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="img2img", choices=list(METHODS))
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the fastest counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--notebook", action="store_true",
                        help="also time the notebook loop (fp32, one item per call, pipeline loaded once)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both sides (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from counterfactual_lab.demo.tiny_diffusion import build_tiny_diffusion
    from counterfactual_lab.demo.tiny_parts import SMALL

    work = Path(tempfile.mkdtemp(prefix="cflab-bench-generate-"))
    try:
        model_dir = build_tiny_diffusion(args.method, work / "model", seed=0, size=SMALL)
        result = compare(str(model_dir), method=args.method, items_count=args.items, size=args.size,
                         steps=args.steps, batch_size=args.batch_size, device=args.device,
                         repeats=args.repeats, work=work, extra={"model": "tiny_parts.SMALL (random weights)"},
                         notebook=args.notebook)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
