"""The parts every tiny random-weight model shares: its sizes and an offline CLIP tokenizer.

No machine here reaches a model hub, so the project builds its own stand-ins
(:mod:`counterfactual_lab.demo.tiny_models`); this module holds what they have in common.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    # here, not at the top: it imports transformers
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


def tokenizer_in_memory():

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_tokenizer(tmp)
    return tokenizer


def clip_text_config(tokenizer, size: DiffusionSize, **overrides):
    # here, not at the top: it imports transformers
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
