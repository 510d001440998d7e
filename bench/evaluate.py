"""Benchmark: the evaluation stage against the bare transformers loop a user would write.

Both sides use the same tiny random-weight CLIP, the same images on disk (PNG), the same
batch size, and do the same work per image: load it, embed it, zero-shot over the audit
labels, cosine with its own caption, and cosine with every retrieval query. Ours is
``evaluate.predict`` + ``evaluate.retrieval_scores`` on a pool of originals and
counterfactuals, starting with empty caches (cold); the warm rerun reuses the embedding
cache, as a rerun in the same worker would.

    python bench/evaluate.py [--images 2000] [--batch-size 32] [--repeats 3] [--device cpu|cuda]

Last line: {"bench": "evaluate", "ours_s", "baseline_s", "ratio" (baseline/ours), "warm_rerun_s",
"load_avg" (1-minute load average before and after), ...}. Take the figure of record on a quiet
machine: on a loaded one, wall times stretch by up to 20x and a side that runs more threads wins
a larger share of the contended cores, so the ratio measures the neighbours, not the code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from counterfactual_lab.config.audit_config import AuditSection  # noqa: E402
from counterfactual_lab.models.clip import ClipEmbedder, clear_caches  # noqa: E402
from counterfactual_lab.evaluate.pool import build_evaluation_pool, predict, retrieval_scores  # noqa: E402
from counterfactual_lab.demo.tiny_clip import build_tiny_clip  # noqa: E402

LABELS = ["doctor", "nurse", "pilot", "teacher"]
QUERIES = ["a photo of a doctor", "a photo of a person at work"]


def write_images(root: Path, n: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def make_pool(paths: list[str]) -> pl.DataFrame:
    """Half the images are originals, half their gender counterfactuals."""
    half = len(paths) // 2
    valid = pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(half)],
            "content_key": [f"k{i}" for i in range(half)],
            "caption": [f"a man at work number {i}" for i in range(half)],
            "image_uri": paths[:half],
            "gender": ["male"] * half,
            "label": [LABELS[i % len(LABELS)] for i in range(half)],
        }
    )
    counterfactuals = pl.DataFrame(
        {
            "source_id": [f"r{i}" for i in range(half)],
            "attribute": ["gender"] * half,
            "source_value": ["male"] * half,
            "target_value": ["female"] * half,
            "counterfactual_caption": [f"a woman at work number {i}" for i in range(half)],
            "image_uri": paths[half : 2 * half],
            "content_key": [f"c{i}" for i in range(half)],
            "kept": [True] * half,
        }
    )
    return build_evaluation_pool(valid, counterfactuals, ["gender"])


def load_image(uri: str) -> Image.Image:
    with Image.open(uri) as image:
        return image.convert("RGB")


def baseline(model_dir: str, uris: list[str], captions: list[str], batch_size: int, device: str) -> np.ndarray:
    """The loop a user writes with transformers alone."""
    from transformers import AutoModel, AutoProcessor

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModel.from_pretrained(model_dir, use_safetensors=True, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)

    def features(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    with torch.inference_mode():
        prompts = processor(text=[f"a photo of a {label}" for label in LABELS] + QUERIES, return_tensors="pt", padding=True).to(device)
        text = features(model.get_text_features(**prompts)).float()
        text = text / text.norm(dim=-1, keepdim=True)
        labels, queries = text[: len(LABELS)], text[len(LABELS) :]
        scale = model.logit_scale.exp()
        out = []
        for start in range(0, len(uris), batch_size):
            images = [load_image(u) for u in uris[start : start + batch_size]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device, dtype)
            image = features(model.get_image_features(pixel_values=pixels)).float()
            image = image / image.norm(dim=-1, keepdim=True)
            tokens = processor(text=captions[start : start + batch_size], return_tensors="pt", padding=True, truncation=True).to(device)
            caption = features(model.get_text_features(**tokens)).float()
            caption = caption / caption.norm(dim=-1, keepdim=True)
            probabilities = (scale * image @ labels.T).softmax(dim=-1)
            out.append(torch.cat([probabilities, (image * caption).sum(-1, keepdim=True), image @ queries.T], dim=1).cpu().numpy())
    return np.concatenate(out)


def ours(model_dir: str, pool: pl.DataFrame, batch_size: int, device: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    audit = AuditSection(model=model_dir, labels=LABELS, queries=QUERIES, batch_size=batch_size)
    embedder = ClipEmbedder.load(model_dir, device=device)
    predictions = predict(pool, audit, embedder, load_image)
    retrieval = retrieval_scores(pool, audit.queries, embedder, load_image, batch_size=batch_size)
    return predictions, retrieval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side; the fastest counts")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fp16 on CUDA, as the library runs)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = str(build_tiny_clip(root / "clip"))
        image_dir = root / "images"
        image_dir.mkdir()
        paths = write_images(image_dir, args.images, args.image_size)
        pool = make_pool(paths)
        uris = pool["image_uri"].to_list()
        captions = pool["caption"].to_list()

        ours_times, base_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            reference = baseline(model_dir, uris, captions, args.batch_size, args.device)
            base_times.append(time.perf_counter() - start)

            clear_caches()  # cold: load the model and embed every image again
            start = time.perf_counter()
            predictions, retrieval = ours(model_dir, pool, args.batch_size, args.device)
            ours_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        ours(model_dir, pool, args.batch_size, args.device)
        warm = time.perf_counter() - start

        # Same numbers on both sides, or the comparison means nothing.
        scores = predictions.select([f"score_{label}" for label in LABELS]).to_numpy()
        tolerance = 1e-2 if args.device.startswith("cuda") else 1e-4  # fp16 on CUDA
        np.testing.assert_allclose(scores, reference[:, : len(LABELS)], atol=tolerance)
        np.testing.assert_allclose(predictions["caption_similarity"].to_numpy(), reference[:, len(LABELS)], atol=tolerance)
        first_query = retrieval.filter(pl.col("query") == QUERIES[0]).sort("id")
        expected = pl.DataFrame({"id": pool["id"], "score": reference[:, len(LABELS) + 1]}).sort("id")
        np.testing.assert_allclose(first_query["score"].to_numpy(), expected["score"].to_numpy(), atol=tolerance)

    ours_s, baseline_s = min(ours_times), min(base_times)
    load_after = os.getloadavg()[0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device}  images: {len(uris)}  batch size: {args.batch_size}  image size: {args.image_size}px  torch threads: {torch.get_num_threads()}")
    print(f"baseline runs (s): {', '.join(f'{t:.2f}' for t in base_times)}")
    print(f"ours runs (s):     {', '.join(f'{t:.2f}' for t in ours_times)}")
    print(f"warm rerun (s):    {warm:.2f}")
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs")
    print(json.dumps({
        "bench": "evaluate", "ours_s": round(ours_s, 3), "baseline_s": round(baseline_s, 3),
        "ratio": round(baseline_s / ours_s, 3), "warm_rerun_s": round(warm, 3), "images": len(uris),
        "batch_size": args.batch_size, "device": device, "load_avg": [round(load_before, 2), round(load_after, 2)],
    }))


if __name__ == "__main__":
    main()
