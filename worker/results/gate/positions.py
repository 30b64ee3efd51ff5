"""Where things are in a policy file: line numbers by validation path, for error messages.

Neither :mod:`tomllib` nor :mod:`json` reports where a key sits once the text parsed, so these
read the positions from the text itself: a line scanner for TOML (enough for the files a
person writes) and a walk over an already valid JSON text that uses :mod:`json`'s own string
and scalar decoders. A path is what pydantic's ``loc`` is: ``("rule", 0, "metric")``.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from typing import Any

Loc = tuple[Any, ...]

_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([^\]\s]+)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\]\s]+)\s*\]")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")
_JSON_WS = re.compile(r"[ \t\n\r]*")


def toml_syntax_message(where: str, message: str, text: str) -> str:
    """tomllib's ``... (at line N, column M)`` as ``where line N: invalid TOML: ...``."""
    found = _TOML_AT.search(message)
    if found:
        detail = message[: found.start()]
        return f"{where} line {found.group(1)}: invalid TOML: {detail} (column {found.group(2)})"
    detail = message.replace("(at end of document)", "").strip()
    last = max(1, len(text.splitlines()))
    return f"{where} line {last}: invalid TOML: {detail} (at the end of the file)"


def toml_lines(text: str) -> dict[Loc, int]:
    """Line numbers (1-based) of keys and ``[[rule]]`` tables, by validation path.

    ``("rule", i)`` is the i-th ``[[rule]]`` header, ``("rule", i, key)`` a key inside it,
    ``(key,)`` a top-level key.
    """
    lines: dict[Loc, int] = {}
    counts: dict[str, int] = {}
    table: Loc = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _ARRAY_TABLE.match(line):
            name = match.group(1)
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = (name, index)
            lines.setdefault((name,), number)
            lines[table] = number
        elif match := _TABLE.match(line):
            table = (match.group(1),)
            lines.setdefault(table, number)
        elif match := _KEY.match(line):
            key = next(g for g in match.groups() if g is not None)
            lines.setdefault((*table, key), number)
    return lines


def json_lines(text: str) -> dict[Loc, int]:
    """Line numbers of every object key and array element of a valid JSON text, by path."""
    lines: dict[Loc, int] = {}
    decoder = json.JSONDecoder()

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip(pos: int) -> int:
        return _JSON_WS.match(text, pos).end()  # type: ignore[union-attr]

    def value(pos: int, path: Loc) -> int:
        """Record the positions inside the value at ``pos``; the position after it."""
        pos = skip(pos)
        char = text[pos]
        if char == "{":
            pos = skip(pos + 1)
            if text[pos] == "}":
                return pos + 1
            while True:
                key, end = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
                lines.setdefault((*path, key), line_of(pos))
                pos = skip(end)  # at ':'
                pos = skip(value(pos + 1, (*path, key)))
                if text[pos] == "}":
                    return pos + 1
                pos = skip(pos + 1)  # past ','
        if char == "[":
            pos = skip(pos + 1)
            if text[pos] == "]":
                return pos + 1
            index = 0
            while True:
                lines.setdefault((*path, index), line_of(pos))
                pos = skip(value(pos, (*path, index)))
                index += 1
                if text[pos] == "]":
                    return pos + 1
                pos = skip(pos + 1)
        _, end = decoder.raw_decode(text, pos)
        return end

    with suppress(IndexError, ValueError):  # the text parsed as JSON already
        value(0, ())
    return lines


def line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of ``loc``, or of the nearest enclosing path that has one."""
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None
