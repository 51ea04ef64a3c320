"""The one JSON parser for untrusted input: a nesting-depth limit before the standard parser.

CPython's `json` recurses once per nesting level: a document of a thousand `[` raises
RecursionError (not ValueError) from deep inside the parser, which slips past every
`except ValueError` refusal path, and its limit depends on how deep the caller's stack
already is. No FedSeal format nests more than a handful of levels, so every parser of
bytes that came from outside (safetensors headers, bundles, policies, configs, enrolment
and job files, log lines) checks the depth first and refuses with a FormatError that names
the limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fedseal.errors import FormatError

__all__ = ["MAX_JSON_DEPTH", "JsonDepthError", "check_depth", "json_type", "loads"]

# The deepest FedSeal document (a policy: object > list > object > list) nests 5 levels;
# the margin leaves room for metadata without letting the parser recurse far.
MAX_JSON_DEPTH = 32

# A JSON string (dropped: brackets inside it do not nest), matched a run of plain bytes at a
# time. An unterminated string runs to the end (a lone backslash there included), so the
# scan stays linear on hostile input (the parser refuses it).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# What is left but the brackets is deleted, and each bracket becomes +1 or -1 (bytes.translate).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN, _CLOSE = 2, 0  # byte values after the translation: depth step = value - 1
_STEPS = bytes.maketrans(b"[{]}", bytes((_OPEN, _OPEN, _CLOSE, _CLOSE)))


class JsonDepthError(FormatError):
    """A JSON document nests deeper than the limit (refused before parsing)."""


def check_depth(data: bytes | str, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise JsonDepthError if `data` nests arrays/objects deeper than `max_depth`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    # Fast path: fewer openers than the limit cannot nest deeper than it (C-speed counts).
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    # The strings and everything else go at C speed; a safetensors header of 256 tensors
    # leaves ~1500 brackets to walk (a regex token scan took ~7 ms per upload).
    steps = _STRING.sub(b"", raw).translate(_STEPS, _NOT_BRACKETS)
    depth = 0
    for step in steps:
        depth += step - 1
        if depth > max_depth:
            raise JsonDepthError(f"{what} nests JSON deeper than {max_depth} levels")


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_depth: int = MAX_JSON_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
    parse_float: Callable[[str], Any] | None = None,
    parse_int: Callable[[str], Any] | None = None,
) -> Any:
    """`json.loads` with a depth limit; every failure is a FormatError naming `what`.

    Errors raised by the hooks propagate unchanged, so a caller's own named errors
    (duplicate keys, NaN) keep their wording.
    """
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    check_depth(data, what=what, max_depth=max_depth)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid UTF-8") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=object_pairs_hook,
            parse_constant=parse_constant,
            parse_float=parse_float,
            parse_int=parse_int,
        )
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        # Unreachable after the depth check unless the caller's own stack is nearly spent.
        raise JsonDepthError(f"{what} nests JSON too deeply for this parser") from None


def json_type(value: object) -> str:
    """Name a decoded JSON value's type in JSON's words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
