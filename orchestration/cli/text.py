"""Neutralising control characters in what the command line prints as text.

Project names, error messages, user names and other values come from the database,
where anyone who can name a project or make a job fail put them. Printed as they are
at a terminal, an ESC sequence in one clears the screen, moves the cursor or rewrites
earlier lines; a carriage return or newline fakes a line of the report. ``clean``
replaces every such character with a visible escape (``\\x1b``, ``\\r``, ``\\u202e``),
so the text shows what is stored without acting on the terminal. ``--json`` needs
none of this: JSON escapes control characters itself.
"""

from __future__ import annotations

# C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals), the
# Unicode line and paragraph separators, and the bidirectional formatting characters
# that make text read differently from what is stored.
_CONTROLS = [
    *range(0x00, 0x20),
    0x7F,
    *range(0x80, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape(code: int) -> str:
    return _NAMED.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


_ONE_LINE = {code: _escape(code) for code in _CONTROLS}
_MULTI_LINE = {code: escaped for code, escaped in _ONE_LINE.items() if code not in (0x09, 0x0A)}


def clean(value: object, *, multiline: bool = False) -> str:
    """``value`` as text safe to print at a terminal: control characters become
    visible escapes. One line unless ``multiline``, which keeps newlines and tabs
    (ESC, carriage returns and the rest are escaped either way)."""
    return str(value).translate(_MULTI_LINE if multiline else _ONE_LINE)
