"""The values a memory states, and the guard that keeps memories with different values
apart (the ``value_guard`` option, on by default; ``docs/consolidation.md``).

Two memories can embed almost alike and still state different facts: "the build
takes 40 s" and "the build takes 4 min", two releases, two paths, two error codes.
A value is one of these kinds, each normalized so that spellings of one value compare
equal:

- ``url``: ``http(s)://`` or ``ftp://`` addresses, trailing punctuation and ``/`` dropped;
- ``path``: file paths: starting with ``/``, ``./``, ``../``, ``~/`` or a drive
  (``C:\\``), or with two slashes or more, or a slash and a file extension
  (``src/app/main.py``); ``and/or`` and ``km/h`` are not paths; a path ends at a space;
- ``date`` and ``time``: ``2026-11-28`` (with an optional time) and ``14:30``;
- ``version``: ``v`` and a number (``v2``, ``v1.4``) or three dotted parts and more
  (``1.4.2``, ``2.0.0-rc1``); the ``v`` is dropped, so ``v1.4.2`` equals ``1.4.2``;
- ``hash``: UUIDs and hexadecimal strings of 7 to 64 characters with a letter and a
  digit (commit hashes, digests), lower-cased;
- ``code``: upper-case identifiers with a digit or an underscore (``E0432``,
  ``CVE-2021-44228``, ``ERR_CONNECTION_REFUSED``, ``ORCHESTRATION_LOG_LEVEL``) and
  issue numbers (``#123``);
- ``money``: a currency sign or code with an amount (``$1.2 billion``, ``40 EUR``);
- ``percent``: ``0.18%``, ``0.18 percent``, ``0.18 per cent``, ``0.18 pct``;
- ``duration``: a number with a unit of time, in seconds (``40 s``, ``40s``,
  ``40 seconds`` and ``40 secs`` are one value; ``4 min`` equals ``240 s``);
- ``size``: a number with a unit of data, in bytes (``512 MB`` is 512,000,000 bytes,
  ``512 MiB`` 536,870,912);
- ``number``: any other number, thousands separators dropped (``1,000`` equals
  ``1000``), trailing zeros too (``1.80`` equals ``1.8``), scaled by ``thousand``,
  ``million``, ``billion``, ``trillion``, ``k`` or ``bn``; a number glued to other
  letters (``3rd``, ``64bit``) is kept as written, lower-cased.

Numbers written as words ("three") and signs are not values.

Two memories **conflict** when, for some kind, both state values of that kind and
neither's set contains the other's: ``{40 s}`` and ``{240 s}`` conflict, ``{40 s}``
and ``{40 s, 60 s}`` do not (the second adds a value; merging keeps every sentence),
and a memory with no value of a kind never conflicts on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

Values = Mapping[str, frozenset[str]]

# Bump when what is extracted, or what counts as a conflict, changes: a project's next
# pass is then full (its signature, ``passes.signature``, changes with it).
GUARD_VERSION = 1

_TRAILING = ".,;:!?)]}'\""

_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+", re.IGNORECASE)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
_SEGMENT = r"[\w.@+-]+"
_PATH = re.compile(
    rf"(?<![\w/])(?:[A-Za-z]:\\[\w.\\-]*\w|(?:~|\.{{1,2}})?/{_SEGMENT}(?:/{_SEGMENT})*/?|{_SEGMENT}(?:/{_SEGMENT})+/?)"
)
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}$")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?\b")
_TIME = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[ap]\.?m\b\.?)?", re.IGNORECASE)
_VERSION = re.compile(r"\bv\d+(?:\.\d+)*(?:-[\w.]+)?\b|\b\d+\.\d+\.\d+(?:\.\d+)*(?:-[\w.]+)?\b", re.IGNORECASE)
_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,64}\b", re.IGNORECASE)
_CODE = re.compile(r"#\d+\b|\b[A-Z][A-Z0-9]*(?:[-_][A-Z0-9]+)+\b|\b[A-Z]+\d[A-Z0-9]*\b")
_CURRENCY = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "usd": "usd", "eur": "eur", "gbp": "gbp", "jpy": "jpy"}
_SCALE = {
    "thousand": Decimal(10**3),
    "k": Decimal(10**3),
    "million": Decimal(10**6),
    "mn": Decimal(10**6),
    "billion": Decimal(10**9),
    "bn": Decimal(10**9),
    "trillion": Decimal(10**12),
}
_DURATION = {
    "ms": Decimal("0.001"),
    "msec": Decimal("0.001"),
    "millisecond": Decimal("0.001"),
    "milliseconds": Decimal("0.001"),
    "s": Decimal(1),
    "sec": Decimal(1),
    "secs": Decimal(1),
    "second": Decimal(1),
    "seconds": Decimal(1),
    "min": Decimal(60),
    "mins": Decimal(60),
    "minute": Decimal(60),
    "minutes": Decimal(60),
    "h": Decimal(3600),
    "hr": Decimal(3600),
    "hrs": Decimal(3600),
    "hour": Decimal(3600),
    "hours": Decimal(3600),
    "d": Decimal(86400),
    "day": Decimal(86400),
    "days": Decimal(86400),
    "week": Decimal(604800),
    "weeks": Decimal(604800),
}
_SIZE = {
    "b": Decimal(1),
    "byte": Decimal(1),
    "bytes": Decimal(1),
    "kb": Decimal(10**3),
    "mb": Decimal(10**6),
    "gb": Decimal(10**9),
    "tb": Decimal(10**12),
    "kib": Decimal(2**10),
    "mib": Decimal(2**20),
    "gib": Decimal(2**30),
    "tib": Decimal(2**40),
    "kilobytes": Decimal(10**3),
    "megabytes": Decimal(10**6),
    "gigabytes": Decimal(10**9),
    "terabytes": Decimal(10**12),
}
_PERCENT = ("%", "percent", "per cent", "pct")
_UNITS = sorted([*_SCALE, *_DURATION, *_SIZE, *_PERCENT, "usd", "eur", "gbp", "jpy"], key=len, reverse=True)
_NUMBER = re.compile(
    r"(?P<currency>[$€£¥]\s?)?(?<![\w.])(?P<amount>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<fraction>\.\d+)?"
    r"(?P<unit>\s?(?:%|(?:" + "|".join(re.escape(u) for u in _UNITS if u != "%") + r")\b))?"
    r"(?P<glued>[A-Za-z]\w*)?",
    re.IGNORECASE,
)


def extract(text: str) -> dict[str, frozenset[str]]:
    """The values ``text`` states, by kind (only kinds it has)."""
    found: dict[str, set[str]] = {}
    rest = text

    def take(kind: str, pattern: re.Pattern[str], normalize=lambda s: s) -> None:
        nonlocal rest

        def keep(match: re.Match[str]) -> str:
            value = normalize(match.group(0))
            if value:
                found.setdefault(kind, set()).add(value)
                return " "
            return match.group(0)

        rest = pattern.sub(keep, rest)

    take("url", _URL, lambda s: s.rstrip(_TRAILING).rstrip("/"))
    take("hash", _UUID, str.lower)
    take("path", _PATH, _path)
    take("date", _DATE, lambda s: s.replace(" ", "T"))
    take("time", _TIME, lambda s: re.sub(r"[\s.]", "", s.lower()))
    take("version", _VERSION, lambda s: s.lower().removeprefix("v"))
    take("hash", _HASH, str.lower)
    take("code", _CODE)
    for match in _NUMBER.finditer(rest):
        kind, value = _number(match)
        found.setdefault(kind, set()).add(value)
    return {kind: frozenset(values) for kind, values in found.items()}


def conflict(a: Values, b: Values) -> bool:
    """Both state values of one kind, and neither's set contains the other's."""
    for kind in a.keys() & b.keys():
        x, y = a[kind], b[kind]
        if not (x <= y or y <= x):
            return True
    return False


def _path(text: str) -> str:
    path = text.rstrip(_TRAILING)
    if not re.search(r"[A-Za-z]", path):
        return ""  # 24/7, 1/2: numbers, not paths
    anchored = path.startswith(("/", "./", "../", "~/")) or re.match(r"[A-Za-z]:\\", path)
    if anchored or path.count("/") >= 2 or _EXTENSION.search(path):
        return path.rstrip("/") or path
    return ""


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        return Decimal(0)


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _number(match: re.Match[str]) -> tuple[str, str]:
    amount = _decimal(match.group("amount") + (match.group("fraction") or ""))
    unit = (match.group("unit") or "").strip().lower()
    glued = match.group("glued")
    currency = _CURRENCY.get((match.group("currency") or "").strip())
    if glued and not unit:
        return "number", match.group(0).strip().lower()
    if unit in _SCALE:
        amount *= _SCALE[unit]
    if unit in ("usd", "eur", "gbp", "jpy"):
        currency = unit
    if currency:
        return "money", f"{currency} {_plain(amount)}"
    if unit in _PERCENT:
        return "percent", _plain(amount)
    if unit in _DURATION:
        return "duration", _plain(amount * _DURATION[unit])
    if unit in _SIZE:
        return "size", _plain(amount * _SIZE[unit])
    return "number", _plain(amount)
