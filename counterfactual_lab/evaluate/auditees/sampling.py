"""Sampling that depends on nothing but the sequence's own seed: the same text in any batch.

``generate`` samples with one random generator for the whole batch, so which text a sequence
gets depends on which other sequences share its batch and in what order. Here every sequence
carries its own seed (:func:`sequence_seed`: a hash of the base seed, the image content key, the
prompt and the sample index), and its token at step s is drawn by the **Gumbel-max trick** with
**counter-based** noise:

    token = argmax_v ( logits_v / T + G(seed, s, v) ),   G = −log(−log U(seed, s, v))

which is an exact draw from softmax(logits / T). U is computed, not drawn: a splitmix64 hash of
(seed, step, token id) in 64-bit integer arithmetic (wrapping, identical on CPU and GPU), its top
24 bits mapped into (0, 1). A sequence's noise therefore does not depend on the batch, the
device, or any global random state; its logits depend on the batch only through padding, which
the attention mask removes (up to floating-point summation order, which can only matter between
two tokens whose perturbed scores tie to the last bit). ``generate`` runs greedy
(``do_sample=False``) with :class:`CounterNoiseSampler` as its logits processor.
Temperature 0 is plain greedy decoding: no noise.
"""

from __future__ import annotations

import hashlib

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def sequence_seed(base_seed: int, content_key: str, prompt: str, sample: int) -> int:
    """The seed of one (image, prompt, sample): 62 bits of sha256 over the four, so seeds never collide in practice."""
    digest = hashlib.sha256(f"{base_seed}\x00{content_key}\x00{prompt}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (two's-complement wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def counter_uniform(seeds: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """U(seed, step, v) in (0, 1) for each seed (rows) and token id v (columns), float32."""
    seeds = seeds.to(torch.int64)
    row = splitmix64(seeds + _signed(step * 0x632BE59BD9B4E019))  # one stream per (seed, step)
    tokens = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    bits = _shift_right(splitmix64(row[:, None] ^ (tokens[None, :] * _GOLDEN)), 40)  # top 24 bits
    return (bits.to(torch.float32) + 0.5) / float(1 << 24)


class CounterNoiseSampler:
    """A ``generate`` logits processor: Gumbel-max sampling with per-sequence counter-based noise.

    ``seeds``: one per batch row; the step is counted by the calls, not read off the sequence
    length (a captioner's ``generate`` may rewrite its prompt: BLIP swaps in its decoder's start
    token and drops the trailing separator), so ``steps`` also says how many tokens are new; ``forbidden``: token ids the model may not emit
    (its image placeholder); ``temperature`` 0: no noise (greedy).
    """

    def __init__(self, seeds: list[int], temperature: float, forbidden: list[int] = ()) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.temperature = float(temperature)
        self.forbidden = list(forbidden)
        self.steps = 0  # tokens generated so far: how many of a sequence's last tokens are new

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps += 1
        scores = scores.float()
        if self.forbidden:
            scores[:, self.forbidden] = -torch.inf
        if self.temperature == 0:
            return scores
        step = self.steps - 1
        uniform = counter_uniform(self.seeds.to(scores.device), step, scores.shape[1])
        gumbel = -torch.log(-torch.log(uniform))
        return scores / self.temperature + gumbel
