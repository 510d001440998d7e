"""Text for a terminal from strings read from files: control characters removed.

A manifest, a dataset's name or an error message quoting a file may hold terminal escape codes
(``\\x1b[2J`` clears the screen, ``\\x1b]0;...\\x07`` retitles the window, others rewrite what was
printed before). Everything ``cflab`` prints that came from a file goes through :func:`printable`.
"""

from __future__ import annotations

import re

# ESC sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), and two-byte escapes.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# C0 controls but tab and newline, DEL, and the C1 controls (U+0080 to U+009F).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without escape sequences and control characters (tab and newline kept)."""
    return _CONTROL.sub("", _ESCAPE.sub("", text))
