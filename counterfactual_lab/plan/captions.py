"""Text counterfactuals: rewrite a caption so one protected attribute changes, and say how.

``rewrite_caption("An old man walking his dog.", "age", "elderly", "young")`` gives
``"A young man walking his dog."`` with the substitution ``"An old" → "A young"``.

How a caption is rewritten:

* **Swap.** The words that state the source value are replaced by the target value's
  forms: gender nouns and titles (man/woman, actor/actress, Mr/Ms, ...) and pronouns
  (he/she/they, him/her/them, his/her/their, hers/his/theirs, himself/herself/themself);
  age descriptors (young, middle-aged, old/elderly, "5-year-old") together with the noun
  they change (boy ↔ man, children ↔ people); race descriptors (Asian, Black, Hispanic,
  Caucasian, ...). With ``source_value=None``, or when the caption never uses the source
  value's words, every word of another value is swapped. Case (``Man``→``Woman``,
  ``MAN``→``WOMAN``) and punctuation are kept, matches are whole words only ("manager" and
  "human" never match "man"), and the article before a changed word is fixed
  ("an old man" → "a young man").
* **Insert.** A caption that never mentions the attribute gets the target descriptor
  before its first person noun ("a doctor" → "a female doctor", "a person" → "an elderly
  person"); neutral nouns take the gendered or child form instead ("a person" → "a woman",
  "a man" → "a boy"). ``inserted`` is then True. A caption without any person noun is
  prefixed ("a bowl of fruit" → "an elderly person: a bowl of fruit").

Known limits, by design: "her" is read as a possessive when the next word is not a function
word ("her bag" → "his bag", "with her." → "with him"), a heuristic that misreads "watch her
play"; verbs are not re-conjugated for singular "they" ("he is" → "they is"); "they/them/
their" are only read as gender words when ``source_value`` is explicitly "non-binary",
since they are usually plural; ambiguous words (old, young, black, white, senior, Indian)
are attribute words only when they modify a person noun ("a young giraffe", "a white
shirt" and "Indian food" are left alone).

Values outside the built-in tables (a custom vocabulary) are used as descriptors
themselves, so any attribute and value works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from counterfactual_lab.plan import attribute_words as W


@dataclass(frozen=True)
class Substitution:
    """One change to the caption: ``original`` at ``start`` (in the original caption) became ``replacement``."""

    original: str
    replacement: str
    start: int


@dataclass(frozen=True)
class TextCounterfactual:
    """A rewritten caption and the changes that made it."""

    caption: str
    substitutions: tuple[Substitution, ...]
    inserted: bool
    explanation: str


# ---------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------

# Words, with hyphenated compounds kept whole ("man-made" is not "man"); apostrophes split
# ("man's" -> "man" + "'s") so possessives are swapped too.
_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_NUMERIC_AGE = re.compile(r"^([a-z]+(?:-[a-z]+)?|\d+)-years?-old$")


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int

    @property
    def lower(self) -> str:
        return self.text.lower()


def _tokenize(caption: str) -> list[_Token]:
    return [_Token(m.group(), m.start(), m.end()) for m in _WORD.finditer(caption)]


class _Text:
    """A caption with its tokens, and the questions every attribute asks of them."""

    def __init__(self, caption: str):
        self.caption = caption
        self.tokens = _tokenize(caption)

    def __len__(self) -> int:
        return len(self.tokens)

    def low(self, i: int) -> str:
        return self.tokens[i].lower if 0 <= i < len(self.tokens) else ""

    def gap(self, i: int) -> str:
        """Text between token i and token i+1."""
        if i + 1 >= len(self.tokens):
            return self.caption[self.tokens[i].end :] if self.tokens else ""
        return self.caption[self.tokens[i].end : self.tokens[i + 1].start]

    def joined(self, i: int, allow_comma: bool = False) -> bool:
        """Token i and i+1 belong to one phrase (only spaces, or a list comma, between)."""
        if i + 1 >= len(self.tokens):
            return False
        gap = self.gap(i)
        return gap.strip() == "" or (allow_comma and gap.strip() == "," and gap.endswith(" "))

    def phrase_at(self, i: int, table: Iterable[str], max_words: int = 3) -> int:
        """Token length of the longest phrase of ``table`` starting at token i (0: none)."""
        for k in range(max_words, 0, -1):
            if i + k > len(self.tokens) or not all(self.joined(j) for j in range(i, i + k - 1)):
                continue
            if " ".join(self.low(j) for j in range(i, i + k)) in table:
                return k
        return 0

    def person_noun_at(self, i: int) -> int:
        """Token length of the person noun starting at token i (0: none)."""
        k = self.phrase_at(i, W.MULTIWORD_PERSON_NOUNS, max_words=3)
        if not k and self.low(i) in W.PERSON_NOUNS:
            k = 1
        if k == 1 and self.low(i) in W.GROUP_NOUNS and self.joined(i) and self.low(i + 1) == "of":
            return 0  # "a couple of giraffes"
        return k

    def noun_after(self, i: int, is_filler: Callable[[int], int]) -> tuple[int, int] | None:
        """(start, length) of the person noun that the descriptor ending before token i modifies.

        Up to two filler words may stand between ("an old bearded man").
        """
        j, skipped = i, 0
        while j < len(self.tokens) and skipped <= 2:
            if j > 0 and not self.joined(j - 1, allow_comma=True):
                return None
            k = self.person_noun_at(j)
            if k:
                return j, k
            width = is_filler(j)
            if not width:
                return None
            j += width
            skipped += 1
        return None

    def first_person_noun(self) -> tuple[int, int] | None:
        for i in range(len(self.tokens)):
            k = self.person_noun_at(i)
            if k:
                return i, k
        return None

    def text_of(self, i: int, j: int) -> str:
        """Original text from token i through token j-1."""
        return self.caption[self.tokens[i].start : self.tokens[j - 1].end]

    def starts_sentence(self, i: int) -> bool:
        before = self.caption[: self.tokens[i].start].rstrip()
        return before == "" or before[-1] in ".!?:;\"'("


# ---------------------------------------------------------------------------------------
# case and articles
# ---------------------------------------------------------------------------------------

_PROPER = {v.lower() for v in W.RACE_DESCRIPTORS if v} | {"latina", "mr", "ms", "mrs", "mx"}


def _match_case(original: str, replacement: str) -> str:
    """``replacement`` in the case pattern of ``original`` (MAN -> WOMAN, Man -> Woman)."""
    letters = [c for c in original if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    if original[:1].isupper() and replacement[:1].islower():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _natural(word: str) -> str:
    """A word as it is written mid-sentence ("Man" -> "man", "Black" stays "Black")."""
    if word.lower() in _PROPER or (word.isupper() and len(word) > 1):
        return word
    return word.lower()


_A_BEFORE_VOWEL = ("eu", "uni", "use", "usu", "uti", "ubiq", "one", "once", "ewe", "uk")
_AN_BEFORE_H = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(word: str) -> str:
    """"a" or "an" for the word that follows it (by sound, with the common exceptions)."""
    w = word.lower()
    if not w:
        return "a"
    if w[0].isdigit():
        return "an" if w.startswith("8") or re.match(r"1[18](\D|$)", w) else "a"
    if w.startswith(_AN_BEFORE_H):
        return "an"
    if w.startswith(_A_BEFORE_VOWEL) and not w.startswith(("unin", "unim", "unid")):
        return "a"
    return "an" if w[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{indefinite_article(phrase)} {phrase}"


# ---------------------------------------------------------------------------------------
# attribute and value names
# ---------------------------------------------------------------------------------------

_BUILTIN = {"gender": W.GENDER_VALUES, "age": W.AGE_VALUES, "race": W.RACE_VALUES}


def _attribute_key(attribute: str) -> str:
    if not isinstance(attribute, str) or not attribute.strip():
        raise ValueError(f"attribute must be a non-empty string, got {attribute!r}")
    key = " ".join(attribute.strip().lower().split())
    return W.ATTRIBUTE_ALIASES.get(key, key)


def _canonical(attr: str, value: str | None, role: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{role} for attribute {attr!r} must be a non-empty string, got {value!r}")
    cleaned = " ".join(value.strip().split())
    return W.VALUE_ALIASES.get(attr, {}).get(cleaned.lower(), cleaned)


def _is_builtin(attr: str, value: str | None) -> bool:
    return attr in _BUILTIN and value in _BUILTIN[attr]


# ---------------------------------------------------------------------------------------
# mentions: where a caption states an attribute value, and how to restate it
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mention:
    start: int  # token index
    end: int  # token index, exclusive
    value: str | None  # None: an attribute word outside the vocabulary
    render: Callable[[str], str]  # target value -> replacement text (natural case)


_GENDER_INDEX = {"male": 0, "female": 1, "non-binary": 2}
_GENDER_WORDS: dict[str, tuple[str, tuple[str, str, str]]] = {}
for _row in W.GENDERED_WORDS:
    for _value, _word in zip(("male", "female"), _row[:2]):
        _GENDER_WORDS.setdefault(_word, (_value, _row))
_FEMALE_NOUNS = {row[1] for row in W.GENDERED_WORDS} | {"woman", "women", "girl", "girls", "lady", "ladies"}

_PRONOUN_ROLE = {
    "he": ("male", "subject"), "him": ("male", "object"), "himself": ("male", "reflexive"),
    "she": ("female", "subject"), "hers": ("female", "possessive"), "herself": ("female", "reflexive"),
}
_THEY_ROLE = {
    "they": "subject", "them": "object", "their": "determiner", "theirs": "possessive",
    "themself": "reflexive", "themselves": "reflexive",
}


def _gender_form(row: tuple[str, str, str], target: str) -> str:
    if target in _GENDER_INDEX:
        return row[_GENDER_INDEX[target]]
    return row[2].replace("non-binary", target)  # a custom value reads like "non-binary"


def _pronoun(target: str, role: str) -> str:
    return W.PRONOUNS.get(target, W.PRONOUNS["non-binary"])[role]


def _possessive_role(text: _Text, i: int) -> bool:
    """Whether "her"/"his" at token i is followed by what it possesses ("her bag")."""
    return text.joined(i) and text.low(i + 1) not in W.FUNCTION_WORDS


def _gender_mentions(text: _Text, source: str | None) -> list[_Mention]:
    found: list[_Mention] = []
    i = 0
    while i < len(text):
        w = text.low(i)
        adj = text.phrase_at(i, {"male", "female", "non-binary", "nonbinary", "non binary"}, max_words=2)
        if adj and text.joined(i + adj - 1) and text.low(i + adj) in W.GENDER_NEUTRAL_NOUNS:
            # "a female person" reads "a woman" once rewritten
            value = W.VALUE_ALIASES["gender"][" ".join(text.low(j) for j in range(i, i + adj))]
            forms = W.GENDER_NEUTRAL_NOUNS[text.low(i + adj)]
            found.append(_Mention(i, i + adj + 1, value, lambda t, f=forms: _gender_form(f, t)))
            i += adj + 1
            continue
        if adj == 2:  # "non binary"
            found.append(_Mention(i, i + 2, "non-binary", lambda t: _gender_form(("male", "female", "non-binary"), t)))
            i += 2
            continue
        if w in ("her", "his"):
            value = "female" if w == "her" else "male"
            if _possessive_role(text, i):
                role = "determiner"
            else:
                role = "object" if w == "her" else "possessive"
            found.append(_Mention(i, i + 1, value, lambda t, r=role: _pronoun(t, r)))
        elif w in _PRONOUN_ROLE:
            value, role = _PRONOUN_ROLE[w]
            found.append(_Mention(i, i + 1, value, lambda t, r=role: _pronoun(t, r)))
        elif w in _THEY_ROLE and source == "non-binary":
            found.append(_Mention(i, i + 1, "non-binary", lambda t, r=_THEY_ROLE[w]: _pronoun(t, r)))
        elif w in _GENDER_WORDS:
            value, row = _GENDER_WORDS[w]
            found.append(_Mention(i, i + 1, value, lambda t, r=row: _gender_form(r, t)))
        elif w in ("nonbinary", "non-binary"):
            found.append(_Mention(i, i + 1, "non-binary", lambda t: _gender_form(("male", "female", "non-binary"), t)))
        elif source == "non-binary" and w in ("person", "people", "persons"):
            forms = W.GENDER_NEUTRAL_NOUNS[w]
            found.append(_Mention(i, i + 1, "non-binary", lambda t, f=forms: _gender_form(f, t)))
        i += 1
    return found


def _age_filler(text: _Text) -> Callable[[int], int]:
    def width(j: int) -> int:
        w = text.low(j)
        k = text.phrase_at(j, W.RACE_DESCRIPTORS)
        if k:
            return k
        if w in W.GENDER_ADJECTIVES or w in W.FILLER_ADJECTIVES:
            return 1
        # "bearded", "smiling", "balding": adjectives that look like one
        return 1 if len(w) > 4 and w.endswith(("ed", "ing")) and w not in W.FUNCTION_WORDS else 0

    return width


def _race_filler(text: _Text) -> Callable[[int], int]:
    # Stricter than age: "white haired man" must not read as race, so -ed words do not count.
    def width(j: int) -> int:
        w = text.low(j)
        if w in W.GENDER_ADJECTIVES or w in W.FILLER_ADJECTIVES or w in W.AGE_ADJECTIVES:
            return 1
        return text.phrase_at(j, {"middle aged"}, max_words=2)

    return width


def _numeric_age(text: _Text, i: int) -> tuple[int, int] | None:
    """(token length, years) of "5-year-old" / "five year old" / "5 years old" at token i."""
    m = _NUMERIC_AGE.match(text.low(i))
    if m:
        years = _parse_number(m.group(1))
        return (1, years) if years is not None else None
    if text.joined(i) and text.joined(i + 1) and text.low(i + 1) in ("year", "years") and text.low(i + 2) == "old":
        years = _parse_number(text.low(i))
        return (3, years) if years is not None else None
    return None


def _parse_number(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    parts = word.split("-")
    if all(p in W.NUMBER_WORDS for p in parts):
        return sum(W.NUMBER_WORDS[p] for p in parts)
    return None


def _plural_noun(noun: str) -> bool:
    last = noun.split()[-1]
    return last in W.PERSON_NOUNS_PLURAL and last not in W.PERSON_NOUNS_SINGULAR


def _age_phrase(text: _Text, adj: tuple[int, int] | None, noun: tuple[int, int] | None,
                adj_value: str | None, numeric: bool = False) -> tuple[str | None, Callable[[str], str], int, int]:
    """Value, renderer and token span of an age phrase: [adjective] [fillers] [noun]."""
    noun_word = text.text_of(noun[0], noun[0] + noun[1]) if noun else None
    noun_low = noun_word.lower() if noun_word else None
    if noun_low in W.CHILD_TO_ADULT:
        # "a young boy" is a child; "a teenage girl" and "a 15-year-old girl" are young
        value = "young" if adj and text.low(adj[0]) in W.TEEN_ADJECTIVES else "child"
        if numeric:
            value = adj_value
    elif noun_low in W.AGE_NOUNS and not adj_value:
        value = W.AGE_NOUNS[noun_low][0]
    else:
        value = adj_value

    def render(target: str) -> str:
        new_adj, new_noun = _restate_age(noun_low, target)
        if not adj:  # "a boy" -> "an elderly man", "Kids" -> "Elderly people": the descriptor now leads
            noun_out = noun_word if new_noun == noun_low else _match_case(noun_word, new_noun)
            if not new_adj:
                return noun_out
            noun_out = noun_out if noun_out.isupper() and len(noun_out) > 1 else _natural(noun_out)
            return f"{_match_case(noun_word, new_adj)} {noun_out}"
        pieces = [_match_case(text.text_of(adj[0], adj[0] + adj[1]), new_adj)] if new_adj else []
        if noun:
            middle = text.caption[text.tokens[adj[0] + adj[1] - 1].end : text.tokens[noun[0]].start]
            pieces.append(middle if new_adj else middle.lstrip(" ,"))
            pieces.append(noun_word if new_noun == noun_low else _match_case(noun_word, new_noun))
        return "".join(pieces).strip()

    start = adj[0] if adj else noun[0]
    end = noun[0] + noun[1] if noun else adj[0] + adj[1]
    return value, render, start, end


def _restate_age(noun: str | None, target: str) -> tuple[str, str | None]:
    """(descriptor, noun) that state ``target`` for a phrase about ``noun``."""
    if target == "child":
        if noun in W.CHILD_TO_ADULT:
            return "", noun
        if noun in W.ADULT_TO_CHILD:
            return "", W.ADULT_TO_CHILD[noun]
        if noun in W.AGE_NOUNS:
            return "", "children" if W.AGE_NOUNS[noun][1] == "people" else "child"
        return "child", noun
    descriptor = W.AGE_DESCRIPTORS.get(target, target)
    if noun in W.CHILD_TO_ADULT:
        return descriptor, W.CHILD_TO_ADULT[noun]
    if noun in W.AGE_NOUNS:
        return descriptor, W.AGE_NOUNS[noun][1]
    return descriptor, noun


def _age_mentions(text: _Text, source: str | None) -> list[_Mention]:
    found: list[_Mention] = []
    filler = _age_filler(text)
    i = 0
    while i < len(text):
        w = text.low(i)
        numeric = _numeric_age(text, i)
        size = False
        if numeric:
            k, adj_value = numeric[0], W.age_value_of_years(numeric[1])
        elif text.phrase_at(i, W.AGE_NOUNS, max_words=2) == 2:
            k = 0  # "senior citizens" is a noun, not "senior" + "citizens"
        else:
            k = text.phrase_at(i, W.AGE_ADJECTIVES, max_words=2)
            adj_value = W.AGE_ADJECTIVES[" ".join(text.low(j) for j in range(i, i + k))] if k else None
            if not k and w in W.CHILD_SIZE_ADJECTIVES:
                k, size = 1, True
        if k:
            noun = text.noun_after(i + k, filler)
            if noun and w in W.RANK_AMBIGUOUS_AGE_ADJECTIVES and text.low(noun[0]) not in W.PLAIN_PERSON_NOUNS:
                noun = None  # "a senior engineer" is a rank, not an age
            if size:
                accept = noun is not None and text.low(noun[0]) in W.CHILD_TO_ADULT  # not "a little dog"
            else:
                accept = noun is not None or numeric is not None or w not in W.AMBIGUOUS_AGE_ADJECTIVES
            if accept:
                value, render, start, end = _age_phrase(text, (i, k), noun, adj_value, numeric is not None)
                found.append(_Mention(start, end, value, render))
                i = end
                continue
        # nouns that state an age: "a boy", "kids", "a teenager", "senior citizens"
        kn = text.phrase_at(i, W.AGE_NOUNS, max_words=2) or (1 if w in W.CHILD_TO_ADULT else 0)
        if kn:
            value, render, start, end = _age_phrase(text, None, (i, kn), None)
            found.append(_Mention(start, end, value, render))
            i += kn
            continue
        i += 1
    return found


def _race_mentions(text: _Text, source: str | None) -> list[_Mention]:
    found: list[_Mention] = []
    filler = _race_filler(text)
    i = 0
    while i < len(text):
        k = text.phrase_at(i, W.RACE_DESCRIPTORS)
        noun = text.noun_after(i + k, filler) if k else None
        if k and noun:
            phrase = " ".join(text.low(j) for j in range(i, i + k))
            between = {text.low(j) for j in range(i + k, noun[0] + noun[1])}
            feminine = phrase == "latina" or bool(between & _FEMALE_NOUNS) or "female" in between
            found.append(_Mention(i, i + k, W.RACE_DESCRIPTORS[phrase], lambda t, f=feminine: _race_descriptor(t, f)))
            i += k
            continue
        i += max(k, 1)
    return found


def _race_descriptor(target: str, feminine: bool) -> str:
    if feminine and target in W.RACE_FEMININE:
        return W.RACE_FEMININE[target]
    return W.RACE_DESCRIPTORS_OUT.get(target, target)


def _literal_mentions(text: _Text, values: Iterable[str]) -> list[_Mention]:
    """Whole-word occurrences of custom values ("Muslim", "wheelchair user")."""
    phrases = {" ".join(v.lower().split()): v for v in values}
    found: list[_Mention] = []
    i = 0
    while i < len(text):
        k = text.phrase_at(i, phrases, max_words=6)
        if k:
            value = phrases[" ".join(text.low(j) for j in range(i, i + k))]
            found.append(_Mention(i, i + k, value, lambda t: t))
            i += k
        else:
            i += 1
    return found


_FINDERS = {"gender": _gender_mentions, "age": _age_mentions, "race": _race_mentions}


def _mentions(text: _Text, attr: str, source: str | None, extra_values: Iterable[str] = ()) -> list[_Mention]:
    found = list(_FINDERS[attr](text, source)) if attr in _FINDERS else []
    custom = [v for v in extra_values if v and not _is_builtin(attr, v)]
    if custom:
        # a custom value the caller named is more specific than a table word it overlaps
        literal = _literal_mentions(text, custom)
        taken = {j for m in literal for j in range(m.start, m.end)}
        found = [m for m in found if not taken & set(range(m.start, m.end))] + literal
        found.sort(key=lambda m: m.start)
    return found


# ---------------------------------------------------------------------------------------
# edits
# ---------------------------------------------------------------------------------------


@dataclass
class _Edit:
    start: int  # token index
    end: int  # token index, exclusive
    replacement: str  # already in the caption's case
    note: str | None = None  # explanation; default "original → replacement"


def _swap_edits(text: _Text, chosen: Sequence[_Mention], target: str) -> list[_Edit]:
    edits = []
    for m in chosen:
        original = text.text_of(m.start, m.end)
        rendered = m.render(target)
        if rendered.lower() == original.lower():
            continue
        if m.value is None or not rendered[:1].isupper():
            rendered = _match_case(original, rendered)
        elif original.isupper() and len(original) > 1:
            rendered = rendered.upper()
        start, end = m.start, m.end
        # report only what changed: "old man" -> "young man" is "old → young"
        while end - start > 1 and rendered.endswith(" " + text.tokens[end - 1].text) and text.gap(end - 2) == " ":
            rendered, end = rendered[: -len(text.tokens[end - 1].text) - 1], end - 1
        edits.append(_Edit(start, end, rendered))
    return edits


def _insert_before(text: _Text, at: int, noun_end: int, descriptor: str) -> _Edit:
    """Edit that puts ``descriptor`` before token ``at`` (the phrase runs to ``noun_end``)."""
    token = text.tokens[at]
    phrase = text.text_of(at, noun_end)
    if token.text.isupper() and len(token.text) > 1:
        replacement = f"{descriptor.upper()} {token.text}"
    elif token.text[:1].isupper() and text.starts_sentence(at):
        replacement = _match_case(token.text, f"{descriptor} {_natural(token.text)}")
    else:
        replacement = f"{descriptor} {token.text}"
    return _Edit(at, at + 1, replacement, f"inserted {descriptor!r} before {phrase!r}")


def _back_over(text: _Text, noun_start: int, words: Callable[[int], bool]) -> int:
    """Leftmost token of the descriptors directly before the noun that ``words`` accepts."""
    at = noun_start
    while at > 0 and text.joined(at - 1) and words(at - 1):
        at -= 1
    return at


def _insertion(text: _Text, attr: str, target: str) -> _Edit | None:
    """The edit that states ``target`` in a caption that never mentions ``attr``."""
    found = text.first_person_noun()
    if found is None:
        return None
    start, length = found
    end = start + length
    noun = text.text_of(start, end)
    noun_low = noun.lower()

    def replace_noun(new: str) -> _Edit:
        replacement = _match_case(noun, new)
        return _Edit(start, end, replacement, f"{attr} not mentioned: {noun} → {replacement}")

    race_words = {w.split()[-1] for w in W.RACE_DESCRIPTORS}

    if attr == "gender":
        if noun_low in W.GENDER_NEUTRAL_NOUNS:
            return replace_noun(_gender_form(W.GENDER_NEUTRAL_NOUNS[noun_low], target))
        return _insert_before(text, start, end, target)
    if attr == "age":
        if target == "child" and noun_low in W.ADULT_TO_CHILD:
            return replace_noun(W.ADULT_TO_CHILD[noun_low])
        descriptor = W.AGE_DESCRIPTORS.get(target, target)
        at = _back_over(text, start, lambda j: text.low(j) in W.GENDER_ADJECTIVES or text.low(j) in race_words)
        return _insert_before(text, at, end, descriptor)
    if attr == "race":
        descriptor = _race_descriptor(target, noun_low in _FEMALE_NOUNS)
        at = _back_over(text, start, lambda j: text.low(j) in W.GENDER_ADJECTIVES)
        return _insert_before(text, at, end, descriptor)
    return _insert_before(text, start, end, target)


def _prefix_phrase(attr: str, target: str) -> str:
    """The person a caption without people gets ("an elderly person", "a woman")."""
    if attr == "gender":
        return _gender_form(W.GENDER_NEUTRAL_NOUNS["person"], target)
    if attr == "age":
        descriptor = W.AGE_DESCRIPTORS.get(target, target)
    elif attr == "race":
        descriptor = _race_descriptor(target, False)
    else:
        descriptor = target
    return descriptor if _ends_with_person_noun(descriptor) else f"{descriptor} person"


def _ends_with_person_noun(value: str) -> bool:
    return value.lower().split()[-1] in W.PERSON_NOUNS if value.split() else False


def _fix_articles(text: _Text, edits: list[_Edit]) -> None:
    """Extend each edit right after "a"/"an" to the article when its sound changed."""
    taken = {j for e in edits for j in range(e.start, e.end)}
    for e in edits:
        a = e.start - 1
        if a < 0 or a in taken or text.low(a) not in ("a", "an") or not text.joined(a):
            continue
        first_word = e.replacement.split()[0] if e.replacement.split() else ""
        wanted = indefinite_article(first_word)
        if wanted == text.low(a):
            continue
        article = text.tokens[a].text
        if (article.isupper() and len(article) > 1) or (article == "A" and first_word.isupper() and len(first_word) > 1):
            new_article = wanted.upper()  # "A MAN" -> "AN ELDERLY MAN"
        else:
            new_article = _match_case(article, wanted)
        e.start = a
        e.replacement = f"{new_article}{text.gap(a)}{e.replacement}"
        taken.add(a)


def _apply(text: _Text, edits: list[_Edit]) -> tuple[str, tuple[Substitution, ...], list[str]]:
    pieces, subs, notes, cursor = [], [], [], 0
    for e in sorted(edits, key=lambda e: e.start):
        s, t = text.tokens[e.start].start, text.tokens[e.end - 1].end
        original = text.caption[s:t]
        pieces += [text.caption[cursor:s], e.replacement]
        cursor = t
        subs.append(Substitution(original=original, replacement=e.replacement, start=s))
        notes.append(e.note or f"{original} → {e.replacement}")
    pieces.append(text.caption[cursor:])
    return "".join(pieces), tuple(subs), notes


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


def rewrite_caption(caption: str, attribute: str, source_value: str | None, target_value: str) -> TextCounterfactual:
    """Rewrite ``caption`` so that ``attribute`` states ``target_value`` instead of ``source_value``.

    ``source_value=None`` means unknown: every word of another value is swapped. Values are
    matched case-insensitively against the default vocabularies (``"black"`` is ``"Black"``,
    ``"Hispanic"`` is ``"Latino"``); any other attribute or value is used as a descriptor.
    See the module docstring for the rules and their known limits. Raises ValueError for a
    caption that is not a string or an empty attribute/value.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    attr = _attribute_key(attribute)
    target = _canonical(attr, target_value, "target_value")
    if target is None:
        raise ValueError(f"target_value for attribute {attr!r} is required")
    source = _canonical(attr, source_value, "source_value")
    text = _Text(caption)
    if source is not None and source.lower() == target.lower():
        return TextCounterfactual(caption, (), False, f"no change: source and target are both {target!r}")

    found = _mentions(text, attr, source, [v for v in (source, target) if v])
    chosen = [m for m in found if m.value == source] if source is not None else []
    if not chosen:
        chosen = [m for m in found if m.value != target]
    edits = _swap_edits(text, chosen, target)
    inserted = False
    if not edits and found:
        return TextCounterfactual(caption, (), False, f"no change: the caption already states {attr} {target!r}")
    if not edits:
        edit = _insertion(text, attr, target)
        if edit is None:
            return _prefixed(caption, attr, target)
        edits, inserted = [edit], True
    _fix_articles(text, edits)
    new_caption, subs, notes = _apply(text, edits)
    return TextCounterfactual(new_caption, subs, inserted, "; ".join(notes))


