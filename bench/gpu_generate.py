"""GPU benchmark: bench/generate.py's comparison at Stable Diffusion 1.5's size, 512×512, fp16.

Builds a random-weight pipeline with SD 1.5's shapes in memory (UNet block_out_channels
(320, 640, 1280, 1280), cross_attention_dim 768, a ViT-L/14-size CLIP text encoder, SD's VAE; the
inpainting UNet with 9 input channels), saves it as safetensors in a temporary folder (no
downloads), then times our ``generate_batch`` over batches against the bare diffusers loop on the
same items, side by side, and a warm rerun of ours. With ``--notebook`` (the default on CUDA) it
also times the loop a notebook user writes — the pipeline loaded once in fp32, one item per call —
and reports ``speedup_vs_notebook`` = notebook / ours (target ≥ 3× for our batched fp16 path).
Random weights make noise images; the timings are what count.

    python bench/gpu_generate.py                         # CUDA, img2img, 32 items, 20 steps, batch 8
    python bench/gpu_generate.py --method all            # every method, one JSON line each, then a summary
    python bench/gpu_generate.py --method text2image-sets --items 64
    python bench/gpu_generate.py --device cpu --small    # smoke test of the script on a CPU

Imports only torch, diffusers, transformers, PIL and the parts of counterfactual_lab that need
nothing else (plan, diffusion_loading, model_safety, errors, generation, masks, text2image_sets,
tiny_models' tokenizer); the real ``GenerationSection`` (pydantic) and ``ImageStore`` (fsspec) are
used when installed, else bench/generate.py's stand-ins with the same contract. Last line JSON,
as bench/generate.py, with ``"bench": "gpu_generate"`` and the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import METHODS, compare  # noqa: E402  (bench/generate.py)

from counterfactual_lab.models.devices import dtype_for, resolve_device
from counterfactual_lab.demo.tiny_parts import build_tiny_tokenizer  # noqa: E402
from counterfactual_lab.config.methods import METHODS as METHOD_FACTS  # noqa: E402

SD15 = dict(
    unet_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    vae_channels=(128, 256, 512, 512), text_hidden=768, text_layers=12, text_heads=12,
    text_intermediate=3072, vocab_size=49408,
)
# UNet input channels: InstructPix2Pix adds the source latents, inpainting the mask and masked-image latents.
IN_CHANNELS = {"instruct-pix2pix": 8, "inpaint": 9}
SMALL = dict(
    unet_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32,
    vae_channels=(32, 32, 64, 64), text_hidden=32, text_layers=2, text_heads=4,
    text_intermediate=64, vocab_size=49408,
)


def build_sd15_like(directory: Path, method: str, shapes: dict, device: torch.device, seed: int = 0) -> Path:
    """Save a random-weight SD 1.5-shaped pipeline for ``method`` in ``directory`` (safetensors)."""
    import diffusers
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tiny_tokenizer(directory / "_tokenizer")  # offline; the vocabulary size is immaterial
    dtype = dtype_for(device)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the accelerator: SD-size random init on a CPU is slow
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=IN_CHANNELS.get(method, 4), out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=shapes["unet_channels"], layers_per_block=shapes["layers_per_block"],
            cross_attention_dim=shapes["cross_attention_dim"], attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=shapes["vae_channels"], layers_per_block=2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=shapes["vocab_size"], hidden_size=shapes["text_hidden"],
            intermediate_size=shapes["text_intermediate"], num_hidden_layers=shapes["text_layers"],
            num_attention_heads=shapes["text_heads"], max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    cls = getattr(diffusers, METHOD_FACTS[method].pipeline_class)
    if dtype != torch.float32:
        unet, vae, text_encoder = unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)
    pipeline = cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory / "model", safe_serialization=True)
    del pipeline, unet, vae, text_encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return directory / "model"


def run_method(method: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One method's comparison on a freshly built SD 1.5-shaped (or small) random-weight model."""
    small = args.small
    size = 64 if small else 512
    items = args.items or (4 if small else 32)
    steps = args.steps or (2 if small else 20)
    batch_size = args.batch_size or (2 if small else 8)
    repeats = args.repeats or (1 if small else 2)
    notebook = device.type == "cuda" if args.notebook is None else args.notebook
    work = Path(tempfile.mkdtemp(prefix="cflab-bench-gpu-generate-"))
    try:
        started = time.perf_counter()
        model_dir = build_sd15_like(work, method, SMALL if small else SD15, device)
        build_s = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = compare(
            str(model_dir), method=method, items_count=items, size=size, steps=steps,
            batch_size=batch_size, device=str(device), repeats=repeats, work=work, notebook=notebook,
            extra={"model": "random weights, " + ("small smoke-test shapes" if small else "Stable Diffusion 1.5 shapes"),
                   "build_s": round(build_s, 1)},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["bench"] = "gpu_generate"
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a small model, 64 px, 2 steps, 4 items: a smoke test")
    parser.add_argument("--method", default="img2img", choices=[*METHODS, "all"])
    parser.add_argument("--items", type=int, default=None, help="default 32 (4 with --small)")
    parser.add_argument("--steps", type=int, default=None, help="default 20 (2 with --small)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (2 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating runs per side, default 2 (1 with --small)")
    parser.add_argument("--notebook", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the notebook loop (fp32, batch 1); default on for CUDA")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    methods = list(METHODS) if args.method == "all" else [args.method]
    results = []
    for method in methods:
        result = run_method(method, args, device)
        print(json.dumps(result), flush=True)
        results.append(result)
    if len(results) == 1:
        return results[0]
    summary = {
        "bench": "gpu_generate_summary",
        "device_name": results[0]["device_name"],
        "ratio": {r["method"]: r["ratio"] for r in results},
        "speedup_vs_notebook": {r["method"]: r.get("speedup_vs_notebook") for r in results},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
