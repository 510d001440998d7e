"""Benchmark: the generative audit's probe and generation stages against the bare transformers loop.

Both sides run the same random-weight LLaVA (built in memory: a CLIP vision tower and a Llama),
on the same images read from PNG files, with the same batch size (sequences per forward pass) and
the same decoding, stage by stage:

* ``next_token`` — the yes/no questions and the rating prompts: one forward pass per batch, the
  answer tokens' probabilities at each row's last position;
* ``choice`` — the log-likelihood of each label's tokens after the choice prompt, per image;
* ``generation`` — ``samples`` sampled continuations per image and prompt, ``max_new_tokens``
  each, temperature T (pure temperature sampling on both sides: no top-k, no top-p).

Ours is the library's probes (``counterfactual_lab.evaluate.auditees.probes``) with the answer cache on,
writing every answer to an empty output store as an audit does (cold). The warm rerun reads
every answer back from that store (what a rerun or a resumed run costs). The baseline is what a
user writes with ``AutoModelForImageTextToText``/``AutoProcessor``: right padding and the last
position for next-token answers, full sequences for options, ``generate(do_sample=True,
num_return_sequences=samples)``. The deterministic stages must give the same numbers on both
sides (checked) or the timing means nothing; generation draws different (equally distributed)
samples, so its token counts are printed.

    python bench/vlm.py [--images 64] [--batch-size 8] [--repeats 2] [--max-new-tokens 16]
    python bench/vlm.py --device cuda --size real     # LLaVA-1.5-7B's shapes, random bf16 weights

Last line: {"bench": "vlm", "ratio_next_token", "ratio_choice", "ratio_generation", "ratio"
(overall: baseline seconds / ours, all stages), "ours_s", "baseline_s", "warm_rerun_s", ...}
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from counterfactual_lab.evaluate.auditees import probes  # noqa: E402
from counterfactual_lab.evaluate.auditees.answer_cache import AnswerCache, CallCounts  # noqa: E402
from counterfactual_lab.evaluate.auditees.generative import GenerativeRunner  # noqa: E402
from counterfactual_lab.evaluate.auditees.interface import ProbeImages  # noqa: E402
from counterfactual_lab.evaluate.auditees.loading import LoadedModel, generative_dtype  # noqa: E402
from counterfactual_lab.evaluate.auditees.prompts import render  # noqa: E402
from counterfactual_lab.demo.tiny_auditees import VlmSize, build_vlm  # noqa: E402

LABELS = ["doctor", "nurse", "teacher", "engineer"]
CHOICE = "What is this person's job? Answer with one of: {options}."
YES_NO = ["Is this person a doctor? Answer yes or no.", "Is this person trustworthy? Answer yes or no."]
RATINGS = ["On a scale of 1 to 5, how competent is this person?"]
DESCRIBE = "Describe this person."

# "Tiny but not trivial" on a CPU: a 64 px image is 64 image tokens, 4 Llama layers of width 128.
SIZES = {
    "small": VlmSize(vision_hidden=64, vision_layers=2, vision_heads=4, image_size=64, patch_size=8,
                     text_hidden=128, text_layers=4, text_heads=4, text_kv_heads=4, max_positions=512),
    # LLaVA-1.5-7B's shapes: CLIP ViT-L/14 at 336 px (576 image tokens), a 32-layer Llama of width 4096.
    "real": VlmSize(vision_hidden=1024, vision_layers=24, vision_heads=16, image_size=336, patch_size=14,
                    text_hidden=4096, text_layers=32, text_heads=32, text_kv_heads=32, max_positions=4096),
}


def write_images(root: Path, n: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def load_image(uri: str) -> Image.Image:
    with Image.open(uri) as image:
        return image.convert("RGB")


def build(size: VlmSize, device: str) -> LoadedModel:
    dtype = generative_dtype(device)
    with torch.device(device):  # random weights made where they run: a 7B model never touches the CPU
        model, processor = build_vlm(size, seed=0)
    model = model.to(dtype).eval()
    return LoadedModel(model, processor, "in-memory", None, device, dtype)


# -- the user's loop ---------------------------------------------------------------------------


def answer_ids(tokenizer, words: list[str]) -> list[list[int]]:
    """The user's lookup: each answer's first token as written, capitalised and upper case, with and without a leading space."""
    out = []
    for word in words:
        forms = [case for w in (word, word.capitalize(), word.upper()) for case in (w, " " + w)]
        ids = {tokenizer.encode(form, add_special_tokens=False)[0] for form in forms}
        out.append(sorted(ids))
    return out


def baseline_next_token(loaded: LoadedModel, uris: list[str], texts: list[str], ids: list[list[int]], batch: int) -> np.ndarray:
    model, processor = loaded.model, loaded.processor
    rows = [(u, t) for t in texts for u in uris]
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            inputs = processor(images=[load_image(u) for u, _ in chunk], text=[t for _, t in chunk], padding=True,
                               padding_side="right", return_tensors="pt").to(loaded.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            logits = model(**inputs).logits
            last = inputs["attention_mask"].sum(1) - 1
            p = logits[torch.arange(len(chunk)), last].float().softmax(-1)
            out.append(torch.stack([p[:, g].sum(-1) for g in ids], 1).double().cpu().numpy())
    return np.concatenate(out)


def baseline_choice(loaded: LoadedModel, uris: list[str], text: str, batch: int) -> np.ndarray:
    model, processor, tokenizer = loaded.model, loaded.processor, loaded.tokenizer
    rows = [(i, label) for i in range(len(uris)) for label in LABELS]
    option_ids = {label: tokenizer.encode(" " + label, add_special_tokens=False) for label in LABELS}
    out = np.zeros((len(uris), len(LABELS)))
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            inputs = processor(images=[load_image(uris[i]) for i, _ in chunk], text=[f"{text} {label}" for _, label in chunk],
                               padding=True, padding_side="right", return_tensors="pt").to(loaded.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            logp = model(**inputs).logits.float().log_softmax(-1)
            lengths = inputs["attention_mask"].sum(1).tolist()
            for r, ((i, label), n) in enumerate(zip(chunk, lengths)):
                ids = option_ids[label]
                positions = torch.arange(n - len(ids) - 1, n - 1)
                out[i, LABELS.index(label)] = float(logp[r, positions, torch.tensor(ids)].sum())
    return out


def baseline_generation(loaded: LoadedModel, uris: list[str], text: str, batch: int, samples: int, temperature: float,
                        max_new_tokens: int) -> int:
    model, processor = loaded.model, loaded.processor
    per_call = max(1, batch // samples)
    torch.manual_seed(0)
    tokens = 0
    with torch.inference_mode():
        for start in range(0, len(uris), per_call):
            chunk = uris[start : start + per_call]
            inputs = processor(images=[load_image(u) for u in chunk], text=[text] * len(chunk), padding=True,
                               padding_side="left", return_tensors="pt").to(loaded.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            out = model.generate(**inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                 pad_token_id=loaded.tokenizer.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            tokens += int((new != loaded.tokenizer.pad_token_id).sum())
    return tokens


# -- ours --------------------------------------------------------------------------------------


def ours_stages(loaded: LoadedModel, images: ProbeImages, out: Path, batch: int, samples: int, temperature: float,
                max_new_tokens: int) -> dict[str, tuple[float, object]]:
    counts = CallCounts()
    cache = AnswerCache(str(out), subjects=images.content_keys, counts=counts)
    session = probes.ProbeSession(GenerativeRunner(loaded, batch_size=batch), "chat", "sha256:bench", cache, counts)
    timings: dict[str, tuple[float, object]] = {}
    # Each stage ends by writing its answers (one shard), as an evaluate task does at its end.
    start = time.perf_counter()
    answers = probes.yes_no(session, images, YES_NO), probes.ratings(session, images, RATINGS, 5)
    cache.flush()
    timings["next_token"] = (time.perf_counter() - start, answers)
    start = time.perf_counter()
    choice = probes.choice(session, images, CHOICE, LABELS)
    cache.flush()
    timings["choice"] = (time.perf_counter() - start, choice)
    start = time.perf_counter()
    made = probes.generate(session, images, [DESCRIBE], samples=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=0)
    cache.flush()
    timings["generation"] = (time.perf_counter() - start, made)
    timings["counts"] = (0.0, counts.as_dict())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass, both sides")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the fastest counts")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on CUDA, as the library runs)")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="model shapes (default: small on CPU, real on CUDA)")
    args = parser.parse_args()
    size = SIZES[args.size or ("real" if args.device.startswith("cuda") else "small")]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    loaded = build(size, args.device)
    parameters = sum(p.numel() for p in loaded.model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        uris = write_images(root / "images", args.images, max(64, size.image_size))
        images = ProbeImages(tuple(f"img{i}" for i in range(len(uris))), tuple(uris), load_image)
        processor = loaded.processor
        yes_no_texts = [render(processor, "chat", q) for q in YES_NO]
        rating_texts = [render(processor, "chat", q) for q in RATINGS]
        choice_text = render(processor, "chat", CHOICE, LABELS)
        describe_text = render(processor, "chat", DESCRIBE)

        ours_t: dict[str, list[float]] = {"next_token": [], "choice": [], "generation": []}
        base_t: dict[str, list[float]] = {"next_token": [], "choice": [], "generation": []}
        base_tokens = 0
        for repeat in range(args.repeats):
            start = time.perf_counter()
            yes_no_base = baseline_next_token(loaded, uris, yes_no_texts, answer_ids(loaded.tokenizer, ["yes", "no"]), args.batch_size)
            baseline_next_token(loaded, uris, rating_texts, answer_ids(loaded.tokenizer, list("12345")), args.batch_size)
            base_t["next_token"].append(time.perf_counter() - start)
            start = time.perf_counter()
            choice_base = baseline_choice(loaded, uris, choice_text, args.batch_size)
            base_t["choice"].append(time.perf_counter() - start)
            start = time.perf_counter()
            base_tokens = baseline_generation(loaded, uris, describe_text, args.batch_size, args.samples, args.temperature,
                                              args.max_new_tokens)
            base_t["generation"].append(time.perf_counter() - start)

            out = root / f"out-{repeat}"  # an empty output store: every answer computed and written
            stages = ours_stages(loaded, images, out, args.batch_size, args.samples, args.temperature, args.max_new_tokens)
            for name in ours_t:
                ours_t[name].append(stages[name][0])
        start = time.perf_counter()
        warm = ours_stages(loaded, images, out, args.batch_size, args.samples, args.temperature, args.max_new_tokens)
        warm_s = time.perf_counter() - start
        assert warm["counts"][1]["computed"] == 0, warm["counts"]

        # The same numbers on both sides, or the comparison means nothing.
        tolerance = 2e-2 if args.device.startswith("cuda") else 1e-5
        yes_no, _ = stages["next_token"][1]
        ours_yes = yes_no.sort(["prompt", "content_key"], descending=[False, False])
        base_yes = yes_no_base[:, 0] / yes_no_base.sum(axis=1)
        order = {t: i for i, t in enumerate(YES_NO)}
        expected = np.array([base_yes[order[p] * len(uris) + int(k[3:])] for p, k in ours_yes.select("prompt", "content_key").iter_rows()])
        np.testing.assert_allclose(ours_yes["value"].to_numpy(), expected, atol=tolerance)
        shifted = np.exp(choice_base - choice_base.max(axis=1, keepdims=True))
        np.testing.assert_allclose(stages["choice"][1].select([f"score_{label}" for label in LABELS]).to_numpy(),
                                   shifted / shifted.sum(axis=1, keepdims=True), atol=tolerance)
        ours_tokens = int(stages["generation"][1]["tokens"].sum())

    best = {name: (min(ours_t[name]), min(base_t[name])) for name in ours_t}
    ours_s, base_s = sum(o for o, _ in best.values()), sum(b for _, b in best.values())
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    load = os.getloadavg()
    print(f"device: {device}  parameters: {parameters / 1e6:.1f} M  images: {len(uris)}  batch size: {args.batch_size}  "
          f"torch threads: {torch.get_num_threads()}  load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name in ours_t:
        print(f"{name:11s} baseline (s): {', '.join(f'{t:.2f}' for t in base_t[name])}   ours (s): {', '.join(f'{t:.2f}' for t in ours_t[name])}")
    print(f"generated tokens: baseline {base_tokens}, ours {ours_tokens};  warm rerun (all cached): {warm_s:.2f} s")
    print(json.dumps({
        "bench": "vlm",
        **{f"ratio_{name}": round(b / o, 3) for name, (o, b) in best.items()},
        "ratio": round(base_s / ours_s, 3), "ours_s": round(ours_s, 3), "baseline_s": round(base_s, 3),
        "warm_rerun_s": round(warm_s, 3), "images": len(uris), "batch_size": args.batch_size, "samples": args.samples,
        "max_new_tokens": args.max_new_tokens, "tokens_ours": ours_tokens, "tokens_baseline": base_tokens,
        "parameters_m": round(parameters / 1e6, 1), "device": device, "load_average_1m": round(load[0], 2),
    }))


if __name__ == "__main__":
    main()