def _prefixed(caption: str, attr: str, target: str) -> TextCounterfactual:
    """A caption without any person noun gets one in front: "an elderly person: a bowl of fruit"."""
    person = _with_article(_prefix_phrase(attr, target))
    if caption[:1].isupper():
        person = person[:1].upper() + person[1:]
    if not caption.strip():  # nothing to prefix: the person is the caption
        sub = Substitution(original=caption, replacement=person, start=0)
        return TextCounterfactual(person, (sub,), True, f"empty caption: replaced by {person!r}")
    sub = Substitution(original="", replacement=f"{person}: ", start=0)
    return TextCounterfactual(f"{person}: {caption}", (sub,), True, f"no person mentioned: prefixed {person + ':'!r}")


def detect_value(caption: str, attribute: str, vocabulary: Sequence[str] | None = None) -> str | None:
    """The single value of ``attribute`` that ``caption`` states, or None.

    None when the caption states no value or several ("a man and a woman"). Built-in
    attributes use the word tables ("a little girl" -> age "child", gender "female");
    ``vocabulary`` adds custom values, found as whole words (the only way to detect a
    custom attribute) and, when given, limits the answer to its values (returned in the
    caller's spelling). "they" is never read as non-binary: it is usually plural.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    attr = _attribute_key(attribute)
    values = [_canonical(attr, v, "vocabulary value") for v in (vocabulary or ())]
    found = _mentions(_Text(caption), attr, None, values)
    stated = {m.value for m in found}
    if len(stated) != 1 or None in stated:
        return None
    value = stated.pop()
    if vocabulary is None:
        return value
    for original in vocabulary:  # the caller's spelling of the value
        if _canonical(attr, original, "vocabulary value") == value:
            return original
    return None  # a value, but not one the caller allows


def attribute_prompt(attribute: str, value: str) -> str:
    """Zero-shot prompt naming ``value``, for the judge's attribute check.

    gender female -> "a photo of a woman"; age elderly -> "a photo of an elderly person";
    age young -> "a photo of a young adult" (so that it does not also describe a child);
    race Black -> "a photo of a Black person"; a custom value -> "a photo of a {value} person"
    (or "a photo of a {value}" when the value is a person noun, such as "teenager").
    """
    attr = _attribute_key(attribute)
    canon = _canonical(attr, value, "value")
    if attr == "gender":
        phrase = _gender_form(W.GENDER_NEUTRAL_NOUNS["person"], canon)
    elif attr == "age" and canon == "young":
        phrase = "young adult"
    else:
        phrase = _prefix_phrase(attr, canon)
    return f"a photo of {_with_article(phrase)}"


def _subject(caption: str | None, attr: str, source: str | None) -> str:
    """The person an edit instruction talks about: the caption's first person noun."""
    if caption:
        text = _Text(caption)
        found = text.first_person_noun()
        if found:
            return " ".join(text.low(j) for j in range(found[0], found[0] + found[1]))
    if attr == "gender" and source in ("male", "female"):
        return "man" if source == "male" else "woman"
    if attr == "age" and source == "child":
        return "child"
    return "person"


