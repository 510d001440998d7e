"""JSON the project did not just write (manifests, cache records, answer shards), read with bounds.

:func:`read_json` reads through the one bounded reader (:func:`~counterfactual_lab.storage.files.read_bytes`:
a regular file, at most ``max_bytes``) and parses with :func:`parse_json`, which refuses, with
one line naming the file:

* text that is not UTF-8 JSON;
* nesting deeper than ``max_depth`` (:data:`MAX_JSON_DEPTH`): ``[[[[...]]]]`` 200,000 deep would
  otherwise end in an unnamed ``RecursionError`` (or, parsed, in one wherever it is walked);
* an integer of more than :data:`MAX_INT_DIGITS` digits: Python refuses 4,300 digits with a
  message that names neither the file nor the value's place, and converting one costs
  quadratic time below that.

Errors are :class:`DamagedJson`: a ``ValueError`` (callers that treat a damaged file as "not
there" keep doing so) and a ``UserError`` (cflab prints its line and exits 2).
"""

from __future__ import annotations

import json
from typing import Any

from counterfactual_lab.errors import UserError
from counterfactual_lab.storage.files import read_bytes

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 100


class DamagedJson(UserError, ValueError):
    """A JSON file that cannot be what it claims to be; the message names it and says why."""


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _IntTooLong(digits)
    return int(text)


class _IntTooLong(Exception):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


def parse_json(data: bytes | str, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in ``data``; :class:`DamagedJson` naming ``what`` (a path, "manifest.json
    of run X") unless it is UTF-8 JSON within the depth and integer bounds of the module doc."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as exc:
        raise DamagedJson(f"{what} is not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except _IntTooLong as exc:
        raise DamagedJson(f"{what} holds an integer of {exc.digits:,} digits (at most {MAX_INT_DIGITS} are read)") from None
    except RecursionError:
        raise DamagedJson(f"{what} is nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise DamagedJson(f"{what} is not valid JSON: {exc}") from None
    if json_depth(value, max_depth) > max_depth:
        raise DamagedJson(f"{what} is nested deeper than {max_depth} levels")
    return value


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``value``'s lists and objects nest (a scalar: 0), counted without recursion and
    only up to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def read_json(uri: str, options: dict[str, Any] | None = None, *, max_bytes: int, what: str | None = None,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of the regular file at ``uri`` (at most ``max_bytes``), parsed with
    :func:`parse_json`; ``what`` names it in errors (default: ``uri``)."""
    label = what or uri
    return parse_json(read_bytes(uri, options, max_bytes=max_bytes, what=label), label, max_depth=max_depth)
