"""``audit.skew_protocol``: which ranking a retrieval query's skew and NDKL are measured on.

* ``geyik`` (default): each query ranks the whole stratum's pool; the desired distribution is
  uniform over the attribute's configured values for balanced sets, the pool's own mix for
  originals; K = ``audit.top_k`` (Geyik et al., KDD 2019).
* ``socialcounterfactuals``: each query ranks only its own sets, those of the query's *subject*
  (the one audit label the query names: "a photo of a doctor" → ``doctor``); the desired
  distribution is that pool's own mix, K is the number of groups, and MaxSkew is also averaged
  over the queries, as in the SocialCounterfactuals release (Howard et al., CVPR 2024).

docs/metrics.md ("Two skew protocols") has what each computes and how the released code differs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

SKEW_PROTOCOL_GEYIK = "geyik"
SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS = "socialcounterfactuals"
SkewProtocol = Literal["geyik", "socialcounterfactuals"]


def names_word(text: str | None, word: str) -> bool:
    """Whether ``text`` holds ``word`` as whole words, ignoring case ("a Doctor's bag" names "doctor")."""
    if not text or not word.strip():
        return False
    words = r"\s+".join(re.escape(part) for part in word.split())
    return re.search(rf"(?<!\w){words}(?!\w)", text, flags=re.IGNORECASE) is not None


def query_subject(query: str, labels: Sequence[str]) -> str | None:
    """The one label ``query`` names (whole words, any case); None when it names none or several.

    A label named only inside a longer named label does not count: with labels ``nurse`` and
    ``head nurse``, "a photo of a head nurse" names ``head nurse``.
    """
    named = [label for label in labels if names_word(query, label)]
    outermost = [label for label in named if not any(other != label and names_word(other, label) for other in named)]
    return outermost[0] if len(outermost) == 1 else None


def subject_problem(queries: Sequence[str], labels: Sequence[str]) -> str | None:
    """Why the socialcounterfactuals protocol cannot find each query's own sets; None when it can.
    (Keys as the ``audit`` section's own: the config error prefixes ``audit:``.)"""
    for index, query in enumerate(queries):
        if query_subject(query, labels) is None:
            named = [label for label in labels if names_word(query, label)]
            what = f"several labels ({', '.join(named)})" if named else f"none of labels ({', '.join(labels)})"
            return (f"queries[{index}] {query!r} names {what}: skew_protocol {SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS} "
                    f"ranks each query's own sets, those of the one label it names; name exactly one label in the "
                    f"query, or set skew_protocol: {SKEW_PROTOCOL_GEYIK}")
    return None
