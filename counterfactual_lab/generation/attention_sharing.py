"""Attention sharing between the members of a text-to-image counterfactual set (prompt-to-prompt).

Members of one set differ only in their attribute words ("a photo of a Black female doctor" vs
"a photo of a White male doctor"). With the same initial latents they still drift apart in
pose, framing and background, because every cross-attention map is recomputed from the new
prompt. Prompt-to-prompt (Hertz et al. 2022) fixes the layout by injecting the attention maps of
a *reference* prompt into the edited prompts during the first denoising steps. Here the reference
is the set's first member (each attribute's first configured value), and for each other member:

* **cross-attention** (``attention_sharing`` = the fraction of steps, prompt-to-prompt's
  ``cross_replace_steps``): the member's map for each token it shares with the reference (aligned
  by a longest-matching-blocks alignment of the two token sequences, BOS, EOS and padding
  included) is replaced by the reference's map for that token; the member's own tokens (its
  attribute words) keep their own maps (prompt-to-prompt's "refine" edit, which allows words of
  different token lengths: "White" vs "Middle Eastern");
* **self-attention** (``self_attention_sharing``, ``self_replace_steps``): in layers of at most
  16×16 positions (prompt-to-prompt's choice: the coarse layout), the member's whole self-attention
  map is replaced by the reference's.

Only the conditional half of a classifier-free-guidance batch is edited, as in prompt-to-prompt.
A member's image therefore depends on its prompt, the reference prompt, the seed and the model,
not on which other members share its pipeline call: a member generated alone gets the reference as
a hidden extra row (see :mod:`counterfactual_lab.generation.text2image`).

This is our own implementation over diffusers' attention-processor interface
(``UNet2DConditionModel.set_attn_processor``): each attention layer's original processor (SDPA)
runs whenever no injection is due; an injecting step computes the attention probabilities
explicitly, as diffusers' ``AttnProcessor`` does, and edits them before multiplying with the values.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

# Prompt-to-prompt replaces self-attention only in layers of at most 16×16 query positions.
MAX_SELF_SHARED_POSITIONS = 16 * 16


@dataclass(frozen=True)
class SharedRow:
    """One conditional batch row that takes attention maps from another row (its reference)."""

    row: int
    reference: int
    member_tokens: torch.Tensor  # positions in the member's token sequence ...
    reference_tokens: torch.Tensor  # ... aligned with these positions of the reference's


def token_alignment(reference_ids: list[int], member_ids: list[int], length: int) -> tuple[list[int], list[int]]:
    """(reference positions, member positions) of the tokens the two prompts share.

    ``*_ids``: the tokenized prompts without padding (BOS … EOS); ``length``: the padded sequence
    length the text encoder sees. Matching blocks of a ``difflib`` alignment pair the shared words
    (BOS and EOS included); the padding after each EOS is paired position by position.
    """
    matcher = difflib.SequenceMatcher(None, reference_ids, member_ids, autojunk=False)
    reference, member = [], []
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            if a + k < length and b + k < length:
                reference.append(a + k)
                member.append(b + k)
    tail = length - max(len(reference_ids), len(member_ids))
    for k in range(max(0, tail)):
        reference.append(len(reference_ids) + k)
        member.append(len(member_ids) + k)
    return reference, member


class AttentionSharing:
    """What one pipeline call shares: rows, step fractions, and the current denoising step.

    ``rows``: the conditional rows (0 … N−1 among the N prompts) that take maps from a
    reference row; ``steps``: denoising steps of the call. The step counter advances once per
    UNet call (a pre-forward hook, :meth:`attached`).
    """

    def __init__(self, rows: list[SharedRow], prompts: int, steps: int, cross: float, self_: float) -> None:
        self.rows = rows
        self.prompts = prompts
        self.cross_steps = int(steps * cross)
        self.self_steps = int(steps * self_)
        self.step = -1

    def active(self, is_cross: bool, positions: int) -> bool:
        if not self.rows or self.step < 0:
            return False
        if is_cross:
            return self.step < self.cross_steps
        return self.step < self.self_steps and positions <= MAX_SELF_SHARED_POSITIONS

    def edit(self, probabilities: torch.Tensor, heads: int, is_cross: bool) -> torch.Tensor:
        """Inject the reference rows' maps into ``probabilities`` (batch·heads, queries, keys)."""
        batch = probabilities.shape[0] // heads
        probs = probabilities.view(batch, heads, *probabilities.shape[1:])
        # [uncond … , cond …] under classifier-free guidance; only the conditional half is edited.
        offset = batch - self.prompts
        edited = probs.clone()
        for shared in self.rows:
            member, reference = offset + shared.row, offset + shared.reference
            if is_cross:
                columns = shared.member_tokens.to(probs.device)
                source = probs[reference].index_select(-1, shared.reference_tokens.to(probs.device))
                edited[member].index_copy_(-1, columns, source)
            else:
                edited[member] = probs[reference]
        return edited.view_as(probabilities)

    @contextlib.contextmanager
    def attached(self, unet: Any) -> Iterator[None]:
        """Install the sharing processors on ``unet`` (and the step counter) for the duration."""
        originals = dict(unet.attn_processors)
        unet.set_attn_processor({name: SharedAttentionProcessor(self, original) for name, original in originals.items()})

        def count_step(_module: Any, _args: Any) -> None:
            self.step += 1

        hook = unet.register_forward_pre_hook(count_step)
        try:
            yield
        finally:
            hook.remove()
            unet.set_attn_processor(originals)


class SharedAttentionProcessor:
    """A diffusers attention processor: the layer's own processor, unless an injection is due."""

    def __init__(self, sharing: AttentionSharing, original: Any) -> None:
        self.sharing = sharing
        self.original = original

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        positions = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[-1] * hidden_states.shape[-2]
        if not self.sharing.active(is_cross, positions):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._explicit(attn, hidden_states, encoder_hidden_states, attention_mask, temb, is_cross)

    def _explicit(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, is_cross):
        # diffusers' AttnProcessor, with the probabilities edited before they weight the values.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probabilities = attn.get_attention_scores(query, key, attention_mask)
        probabilities = self.sharing.edit(probabilities, attn.heads, is_cross)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
