"""Text models that score generated answers: a sentiment classifier and a sentence embedder.

Both load from a hub id or a local folder (safetensors only, no remote code, once per process)
and score texts in batches, truncated to the model's maximum length, like the toxicity classifier
(:mod:`.toxicity`):

* :class:`SentimentScorer` (``audit.sentiment_model``): any ``AutoModelForSequenceClassification``
  whose ``config.id2label`` has one label naming "positive" and one naming "negative" (``POSITIVE`` /
  ``NEGATIVE`` of an SST-2 model, ``positive`` / ``neutral`` / ``negative`` of a three-way one;
  :func:`sentiment_labels`). A text's sentiment is P(positive) − P(negative) on [−1, 1], softmax over
  the labels: 0 for a neutral text, whatever the number of labels.
* :class:`TextEmbedder` (``audit.text_embedder``): any ``AutoModel`` text encoder; a text's embedding
  is the mean of its last hidden states over its tokens (the attention mask), scaled to unit length,
  the pooling of sentence-transformers' MiniLM and MPNet models. The cosine of two answers is the
  dot product of their embeddings (:mod:`counterfactual_lab.metrics.answer_change`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from counterfactual_lab.errors import ConfigError, UserError
from counterfactual_lab.models.devices import dtype_for, resolve_device
from counterfactual_lab.models.load_once import load_once, on_device
from counterfactual_lab.models.safety import check_no_custom_code, safe_load_kwargs

SENTIMENT_KIND = "sentiment-classifier"  # load_once's kinds
EMBEDDER_KIND = "text-embedder"


def sentiment_labels(id2label: Mapping[Any, str], model: str = "the sentiment model") -> tuple[int, int]:
    """(index of the positive label, index of the negative one) in ``id2label``; ConfigError otherwise."""
    names = {int(i): str(name).lower() for i, name in id2label.items()}

    def one(word: str) -> int:
        found = [i for i, name in names.items() if re.search(rf"\b{word}", name) or name in (word[:3], word)]
        if len(found) != 1:
            raise ConfigError(
                f"audit.sentiment_model {model}: cannot tell its {word} label from its labels "
                f"{sorted(str(v) for v in id2label.values())}; a sentiment classifier needs one label naming "
                "'positive' and one naming 'negative'"
            )
        return found[0]

    return one("positive"), one("negative")


def _load(model: str, revision: str | None, device: str, key: str, auto_class: str) -> tuple[Any, Any, int]:
    """(network, tokenizer, max length) of a safetensors, code-free text model."""
    # here, not at the top: it imports transformers
    import transformers

    # here, not at the top: it imports transformers
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    check_no_custom_code(model)
    kwargs = safe_load_kwargs(model, revision)
    try:
        network = getattr(transformers, auto_class).from_pretrained(model, dtype=dtype_for(device), **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            model, **{k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")})
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {key} {model!r} (revision {revision!r}) with {auto_class}: "
                        f"{str(exc).splitlines()[0]}") from None
    on_device(network, model, revision, device)
    limit = getattr(network.config, "max_position_embeddings", None) or 512
    return network, tokenizer, min(int(getattr(tokenizer, "model_max_length", limit) or limit), int(limit))


def _batches(texts: Sequence[str], batch_size: int):
    for start in range(0, len(texts), batch_size):
        yield [t if t else " " for t in texts[start : start + batch_size]]  # an empty text still gets a score


@dataclass
class SentimentScorer:
    """A loaded text classifier scoring texts by P(positive) − P(negative) (module doc)."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    positive: int
    negative: int
    max_length: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, model: str, revision: str | None = None, device: str = "auto") -> "SentimentScorer":
        """Load ``model`` once per (model, revision, device) per process."""
        resolved = str(resolve_device(device))

        def build() -> "SentimentScorer":
            network, tokenizer, max_length = _load(model, revision, resolved, "audit.sentiment_model",
                                                   "AutoModelForSequenceClassification")
            positive, negative = sentiment_labels(network.config.id2label, model)
            return cls(network, tokenizer, model, resolved, positive, negative, max_length)

        return load_once(SENTIMENT_KIND, model, revision, resolved, build)

    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """P(positive) − P(negative) of each text, float64."""
        out = []
        with self.lock:
            for batch in _batches(texts, batch_size):
                inputs = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                with torch.inference_mode():
                    logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits.float()
                probs = torch.softmax(logits, dim=-1)
                out.append((probs[:, self.positive] - probs[:, self.negative]).cpu().double().numpy())
        return np.concatenate(out) if out else np.zeros(0)


@dataclass
class TextEmbedder:
    """A loaded text encoder giving each text a unit embedding: mean pooling over its tokens (module doc)."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    max_length: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, model: str, revision: str | None = None, device: str = "auto") -> "TextEmbedder":
        """Load ``model`` once per (model, revision, device) per process."""
        resolved = str(resolve_device(device))

        def build() -> "TextEmbedder":
            network, tokenizer, max_length = _load(model, revision, resolved, "audit.text_embedder", "AutoModel")
            return cls(network, tokenizer, model, resolved, max_length)

        return load_once(EMBEDDER_KIND, model, revision, resolved, build)

    def score(self, texts: Sequence[str], batch_size: int = 32) -> list[np.ndarray]:
        """The unit embedding of each text (float32 vectors)."""
        out: list[np.ndarray] = []
        with self.lock:
            for batch in _batches(texts, batch_size):
                inputs = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                with torch.inference_mode():
                    hidden = self.model(**inputs).last_hidden_state.float()
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                unit = torch.nn.functional.normalize(mean, dim=-1)
                out += list(unit.cpu().numpy().astype(np.float32))
        return out
