"""Tiny, seeded, random-weight models built offline, for tests, the demo and benchmarks.

No machine here reaches a model hub, so the project builds its own stand-ins and saves them
with ``save_pretrained`` (safetensors). They load back through exactly the same
``from_pretrained`` code path as real models, so the loading code stays real:

* ``instruct-pix2pix``: ``StableDiffusionInstructPix2PixPipeline`` (UNet with 8 input channels:
  noisy latents + the source image's latents);
* ``img2img``: ``StableDiffusionImg2ImgPipeline`` (SDEdit);
* ``ledits``: ``LEditsPPPipelineStableDiffusion`` with a ``DPMSolverMultistepScheduler``
  (``sde-dpmsolver++``, order 2), one of the two schedulers LEDITS++ accepts;
* ``clip``: a transformers ``CLIPModel`` + ``CLIPProcessor`` for the judge and the audit.

LEDITS++ builds its edit masks from cross-attention maps at a quarter of the latent size, so
every tiny UNet has three resolution levels with cross-attention at the third; with two levels
the pipeline fails. The images these models make are noise: they test plumbing, not quality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_MODEL_NAMES = ("instruct-pix2pix", "img2img", "ledits", "clip")
# Built by `cflab models tiny` beyond the demo's four: text2image, inpaint, clipseg
# (builders in counterfactual_lab/tiny_generators.py).
GENERATOR_MODEL_NAMES = ("text2image", "inpaint", "clipseg")
# And the generative audit's: a VLM and a toxicity classifier (builders in counterfactual_lab/auditees/tiny.py).
AUDITEE_MODEL_NAMES = ("vlm", "toxicity")
ALL_TINY_MODEL_NAMES = TINY_MODEL_NAMES + GENERATOR_MODEL_NAMES + AUDITEE_MODEL_NAMES
# Written into every tiny model folder, so reports can say their numbers mean nothing.
TINY_MARKER = "CFLAB_TINY_RANDOM_WEIGHTS"
DIFFUSION_METHODS = ("instruct-pix2pix", "img2img", "ledits")

# Words the tiny tokenizer knows as whole tokens; anything else falls back to letters.
_COMMON_WORDS = (
    "a an the of in on at with and to is are photo picture image portrait person people "
    "man woman men women boy girl he she his her him father mother son daughter husband wife "
    "actor actress male female young old elderly middle aged child adult senior teenager "
    "black white asian indian latino hispanic middle eastern doctor nurse teacher engineer "
    "make into turn change face smiling standing sitting wearing shirt hat street park"
).split()


@dataclass(frozen=True)
class DiffusionSize:
    """Layer widths of a random-weight Stable Diffusion-like pipeline."""

    unet_channels: tuple[int, int, int] = (16, 32, 32)
    layers_per_block: int = 1
    norm_groups: int = 8
    attention_head_dim: int = 8
    vae_channels: tuple[int, ...] = (16, 32)  # two levels: latents are half the image side
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4


TINY = DiffusionSize()
# "Tiny but not trivial": enough work per step that orchestration overhead is measurable
# against real compute (used by bench/generate.py).
SMALL = DiffusionSize(
    unet_channels=(32, 64, 64), layers_per_block=2, norm_groups=16, attention_head_dim=8,
    vae_channels=(32, 64), text_hidden=64, text_layers=4, text_heads=4,
)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (the alphabet of its byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-format BPE vocabulary: every byte symbol (alone and word-final), plus merges
    that build each common word left to right, so common words are single tokens."""
    symbols = list(_bytes_to_unicode().values())
    tokens: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen_tokens = set(tokens)
    seen_merges: set[str] = set()
    for word in dict.fromkeys(_COMMON_WORDS):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            current = current + piece
            if merge not in seen_merges:
                seen_merges.add(merge)
                merges.append(merge)
            if current not in seen_tokens:
                seen_tokens.add(current)
                tokens.append(current)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tiny_tokenizer(directory: str | Path):
    """Write an offline ``CLIPTokenizer`` (vocab.json + merges.txt, 77 tokens) to ``directory``."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
    tokenizer.save_pretrained(directory)
    return tokenizer


def _tokenizer_in_memory():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_tokenizer(tmp)
    return tokenizer


def _text_config(tokenizer, size: DiffusionSize, **overrides):
    from transformers import CLIPTextConfig

    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_hidden * 2,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(overrides)
    return CLIPTextConfig(**fields)


def build_diffusion_pipeline(method: str, seed: int = 0, size: DiffusionSize = TINY, tokenizer=None):
    """A random-weight pipeline for ``method``, in memory (seeded: same seed, same weights)."""
    from counterfactual_lab.image_processors import prefer_pil_image_processors

    prefer_pil_image_processors()  # before diffusers and transformers name them: no torchvision warning
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        LEditsPPPipelineStableDiffusion,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    if method not in DIFFUSION_METHODS:
        raise ValueError(f"unknown generation method {method!r}; expected one of {list(DIFFUSION_METHODS)}")
    tokenizer = tokenizer or _tokenizer_in_memory()
    torch.manual_seed(seed)
    c1, c2, c3 = size.unet_channels
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8 if method == "instruct-pix2pix" else 4,
        out_channels=4,
        block_out_channels=(c1, c2, c3),
        layers_per_block=size.layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=size.text_hidden,
        attention_head_dim=size.attention_head_dim,
        norm_num_groups=size.norm_groups,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(size.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(size.vae_channels),
        latent_channels=4,
        norm_num_groups=size.norm_groups,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, size))
    sd_schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    common = dict(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        safety_checker=None, feature_extractor=None,
    )
    if method == "instruct-pix2pix":
        # (EulerAncestral, the original's choice, warns under numpy 2 in diffusers 0.42.)
        scheduler = DDIMScheduler(**sd_schedule, clip_sample=False, set_alpha_to_one=False)
        return StableDiffusionInstructPix2PixPipeline(**common, scheduler=scheduler, requires_safety_checker=False)
    if method == "img2img":
        scheduler = DDIMScheduler(**sd_schedule, clip_sample=False, set_alpha_to_one=False)
        return StableDiffusionImg2ImgPipeline(**common, scheduler=scheduler, requires_safety_checker=False)
    scheduler = DPMSolverMultistepScheduler(**sd_schedule, algorithm_type="sde-dpmsolver++", solver_order=2)
    common.pop("feature_extractor")
    return LEditsPPPipelineStableDiffusion(
        **common, scheduler=scheduler, feature_extractor=None, requires_safety_checker=False
    )


def build_tiny_diffusion(method: str, directory: str | Path, seed: int = 0, size: DiffusionSize = TINY) -> Path:
    """Build and save (safetensors) a random-weight pipeline for ``method`` in ``directory``."""
    directory = Path(directory)
    pipeline = build_diffusion_pipeline(method, seed=seed, size=size)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random-weight ``CLIPModel`` with its processor in ``directory``.

    ``AutoModel.from_pretrained(directory)`` and ``AutoProcessor.from_pretrained(directory)``
    load it back.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(directory)
    text_config = _text_config(tokenizer, TINY)
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, num_channels=3,
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(directory, safe_serialization=True)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def _is_built(directory: Path, name: str) -> bool:
    marker = "config.json" if name in ("clip", "clipseg") else "model_index.json"
    return (directory / marker).exists() and any(directory.rglob("*.safetensors"))


def build_tiny_models(root: str | Path, seed: int = 0, names: tuple[str, ...] = TINY_MODEL_NAMES) -> dict[str, Path]:
    """Build the tiny models ``names`` under ``root/<name>`` (skipping folders already built).

    Returns ``{name: folder}``; by default the demo's four (``{"instruct-pix2pix", "img2img",
    "ledits", "clip"}``), :data:`ALL_TINY_MODEL_NAMES` adds ``text2image``, ``inpaint``,
    ``clipseg`` (:mod:`counterfactual_lab.tiny_generators`), ``vlm`` and ``toxicity``
    (:mod:`counterfactual_lab.auditees.tiny`). Idempotent: a second call with the same root
    builds nothing.
    """
    from counterfactual_lab.image_processors import prefer_pil_image_processors

    prefer_pil_image_processors()  # no "requires torchvision" warning without torchvision
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    unknown = sorted(set(names) - set(ALL_TINY_MODEL_NAMES))
    if unknown:
        raise ValueError(f"unknown tiny model(s) {unknown}; expected some of {list(ALL_TINY_MODEL_NAMES)}")
    auditees = [name for name in names if name in AUDITEE_MODEL_NAMES]
    for name in names:
        if name in AUDITEE_MODEL_NAMES:
            continue
        directory = root / name
        if not _is_built(directory, name):
            if name in GENERATOR_MODEL_NAMES:
                from counterfactual_lab.tiny_generators import BUILDERS

                BUILDERS[name](directory, seed=seed)
            elif name == "clip":
                build_tiny_clip(directory, seed=seed)
            else:
                build_tiny_diffusion(name, directory, seed=seed)
            (directory / TINY_MARKER).write_text(
                "Random weights built by `cflab models tiny`: outputs and metrics mean nothing.\n"
            )
        built[name] = directory
    if auditees:  # vlm, toxicity: the generative audit's (auditees/tiny.py)
        from counterfactual_lab.auditees.tiny import build_tiny_auditee_models

        built.update({n: d for n, d in build_tiny_auditee_models(root, seed=seed, names=tuple(auditees)).items()})
    return {name: built[name] for name in names}
