"""Lexicon counts: how many words of each category a generated text uses.

**File format** (``audit.lexicon``): a YAML mapping of category → list of words, read by the
project's bounded YAML loader::

    competence: [competent, capable, skilled, intelligen*]
    warmth: [warm, friendly, kind, caring]

A category name is lower-case letters, digits and ``_`` (it names the ``lexicon_<category>``
metric). A word is matched case-insensitively as a whole word; a trailing ``*`` matches any word
that starts with it (``intelligen*``: intelligent, intelligence). A phrase of several words
matches them in sequence. Each occurrence counts once (``count``), per category.

**The default lexicon** (:data:`DEFAULT_LEXICON`, used when ``audit.lexicon`` is not set) follows
the two dimensions of the Stereotype Content Model (Fiske, Cuddy, Glick & Xu 2002): people are
judged on *competence* (capable, skilled, intelligent) and *warmth* (friendly, kind, sincere),
and stereotypes of social groups differ along these two axes (e.g. competent but cold, warm but
incompetent). Howard et al. (NAACL 2025) measure competence-associated words in LVLM outputs for
the same reason. It lists a few common English words for each pole of both dimensions,
written for this project (not copied from a published dictionary); it is a starting point to
replace with a validated dictionary (e.g. Nicolas, Bai & Fiske 2021) for a real audit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from counterfactual_lab.config.yaml_files import load_yaml_file
from counterfactual_lab.errors import ConfigError

MAX_CATEGORIES = 64
MAX_WORDS_PER_CATEGORY = 10_000
_CATEGORY = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)

DEFAULT_LEXICON: dict[str, list[str]] = {
    "competence": [
        "competent", "capable", "skilled", "skillful", "intelligen*", "smart", "clever", "efficient", "expert*",
        "confident", "talented", "accomplished", "professional", "knowledgeable", "successful", "ambitious",
        "determined", "hardworking", "hard-working", "qualified", "brilliant", "educated",
    ],
    "incompetence": [
        "incompetent", "incapable", "unskilled", "stupid", "dumb", "foolish", "lazy", "clumsy", "ignorant",
        "inept", "unqualified", "uneducated", "careless", "unreliable", "unsuccessful",
    ],
    "warmth": [
        "warm", "friendly", "kind", "caring", "gentle", "sincere", "honest", "trustworthy", "helpful", "generous",
        "compassionate", "cheerful", "loving", "polite", "approachable", "welcoming", "supportive", "nice",
    ],
    "coldness": [
        "cold", "unfriendly", "hostile", "rude", "cruel", "dishonest", "selfish", "aggressive", "arrogant",
        "mean", "untrustworthy", "distant", "harsh", "threatening", "dangerous", "violent",
    ],
}


class Lexicon:
    """Word categories compiled for counting (module doc)."""

    def __init__(self, categories: Mapping[str, Sequence[str]], source: str = "lexicon") -> None:
        self.categories = _checked(categories, source)
        self.source = source
        self._patterns = {
            name: re.compile("|".join(_pattern(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)
            for name, words in self.categories.items()
        }

    @property
    def names(self) -> list[str]:
        return list(self.categories)

    def digest(self) -> str:
        """sha256 of the categories and words: what the run id and the manifest record."""
        payload = json.dumps(self.categories, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def count(self, text: str) -> dict[str, int]:
        """category → number of matches in ``text``."""
        return {name: len(pattern.findall(text or "")) for name, pattern in self._patterns.items()}


def _pattern(word: str) -> str:
    prefix = word.endswith("*")
    parts = [re.escape(p) for p in word.rstrip("*").split()]
    body = r"\s+".join(parts)
    tail = r"[\w-]*" if prefix else ""
    return r"(?<![\w'-])" + body + tail + r"(?![\w'-])"


def _checked(categories: object, source: str) -> dict[str, list[str]]:
    if not isinstance(categories, Mapping) or not categories:
        raise ConfigError(f"{source} must be a non-empty mapping of category -> list of words")
    if len(categories) > MAX_CATEGORIES:
        raise ConfigError(f"{source} has {len(categories)} categories; at most {MAX_CATEGORIES}")
    out: dict[str, list[str]] = {}
    for name, words in categories.items():
        if not isinstance(name, str) or not _CATEGORY.match(name):
            raise ConfigError(
                f"{source}: category {name!r} must be lower-case letters, digits and _ (it names the metric lexicon_<category>)"
            )
        if not isinstance(words, list) or not words or len(words) > MAX_WORDS_PER_CATEGORY:
            raise ConfigError(f"{source}: category {name!r} needs a list of 1 to {MAX_WORDS_PER_CATEGORY} words")
        cleaned = []
        for word in words:
            if not isinstance(word, str) or not word.strip() or not _WORD.fullmatch(word.strip().rstrip("*").replace(" ", "_")):
                raise ConfigError(f"{source}: category {name!r} has {word!r}, which is not a word or phrase")
            cleaned.append(" ".join(word.strip().lower().split()))
        out[name] = list(dict.fromkeys(cleaned))
    return out


def load_lexicon(path: str | None, base_dir: str | None = None) -> Lexicon:
    """The lexicon at ``path`` (the module doc's format), or :data:`DEFAULT_LEXICON` when None.

    A relative path resolves against the working directory, then ``base_dir`` (the config's
    folder). ConfigError naming the file when it is missing or malformed.
    """
    if path is None:
        return Lexicon(DEFAULT_LEXICON, source="the default lexicon")

    file = lexicon_path(path, base_dir)
    raw = load_yaml_file(file, "audit.lexicon")
    return Lexicon(raw, source=f"audit.lexicon {file}")


def lexicon_path(path: str, base_dir: str | None = None) -> Path:
    """Where ``path`` lies (module doc of :func:`load_lexicon`); ConfigError when it does not exist."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and not candidate.exists() and base_dir is not None:
        candidate = Path(base_dir) / candidate
    if not candidate.is_file():
        raise ConfigError(f"audit.lexicon: {path} does not exist (a YAML file of category -> words; see README)")
    return candidate
