"""Closed answers read from a next-token distribution: yes vs no, and a digit rating.

**Which tokens spell an answer.** A model may start "yes" as ``yes``, ``Yes``, ``YES`` or, after a
colon, `` yes`` (a different token in byte-level and SentencePiece vocabularies alike). For each
answer word, :func:`answer_token_ids` tokenizes every spelling (:func:`spellings`: as written,
capitalised, upper case, each with and without a leading space) without special tokens and keeps
the *first* token of each, provided it

* decodes, stripped of whitespace, to a non-empty prefix of the spelling (a bare ``▁`` or ``Ġ``
  says nothing about which word follows), and
* does not also start a spelling of another answer (``N`` could start "No" and "Nine").

An answer none of whose spellings keeps a token is an error naming the answer: the model's
vocabulary cannot say it in one step.

**The probabilities.** With p the next-token distribution (softmax of the last position's
logits, in float32) and ``T_a`` the kept token ids of answer a:

    S_a = Σ_{t ∈ T_a} p(t)              mass = Σ_a S_a
    share(a) = S_a / mass              (the answers' distribution, normalised over them)

so P(yes) = S_yes / (S_yes + S_no), and a rating on 1…K has the expected value
E = Σ_k k · share(k). ``mass`` says how much of the model's next-token probability the answers
cover at all: a model that does not answer with yes or no (low mass) still gets a P(yes), and
the mass beside it says how far to trust it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from counterfactual_lab.errors import UserError

YES, NO = "yes", "no"
YES_NO_ANSWERS = (YES, NO)


def spellings(word: str) -> list[str]:
    """``word`` as written, capitalised and upper case, each without and with a leading space."""
    forms = list(dict.fromkeys([word, word.capitalize(), word.upper()]))
    return forms + [" " + form for form in forms]


def answer_token_ids(tokenizer: Any, answers: Sequence[str]) -> dict[str, list[int]]:
    """answer → the token ids that start it (module doc); UserError when an answer keeps none."""
    first: dict[str, dict[int, str]] = {}
    for answer in answers:
        ids: dict[int, str] = {}
        for spelling in spellings(answer):
            tokens = tokenizer.encode(spelling, add_special_tokens=False)
            if not tokens:
                continue
            text = tokenizer.decode(tokens[:1]).strip()
            if text and spelling.strip().startswith(text):
                ids.setdefault(int(tokens[0]), spelling)
        first[answer] = ids
    owners: dict[int, set[str]] = {}
    for answer, ids in first.items():
        for token in ids:
            owners.setdefault(token, set()).add(answer)
    kept = {answer: sorted(t for t in ids if len(owners[t]) == 1) for answer, ids in first.items()}
    for answer, ids in kept.items():
        if not ids:
            raise UserError(
                f"the model's tokenizer has no token that starts {answer!r} and no other answer "
                f"(spellings tried: {spellings(answer)}); the probe cannot read this answer"
            )
    return kept


def answer_shares(probabilities: np.ndarray, token_ids: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, share, mass) for (N, V) next-token ``probabilities``: S (N, K) per answer in
    ``token_ids`` order, share = S / mass, mass (N,) = Σ_a S_a (module doc)."""
    sums = np.stack([probabilities[:, list(ids)].sum(axis=1) for ids in token_ids.values()], axis=1).astype(np.float64)
    return shares_from_sums(sums)


def shares_from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, share, mass) from per-answer sums S (N, K); a row with no mass has NaN shares."""
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    mass = sums.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(mass[:, None] > 0, sums / np.where(mass > 0, mass, 1)[:, None], np.nan)
    return sums, shares, mass


def expected_rating(shares: np.ndarray) -> np.ndarray:
    """E = Σ_k k · share(k) for shares over the ratings 1…K (one row per answer)."""
    shares = np.atleast_2d(np.asarray(shares, dtype=np.float64))
    scale = np.arange(1, shares.shape[1] + 1, dtype=np.float64)
    return shares @ scale


def rating_answers(scale: int) -> list[str]:
    """The answers of a rating on 1…``scale``: the digits."""
    if not 2 <= scale <= 9:
        raise ValueError(f"a rating scale is read from single digits: 2..9, got {scale}")
    return [str(k) for k in range(1, scale + 1)]
