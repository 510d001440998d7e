"""Scores of generated texts that need no model: refusal, length in words, lexicon counts.

:func:`add_text_scores` adds to a generations frame (one row per generated text):

* ``refusal`` — the text declines to answer (:func:`counterfactual_lab.evaluate.auditees.refusal.is_refusal`);
* ``words`` — its length in words (runs of letters, digits, ``'`` and ``-``);
* ``lexicon_<category>`` — how many words of each lexicon category it uses
  (:class:`counterfactual_lab.evaluate.auditees.lexicon.Lexicon`).

The toxicity column comes from the classifier, in the evaluation task (:mod:`.probes`).
"""

from __future__ import annotations

import re

import polars as pl

from counterfactual_lab.evaluate.auditees.lexicon import Lexicon
from counterfactual_lab.evaluate.auditees.refusal import is_refusal

LEXICON_PREFIX = "lexicon_"
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def word_count(text: str) -> int:
    """The number of words in ``text`` (runs of letters, digits, ``'`` and ``-``)."""
    return len(_WORD.findall(text or ""))


def lexicon_column(category: str) -> str:
    return f"{LEXICON_PREFIX}{category}"


def add_text_scores(generations: pl.DataFrame, lexicon: Lexicon) -> pl.DataFrame:
    """``generations`` with ``refusal``, ``words`` and ``lexicon_<category>`` columns (module doc)."""
    texts = generations["text"].fill_null("").to_list() if generations.height else []
    counts = [lexicon.count(t) for t in texts]
    return generations.with_columns(
        pl.Series("refusal", [is_refusal(t) for t in texts], dtype=pl.Boolean),
        pl.Series("words", [word_count(t) for t in texts], dtype=pl.Int64),
        *[pl.Series(lexicon_column(name), [c[name] for c in counts], dtype=pl.Int64) for name in lexicon.names],
    )