def edit_instruction(attribute: str, source_value: str | None, target_value: str, caption: str | None = None) -> str:
    """The InstructPix2Pix instruction for the change, about the caption's person when given.

    ("gender", "male", "female") -> "make the man a woman"; ("age", None, "elderly") ->
    "make the person elderly"; ("race", None, "Black") -> "make the person Black";
    ("gender", None, "female", "a doctor at work") -> "make the doctor female".
    """
    attr = _attribute_key(attribute)
    target = _canonical(attr, target_value, "target_value")
    if target is None:
        raise ValueError(f"target_value for attribute {attr!r} is required")
    source = _canonical(attr, source_value, "source_value")
    subject = _subject(caption, attr, source)
    plural = _plural_noun(subject)

    def become(noun: str) -> str:
        return f"make the {subject} {noun if plural else _with_article(noun)}"

    if attr == "gender":
        if subject in _GENDER_WORDS:
            return become(_gender_form(_GENDER_WORDS[subject][1], target))
        if subject in W.GENDER_NEUTRAL_NOUNS:
            return become(_gender_form(W.GENDER_NEUTRAL_NOUNS[subject], target))
        return f"make the {subject} {target}"
    if attr == "age":
        descriptor, noun = _restate_age(subject, target)
        if target == "child":
            if noun != subject:
                return become(noun)
            return become("children" if plural else "child")
        if noun != subject:
            return become(f"{descriptor} {noun}")
        return f"make the {subject} {descriptor}"
    if attr == "race":
        return f"make the {subject} {_race_descriptor(target, subject in _FEMALE_NOUNS)}"
    return f"make the {subject} {target}"


