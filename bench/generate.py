"""Benchmark: our generation stage against the bare diffusers loop a user would write.

Both sides do the same work, side by side in one process: load the same local
random-weight pipeline from disk, then for every batch of ``--batch-size`` work items read the
source PNGs, run the pipeline with one seeded generator per item, and write one PNG per item.
Ours is :func:`counterfactual_lab.generation.generate_batch` over the batches (exactly what one
Prefect generation task runs, minus Prefect), into a fresh content-addressed store; then a warm
rerun of ours over the same store, where every key is already stored.

Default: img2img, a "tiny but not trivial" model (``tiny_models.SMALL``), 64×64 images,
8 steps, 64 items (16 sources × 2 targets × 2 seeds), batch size 8, CPU. The script checks that
both sides write the same pixels. Last line JSON:
``{"bench": "generate", "ours_s", "baseline_s", "ratio": baseline/ours, "warm_rerun_s", ...}``.

    python bench/generate.py                      # the CPU figures in bench/RESULTS.md
    python bench/generate.py --items 16 --repeats 1   # a quick look

It imports nothing beyond torch, diffusers, transformers, PIL and the pydantic/fsspec-free
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from counterfactual_lab.diffusion_loading import _dtype_kwarg, clear_pipeline_cache, dtype_for, resolve_device  # noqa: E402
from counterfactual_lab.generation import clear_editor_cache, generate_batch  # noqa: E402
from counterfactual_lab.plan import WorkItem, chunk, generator_fingerprint, work_item_key  # noqa: E402

TARGETS = [("male", "female", "make the man a woman", "a photo of a woman"),
           ("female", "male", "make the woman a man", "a photo of a man")]


@dataclass
class BenchGeneration:
    """The fields of ``config.GenerationConfig`` that generation reads (used where pydantic is missing)."""

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


def generation_config(**fields: Any):
    """The real pydantic ``GenerationConfig`` when importable, else the stand-in."""
    try:
        from counterfactual_lab.config import GenerationConfig
    except ImportError:
        return BenchGeneration(**fields)
    return GenerationConfig(**fields)


def image_store(root: str):
    try:
        from counterfactual_lab.storage import ImageStore
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


def baseline_loop(items: list[WorkItem], generation, out_dir: Path, device: torch.device) -> float:
    """The loop a user writes with diffusers alone; returns its wall time (load included)."""
    import diffusers

    started = time.perf_counter()
    cls = {"img2img": diffusers.StableDiffusionImg2ImgPipeline,
           "instruct-pix2pix": diffusers.StableDiffusionInstructPix2PixPipeline}[generation.method]
    pipe = cls.from_pretrained(
        generation.model, use_safetensors=True, safety_checker=None, requires_safety_checker=False,
        **_dtype_kwarg(dtype_for(device)),
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for batch in chunk(items, generation.batch_size):
        images = []
        for item in batch:
            with Image.open(item.source_image_uri) as image:
                images.append(image.convert("RGB"))
        kwargs = dict(image=images, num_inference_steps=generation.steps, guidance_scale=generation.guidance_scale,
                      generator=[torch.Generator().manual_seed(item.seed) for item in batch])
        if generation.method == "img2img":
            kwargs.update(prompt=[item.counterfactual_caption for item in batch],
                          strength=generation.params.get("strength", 0.6), eta=0.0)
        else:
            kwargs.update(prompt=[item.instruction for item in batch],
                          image_guidance_scale=generation.params.get("image_guidance_scale", 1.5))
        with torch.inference_mode():
            outputs = pipe(**kwargs).images
        for item, output in zip(batch, outputs):
            output.save(out_dir / f"{item.content_key}.png")
    seconds = time.perf_counter() - started
    del pipe
    return seconds


def ours(items: list[WorkItem], generation, store, device: str) -> tuple[float, list]:
    """Our stage: one ``generate_batch`` per batch, as the Prefect tasks run it."""
    started = time.perf_counter()
    records = []
    for batch in chunk(items, generation.batch_size):
        records += generate_batch(batch, generation, store, device=device)
    return time.perf_counter() - started, records


def _free(device: torch.device) -> None:
    clear_editor_cache()
    clear_pipeline_cache()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def compare(model_dir: str, *, method: str, items_count: int, size: int, steps: int, batch_size: int,
            device: str, repeats: int, work: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run baseline and ours ``repeats`` times each, alternating; fastest run per side counts."""
    torch_device = resolve_device(device)
    generation = generation_config(method=method, model=model_dir, steps=steps, batch_size=batch_size,
                                   seeds_per_target=2, params={})
    sources_count = max(1, items_count // (2 * len(TARGETS)))
    source_store = image_store(str(work / "sources"))
    items = make_items(make_sources(sources_count, size, source_store), generation)[:items_count]

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
    result.update(extra or {})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="img2img", choices=["img2img", "instruct-pix2pix"])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the fastest counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both sides (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from counterfactual_lab.tiny_models import SMALL, build_tiny_diffusion

    work = Path(tempfile.mkdtemp(prefix="cflab-bench-generate-"))
    try:
        model_dir = build_tiny_diffusion(args.method, work / "model", seed=0, size=SMALL)
        result = compare(str(model_dir), method=args.method, items_count=args.items, size=args.size,
                         steps=args.steps, batch_size=args.batch_size, device=args.device,
                         repeats=args.repeats, work=work, extra={"model": "tiny_models.SMALL (random weights)"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
