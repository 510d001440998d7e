"""The forward passes of a generative model under audit, batched: no caching, no config.

:class:`GenerativeRunner` turns (image, prompt text) rows into what the probes read:

* :meth:`~GenerativeRunner.answer_sums` — for each row, the next-token probability summed over
  each group of answer token ids (:mod:`.answers`): one forward pass per batch;
* :meth:`~GenerativeRunner.option_logliks` — for each row and option, log p(option tokens |
  image, prompt) = Σ_t log p(o_t | image, prompt, o_<t): each (image, prompt) prefix runs once
  and its KV cache is repeated for the options, whose tokens alone run again (checked once per
  runner against full passes, which are the fallback);
* :meth:`~GenerativeRunner.generate` — sampled continuations (:mod:`.sampling`) with the KV cache.

Each batch is padded once, by the processor, to its longest row. The probes pad on the right:
every row's tokens then sit at positions 0…n−1 whatever the batch, so no model needs position
ids derived from a mask, and only the logits of the positions read are computed
(``logits_to_keep``, where the model takes it). ``generate`` pads on the left, as it requires.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from counterfactual_lab.evaluate.auditees.answers import answer_token_ids
from counterfactual_lab.evaluate.auditees.loading import LoadedModel
from counterfactual_lab.evaluate.auditees.prompts import answer_separator, image_token
from counterfactual_lab.evaluate.auditees.sampling import CounterNoiseSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One sampled continuation: its text (special tokens removed) and its token count (to EOS)."""

    text: str
    tokens: int


