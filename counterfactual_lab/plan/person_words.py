"""The ``{person}`` of a probe or label template: the words for an attribute's value.

A template may say who is pictured: ``"Is the {person} in this image a doctor?"``,
``"a photo of a {person} who is a {label}"``. ``{person}`` is filled with the attribute's word for
a value — the same words the caption rewriter writes (:mod:`counterfactual_lab.plan.captions`):
gender female → ``woman``, age elderly → ``elderly person``, race Black → ``Black person``, a
custom value → ``<value> person``; a joint value of an intersection composes them (race Black,
gender male → ``Black man``). An unknown value reads ``person``. This is how the audit tells which
modality carries a bias (docs/metrics.md, "Which modality carries the gap"): the image, the word,
or both changed.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from counterfactual_lab.config.intersections import JOINT_SEPARATOR, joint_values
from counterfactual_lab.config.templates import PERSON
from counterfactual_lab.plan.captions import indefinite_article, rewrite_caption

# The word of an unknown value (neither the dataset nor the caption says).
NEUTRAL_PERSON = "person"
_ARTICLE_BEFORE = re.compile(r"(?<![\w])(an?|An?|AN?)(\s+)$")


def person_phrase(changes: Sequence[tuple[str, str]]) -> str:
    """"a Black man": a person with every (attribute, value) of ``changes``, with its article."""
    phrase = "a person"
    for attribute, value in changes:
        phrase = rewrite_caption(phrase, attribute, None, value).caption
    return phrase


def person_word(changes: Sequence[tuple[str, str]]) -> str:
    """"Black man": :func:`person_phrase` without its article ("woman", "elderly person")."""
    phrase = person_phrase(changes)
    first, _, rest = phrase.partition(" ")
    return rest if first.lower() in ("a", "an") and rest else phrase


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def fill_person(template: str, word: str | None) -> str:
    """``template`` with ``{person}`` replaced by ``word`` (None: :data:`NEUTRAL_PERSON`) and every other
    placeholder (``{label}``, ``{image}``, ``{options}``) and escaped brace kept, so it still formats;
    an "a"/"an" right before it agrees with the word ("a {person}" → "an elderly person")."""
    word = word or NEUTRAL_PERSON
    out: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if name == PERSON:
            literal = _ARTICLE_BEFORE.sub(lambda m: _article_like(m.group(1), word) + m.group(2), literal)
            out.append(_escaped(literal) + _escaped(word))
            continue
        out.append(_escaped(literal))
        if name is not None:
            out.append("{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    return "".join(out)


def _article_like(article: str, word: str) -> str:
    wanted = indefinite_article(word)
    if len(article) > 1 and article.isupper():  # "AN"
        return wanted.upper()
    return wanted[:1].upper() + wanted[1:] if article[:1].isupper() else wanted


class PersonWords:
    """The word of each (attribute, value) a run can meet: its attributes' and its intersections' joint ones.

    ``vocabularies``: attribute → its values (the dataset spec's vocabulary); ``intersections``: the
    config's ``attributes.intersections``.
    """

    def __init__(self, vocabularies: Mapping[str, Sequence[str]], intersections: Sequence[Sequence[str]] = ()) -> None:
        self._joint = {JOINT_SEPARATOR.join(names): (tuple(names), joint_values(names, vocabularies))
                       for names in intersections}
        self._cache: dict[tuple[str, str | None], str] = {}

    def word(self, attribute: str, value: str | None) -> str:
        """The word for ``value`` of ``attribute`` (a joint attribute's value composes its parts);
        :data:`NEUTRAL_PERSON` when the value is unknown."""
        key = (attribute, value)
        if key not in self._cache:
            self._cache[key] = self._word(attribute, value)
        return self._cache[key]

    def _word(self, attribute: str, value: str | None) -> str:
        if value is None:
            return NEUTRAL_PERSON
        if attribute in self._joint:
            names, combinations = self._joint[attribute]
            parts = combinations.get(value)
            if parts is None:
                return NEUTRAL_PERSON
            return person_word(list(zip(names, parts)))
        return person_word([(attribute, value)])
