"""Strict JSON parsing for FHIR input: orjson for the data, plus a duplicate-key check.

RFC 8259 leaves duplicate object keys undefined and orjson silently keeps the
last one; FHIR JSON (R4 json.html) requires a property to appear once, and a
duplicate usually means a client bug that would otherwise lose data. The
duplicate check re-scans with the standard library's JSON decoder (a hook
per object, no data kept), which costs a few tens of microseconds per
typical resource.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from hub.errors import Issue


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1:
        keys = {k for k, _ in pairs}
        if len(keys) != len(pairs):
            raise _DuplicateKey()


def parse_json(raw: bytes | str) -> tuple[Any, list[Issue]]:
    """Parse a request body. Returns (data, issues); data is None when the JSON is unusable.

    A leading UTF-8 byte order mark is ignored (RFC 8259 section 8.1 allows parsers to).
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw)
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
    elif raw.startswith("\ufeff"):
        raw = raw[1:]
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as ex:
        return None, [
            Issue("fatal", "structure", f"the body is not valid JSON ({ex.msg} at position {ex.pos})")
        ]
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        return data, [Issue("error", "structure", "a JSON object has a duplicate property")]
    except ValueError:
        pass  # orjson accepted it; nothing more to say
    return data, []