class GenerativeRunner:
    """Batched forward passes and generation over one loaded model (module doc)."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded = loaded
        self.batch_size = batch_size
        forward = inspect.signature(loaded.model.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward
        self._keep_last = {"logits_to_keep": 1} if self._keeps_logits else {}
        # transformers 5 renamed the forward's past_key_values to cache.
        self._cache_kwarg = "cache" if "cache" in forward else "past_key_values"
        self._continuations: dict[tuple[str, str], tuple[list[int], bool]] = {}
        self._prefix_cache: bool | None = None  # decided on the first option batch

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    # -- inputs ------------------------------------------------------------------------------
    def _inputs(self, images: Sequence[Any], texts: Sequence[str], side: str) -> dict[str, torch.Tensor]:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        inputs = self.loaded.processor(images=rgb, text=list(texts), padding=True, padding_side=side, return_tensors="pt")
        out = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.loaded.device)
                if value.is_floating_point():
                    value = value.to(self.loaded.dtype)
                out[name] = value
        return out

    def _repeated_inputs(self, images: list[Any], texts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded inputs of ``images``/``texts`` where a run of rows repeating the row before
        (the samples of one image and prompt: the same image object and text) is preprocessed
        once and repeated, as ``num_return_sequences`` does. Falls back to every row when the
        processor's tensors are not one row per image (a model that flattens image patches)."""
        firsts = [k for k in range(len(texts)) if k == 0 or images[k] is not images[k - 1] or texts[k] != texts[k - 1]]
        if len(firsts) == len(texts):
            return self._inputs(images, texts, side="left")
        inputs = self._inputs([images[k] for k in firsts], [texts[k] for k in firsts], side="left")
        if any(value.shape[0] != len(firsts) for value in inputs.values()):
            return self._inputs(images, texts, side="left")
        repeats = torch.tensor([end - begin for begin, end in zip(firsts, [*firsts[1:], len(texts)])],
                               device=self.loaded.device)
        return {name: value.repeat_interleave(repeats, dim=0) for name, value in inputs.items()}

    def _logits_at(self, inputs: dict[str, torch.Tensor], positions: list[list[int]]) -> list[torch.Tensor]:
        """For each row, float32 logits (len(positions[row]), V) at its ``positions``."""
        wanted = sorted({p for row in positions for p in row})
        kwargs: dict[str, Any] = {}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = torch.tensor(wanted, device=self.loaded.device)
        with torch.inference_mode():
            logits = self.loaded.model(**inputs, use_cache=False, **kwargs).logits
        column = {p: i for i, p in enumerate(wanted)} if self._keeps_logits else {p: p for p in wanted}
        return [logits[row, [column[p] for p in rows]].float() for row, rows in enumerate(positions)]

    # -- next-token answers --------------------------------------------------------------------
    def answer_token_ids(self, answers: Sequence[str]) -> dict[str, list[int]]:
        """:func:`.answers.answer_token_ids` with this model's tokenizer, under the model's lock: an
        unpadded ``encode`` turns the shared fast tokenizer's padding off while another thread's
        batch pads with it ("Already borrowed", or a batch that cannot become a tensor)."""
        with self.loaded.lock:
            return answer_token_ids(self.tokenizer, answers)

    def answer_sums(self, images: Sequence[Any], texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """(N, K): for row i and answer group k, Σ_{t ∈ token_ids[k]} p(t | image_i, text_i)."""
        with self.loaded.lock:
            return self._answer_sums(images, texts, token_ids)

    def _answer_sums(self, images: Sequence[Any], texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        groups = [torch.tensor(list(ids), dtype=torch.long) for ids in token_ids]
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = slice(start, start + self.batch_size)
            inputs = self._inputs(images[batch], texts[batch], side="right")
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            last = self._logits_at(inputs, [[n - 1] for n in lengths])
            probs = torch.softmax(torch.cat(last), dim=-1).cpu()
            out.append(torch.stack([probs[:, g].sum(dim=1) for g in groups], dim=1).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(groups)))

    # -- option likelihoods --------------------------------------------------------------------
    def continuation_tokens(self, prompt_text: str, option: str) -> list[int]:
        """The token ids ``option`` adds after ``prompt_text`` (with :func:`answer_separator`).

        Both are tokenized as one string; the option's tokens are those after the longest
        common prefix with the prompt alone, so a tokenizer that merges across the boundary
        still scores exactly the tokens the model would read. Under the model's lock, as every
        use of the shared tokenizer (:meth:`answer_token_ids`).
        """
        with self.loaded.lock:
            return self._continuation(prompt_text, option)[0]

    def _continuation(self, prompt_text: str, option: str) -> tuple[list[int], bool]:
        """(option tokens, whether the prompt's own tokens end where they begin)."""
        key = (prompt_text, option)
        cached = self._continuations.get(key)
        if cached is None:
            alone = self.tokenizer.encode(prompt_text, add_special_tokens=False)
            joined = self.tokenizer.encode(prompt_text + answer_separator(prompt_text) + option, add_special_tokens=False)
            common = 0
            while common < min(len(alone), len(joined)) and alone[common] == joined[common]:
                common += 1
            if common == len(joined):
                raise ValueError(f"option {option!r} adds no tokens after the prompt {prompt_text!r}")
            cached = self._continuations[key] = (joined[common:], common == len(alone))
        return cached

    def option_logliks(self, images: Sequence[Any], texts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """(N, L): log p(option_l's tokens | image_i, text_i), summed over the option's tokens.

        With the KV cache (when :meth:`prefix_cache_agrees`): each (image, prompt) prefix runs
        once, its cache is repeated for the L options, and only the options' tokens run again;
        ``batch_size // L`` images per pass keep the cache the size of ``batch_size`` sequences.
        Otherwise every (image, option) sequence runs in full.
        """
        with self.loaded.lock:
            return self._option_logliks(images, texts, options)

    def _option_logliks(self, images: Sequence[Any], texts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        if self._prefix_cache is None and len(texts):
            self._prefix_cache = self.prefix_cache_agrees(images[0], texts[0], options)
        if not self._prefix_cache:
            return self._option_logliks_full(images, texts, options)
        out = np.zeros((len(texts), len(options)))
        per_pass = max(1, self.batch_size // max(1, len(options)))
        for start in range(0, len(texts), per_pass):
            rows = list(range(start, min(start + per_pass, len(texts))))
            scored = self._option_logliks_cached([images[i] for i in rows], [texts[i] for i in rows], options)
            if scored is None:  # prefixes of unequal length, or a tokenizer merging across the boundary
                scored = self._option_logliks_full([images[i] for i in rows], [texts[i] for i in rows], options)
            out[rows] = scored
        return out

    def prefix_cache_agrees(self, image: Any, text: str, options: Sequence[str]) -> bool:
        """Whether the cached path gives the full forward pass's numbers for one row (checked once per
        runner: a model whose positions or cache the expansion does not fit falls back to full passes)."""
        try:
            cached = self._option_logliks_cached([image], [text], options)
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            logger.info("option scoring without the KV cache for %s: %s", self.loaded.name, exc)
            return False
        if cached is None:
            return True  # nothing to compare on this row; later batches decide row by row
        full = self._option_logliks_full([image], [text], options)
        tolerance = 1e-3 if self.loaded.dtype == torch.float32 else 5e-2
        agrees = bool(np.allclose(cached, full, rtol=tolerance, atol=tolerance))
        if not agrees:
            logger.info("option scoring without the KV cache for %s: cached %s vs full %s", self.loaded.name, cached, full)
        return agrees

    def _option_logliks_cached(self, images: Sequence[Any], texts: Sequence[str], options: Sequence[str]) -> np.ndarray | None:
        tokens = [[self._continuation(text, option) for option in options] for text in texts]
        if not all(clean for row in tokens for _, clean in row):
            return None
        inputs = self._inputs(images, texts, side="right")
        mask = inputs["attention_mask"]
        if not bool(mask.all()):
            return None  # prefixes of unequal length: the options would not follow on from each
        device, n_options = self.loaded.device, len(options)
        with torch.inference_mode():
            first = self.loaded.model(**inputs, use_cache=True, **self._keep_last)
            cache = first.get("cache")
            cache = cache if cache is not None else first.get("past_key_values")
            first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
            ids = [[t for t, _ in row] for row in tokens]
            out = np.array([[float(first_logp[i, row[o][0]]) for o in range(n_options)] for i, row in enumerate(ids)])
            width = max(len(t) for row in ids for t in row) - 1
            if width == 0:
                return out
            # The options' tokens but the last, after each prefix: they predict the options' later tokens.
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            follow = torch.full((len(texts) * n_options, width), pad, dtype=torch.long)
            follow_mask = torch.zeros_like(follow)
            for r, t in enumerate(t for row in ids for t in row):
                follow[r, : len(t) - 1] = torch.tensor(t[:-1])
                follow_mask[r, : len(t) - 1] = 1
            cache.batch_repeat_interleave(n_options)
            length = mask.shape[1]
            later = self.loaded.model(
                input_ids=follow.to(device), attention_mask=torch.cat([mask.repeat_interleave(n_options, 0), follow_mask.to(device)], 1),
                cache_position=torch.arange(length, length + width, device=device), use_cache=True, **{self._cache_kwarg: cache},
            )
            logp = torch.log_softmax(later.logits.float(), dim=-1)
        for r, t in enumerate(t for row in ids for t in row):
            if len(t) > 1:
                out[r // n_options, r % n_options] += float(logp[r, torch.arange(len(t) - 1), torch.tensor(t[1:])].sum())
        return out

    def _option_logliks_full(self, images: Sequence[Any], texts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        rows = [(i, o) for i in range(len(texts)) for o in range(len(options))]
        out = np.zeros((len(texts), len(options)))
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            sep = [answer_separator(texts[i]) for i, _ in batch]
            full = [texts[i] + s + options[o] for (i, o), s in zip(batch, sep)]
            inputs = self._inputs([images[i] for i, _ in batch], full, side="right")
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            tokens = [self.continuation_tokens(texts[i], options[o]) for i, o in batch]
            # The option's tokens are the row's last len(tokens) tokens; the logits that predict
            # them sit one position earlier.
            positions = [list(range(n - len(t) - 1, n - 1)) for n, t in zip(lengths, tokens)]
            scored = zip(batch, self._logits_at(inputs, positions), tokens, lengths)
            for r, ((i, o), logits, ids, n) in enumerate(scored):
                expected = inputs["input_ids"][r, n - len(ids) : n].tolist()
                if expected != ids:
                    raise RuntimeError(
                        f"option {options[o]!r} tokenized as {ids} alone but {expected} in the model's input; "
                        "the processor changed the text it was given"
                    )
                logp = torch.log_softmax(logits, dim=-1)
                out[i, o] = float(logp[torch.arange(len(ids)), torch.tensor(ids, device=logp.device)].sum())
        return out

    # -- generation ----------------------------------------------------------------------------
    def generate(
        self, images: Sequence[Any], texts: Sequence[str], seeds: Sequence[int], *, temperature: float, max_new_tokens: int
    ) -> list[Generation]:
        """One sampled continuation per row, seeded per row (:mod:`.sampling`), KV cache on."""
        with self.loaded.lock:
            return self._generate(images, texts, seeds, temperature=temperature, max_new_tokens=max_new_tokens)

    def _generate(
        self, images: Sequence[Any], texts: Sequence[str], seeds: Sequence[int], *, temperature: float, max_new_tokens: int
    ) -> list[Generation]:
        # here, not at the top: it imports transformers
        from transformers import GenerationConfig

        tokenizer = self.tokenizer
        eos = self.loaded.model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        forbidden = []
        token = image_token(self.loaded.processor)
        if token is not None:
            forbidden.append(tokenizer.convert_tokens_to_ids(token))
        # Decoding is what the audit config says, never the sampling defaults the model ships.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            eos_token_id=sorted(eos_ids) or None, pad_token_id=pad,
        )
        out: list[Generation] = []
        for start in range(0, len(texts), self.batch_size):
            batch = slice(start, start + self.batch_size)
            inputs = self._repeated_inputs(list(images[batch]), list(texts[batch]))
            sampler = CounterNoiseSampler(list(seeds[batch]), temperature, forbidden)
            with torch.inference_mode():
                sequences = self.loaded.model.generate(**inputs, generation_config=config, logits_processor=[sampler])
            # The last `steps` tokens are the new ones, whatever the model did to the prompt before them.
            new = sequences[:, sequences.shape[1] - sampler.steps :] if sampler.steps else sequences[:, :0]
            for row in new.tolist():
                ended = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
                kept = row[:ended]
                out.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept)))
        return out