def joint_edit_instruction(changes: Sequence[tuple[str, str | None, str]], caption: str | None = None) -> str:
    """The InstructPix2Pix instruction for several changes at once (an intersection's joint edit),
    each ``(attribute, source_value, target_value)``, about the caption's person when given.

    [("race", "White", "Black"), ("gender", "female", "male")] with "a woman at her desk" ->
    "make the woman a Black man"; with every target equal to its source it asks for the source
    ("make the woman a White woman"), a joint reconstruction.
    """
    if not changes:
        raise ValueError("a joint edit instruction needs at least one change")
    gender = next((c for c in changes if _attribute_key(c[0]) == "gender"), changes[0])
    subject = _subject(caption, _attribute_key(gender[0]), _canonical(_attribute_key(gender[0]), gender[1], "source_value"))
    phrase = "a person"
    for attribute, _, target in changes:
        phrase = rewrite_caption(phrase, attribute, None, target).caption
    return f"make the {subject} {phrase}"


def joint_attribute_prompt(changes: Sequence[tuple[str, str]]) -> str:
    """Zero-shot prompt naming every ``(attribute, value)`` at once, for the judge's check of a joint
    edit: [("race", "Black"), ("gender", "male")] -> "a photo of a Black man"."""
    phrase = "a person"
    for attribute, value in changes:
        phrase = rewrite_caption(phrase, attribute, None, value).caption
    return f"a photo of {phrase}"
