"""Toxicity of generated texts: any transformers text classifier with a toxic label.

The classifier is ``AutoModelForSequenceClassification`` + ``AutoTokenizer`` from a hub id or a
local folder (safetensors only, no remote code, loaded once per process), e.g.
``s-nlp/roberta_toxicity_classifier``, ``unitary/toxic-bert`` or the tiny ``DIR/toxicity``.
Its toxic label is read from ``config.id2label`` (:func:`toxic_label`): the label named
``toxic`` (any case, ``-``/``_``/space ignored), else the one label containing "toxic" that is not
a negation (``non-toxic``, ``not_toxic``, ``neutral``). The toxicity of a text is that label's
probability: softmax over the labels for a single-label classifier, the label's own sigmoid for
a multi-label one (``problem_type: multi_label_classification``, as Detoxify's models are).
Texts longer than the model takes are truncated to its maximum length.
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

_NEGATED = re.compile(r"^(non|not|no|neutral)")
TOXICITY_KIND = "toxicity-classifier"  # load_once's kind


def toxic_label(id2label: Mapping[Any, str], model: str = "the toxicity model") -> int:
    """The index of the toxic label in ``id2label`` (module doc); ConfigError when there is none or several."""
    names = {int(i): str(name) for i, name in id2label.items()}
    squashed = {i: re.sub(r"[\s_\-]+", "", name.lower()) for i, name in names.items()}
    exact = [i for i, name in squashed.items() if name == "toxic"]
    if len(exact) == 1:
        return exact[0]
    candidates = [i for i, name in squashed.items() if "toxic" in name and not _NEGATED.match(name)]
    if len(candidates) == 1:
        return candidates[0]
    raise ConfigError(
        f"audit.toxicity_model {model}: cannot tell which label is toxic from its labels {sorted(names.values())}; "
        "a toxicity classifier needs one label named 'toxic' (or one containing 'toxic' that is not 'non-toxic')"
    )


@dataclass
class ToxicityScorer:
    """A loaded text classifier that scores texts by the probability of its toxic label."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    toxic_index: int
    multi_label: bool
    max_length: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, model: str, revision: str | None = None, device: str = "auto") -> "ToxicityScorer":
        """Load ``model`` once per (model, revision, device) per process."""

        resolved = str(resolve_device(device))
        return load_once(TOXICITY_KIND, model, revision, resolved, lambda: cls._from_pretrained(model, revision, resolved))

    @classmethod
    def _from_pretrained(cls, model: str, revision: str | None, device: str) -> "ToxicityScorer":
        # here, not at the top: it imports transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # here, not at the top: it imports transformers
        from transformers.utils import logging as transformers_logging


        transformers_logging.disable_progress_bar()
        check_no_custom_code(model)
        kwargs = safe_load_kwargs(model, revision)
        try:
            network = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype_for(device), **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(
                model, **{k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}
            )
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load audit.toxicity_model {model!r} (revision {revision!r}) as a text classifier: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        on_device(network, model, revision, device)
        limit = getattr(network.config, "max_position_embeddings", None) or 512
        max_length = min(int(getattr(tokenizer, "model_max_length", limit) or limit), int(limit))
        return cls(
            network, tokenizer, model, device, toxic_label(network.config.id2label, model),
            network.config.problem_type == "multi_label_classification", max_length,
        )

    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """The toxic label's probability of each text (module doc), float64."""
        with self.lock:
            return self._score(texts, batch_size)

    def _score(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = [t if t else " " for t in texts[start : start + batch_size]]  # an empty text still gets a score
            inputs = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                logits = self.model(**inputs).logits.float()
            column = logits[:, self.toxic_index]
            probs = torch.sigmoid(column) if self.multi_label else torch.softmax(logits, dim=-1)[:, self.toxic_index]
            out.append(probs.cpu().double().numpy())
        return np.concatenate(out) if out else np.zeros(0)
