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

import numpy as np
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


def counter_uniform(seeds: torch.Tensor, step: int, vocab_size: int, mix: torch.Tensor | None = None) -> torch.Tensor:
    """U(seed, step, v) in (0, 1) for each seed (rows) and token id v (columns), float32.

    ``mix``: :func:`token_mix` of ``vocab_size`` on the seeds' device, when the caller keeps it (a
    sampler asks once per step; the values are the same either way). On the CPU the hash runs in
    NumPy's unsigned 64-bit arithmetic (the same bits: wrapping multiplication, logical shifts),
    with half the operations torch's signed int64 needs and less overhead per call: a sampler
    calls it once per generated token."""
    seeds = seeds.to(torch.int64)
    if mix is None:
        mix = token_mix(vocab_size, seeds.device)
    bits = (_counter_bits_numpy if seeds.device.type == "cpu" else _counter_bits_torch)(seeds, step, mix)
    return bits.to(torch.float32).add_(0.5).div_(float(1 << 24))


def _counter_bits_torch(seeds: torch.Tensor, step: int, mix: torch.Tensor) -> torch.Tensor:
    """The top 24 bits of the (rows, V) hash in torch's int64 arithmetic (any device)."""
    row = splitmix64(seeds + _row_offset(step))  # one stream per (seed, step)
    bits = _splitmix64_(row[:, None] ^ mix[None, :])  # a fresh (rows, V) tensor, mixed in place
    return _shift_right(bits, 40)


def _row_offset(step: int) -> int:
    return _signed(step * 0x632BE59BD9B4E019)


_U64_GOLDEN, _U64_MIX1, _U64_MIX2 = (np.uint64(value & _MASK64) for value in (_GOLDEN, _MIX1, _MIX2))


def _splitmix64_numpy_(z: np.ndarray) -> np.ndarray:
    """:func:`splitmix64` of a uint64 array, in place."""
    z += _U64_GOLDEN
    z ^= z >> np.uint64(30)
    z *= _U64_MIX1
    z ^= z >> np.uint64(27)
    z *= _U64_MIX2
    z ^= z >> np.uint64(31)
    return z


def _counter_bits_numpy(seeds: torch.Tensor, step: int, mix: torch.Tensor) -> torch.Tensor:
    """:func:`_counter_bits_torch` in NumPy's uint64 arithmetic (CPU tensors only): the same bits."""
    with np.errstate(over="ignore"):  # wrapping is the arithmetic meant
        row = _splitmix64_numpy_(seeds.numpy().view(np.uint64) + np.uint64(_row_offset(step) & _MASK64))
        bits = _splitmix64_numpy_(row[:, None] ^ mix.numpy().view(np.uint64)[None, :])
    return torch.from_numpy((bits >> np.uint64(40)).view(np.int64))


def token_mix(vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """Each token id times the golden-ratio constant (int64, wrapping): the per-column half of the noise's counter."""
    return torch.arange(vocab_size, device=device, dtype=torch.int64) * _GOLDEN


def _splitmix64_(z: torch.Tensor) -> torch.Tensor:
    """:func:`splitmix64` of ``z``, computed in place (one (rows, V) tensor, no temporaries but the shifts)."""
    z.add_(_GOLDEN)
    z.bitwise_xor_(_shift_right(z, 30)).mul_(_MIX1)
    z.bitwise_xor_(_shift_right(z, 27)).mul_(_MIX2)
    return z.bitwise_xor_(_shift_right(z, 31))


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
        self._token_mix: torch.Tensor | None = None  # token_mix of the vocabulary, made at the first step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps += 1
        scores = scores.float()
        if self.forbidden:
            scores[:, self.forbidden] = -torch.inf
        if self.temperature == 0:
            return scores
        step = self.steps - 1
        if self._token_mix is None or self._token_mix.shape[0] != scores.shape[1] or self._token_mix.device != scores.device:
            self._token_mix = token_mix(scores.shape[1], scores.device)
            self.seeds = self.seeds.to(scores.device)
        uniform = counter_uniform(self.seeds, step, scores.shape[1], self._token_mix)
        gumbel = uniform.log_().neg_().log_().neg_()  # -log(-log U), in place
        return scores.div_(self.temperature).add_(gumbel)
