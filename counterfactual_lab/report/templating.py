"""The HTML pages' templates: one Jinja2 environment that escapes every value by default.

Every ``{{ value }}`` in ``counterfactual_lab/report/templates/`` is HTML-escaped (``autoescape``
is on for every template, whatever its name), so no dataset text (captions, labels, attribute
values, queries, ids) can reach a page unescaped by omission. A misspelt name is an error
(``StrictUndefined``), not an empty cell. The one kind of value that goes in as markup is a
chart's SVG (:mod:`counterfactual_lab.report.charts`, matplotlib's escaped output); data for the
page's script goes in through ``|tojson`` inside ``<script type="application/json">``, which
writes ``<``, ``>``, ``&`` and ``'`` as ``\\u003c`` etc., so it cannot close the element.

Pages carry a Content-Security-Policy that allows no network at all and only the page's own
script (by its sha256): a report opened from a mail or from S3 fetches nothing, and a value
that escaped escaping still could not run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import datetime, timezone
from typing import Any

import jinja2

TEMPLATE_PACKAGE = "counterfactual_lab.report"


def short_time(timestamp: Any) -> str:
    """'2025-01-02 08:00 UTC' of an ISO timestamp (a manifest's ``finished_at``); other text as it is."""
    if not timestamp:
        return ""
    text = str(timestamp)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


@functools.cache
def environment() -> jinja2.Environment:
    """The templates' environment (built once per process)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "templates"),
        autoescape=True,  # every template, whatever its extension (.j2 defeats select_autoescape)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["when"] = short_time
    return env


@functools.cache
def script_hash(name: str = "report.js") -> str:
    """The sha256 (base64) the CSP allows the page script by (``'sha256-…'``): the script as the pages include it (``{% include %}``
    inside ``<script>``: template text, not a value, so it is not escaped)."""
    text = environment().get_template(name).render()
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return digest


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context`` (plus ``script_hash``, for the page's CSP)."""
    return environment().get_template(template).render(script_hash=script_hash(), **context)


def render_fragment(template: str, **context: Any) -> str:
    """A part of a page (a ``_name.html.j2`` template) on its own, e.g. for a notebook."""
    return environment().get_template(template).render(**context)
