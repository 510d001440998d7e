"""The ``{person}`` placeholder of probe and label templates (``audit.prompt``, ``audit.choice_prompt``,
``audit.yes_no``, ``audit.ratings``, ``audit.generate.prompts``): its name and whether a template uses
it. The words that fill it are :mod:`counterfactual_lab.plan.person_words`'."""

from __future__ import annotations

import string

# The placeholder's name in a template.
PERSON = "person"


def uses_person(template: str | None) -> bool:
    """Whether ``template`` has a ``{person}`` placeholder (False for a template that does not format)."""
    if not template:
        return False
    try:
        return any(name == PERSON for _, name, _, _ in string.Formatter().parse(template))
    except ValueError:
        return False
