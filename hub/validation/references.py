"""Shapes of Reference.reference values (R4 references.html, 2.3.0.x)."""

from __future__ import annotations

import re

_ID = r"[A-Za-z0-9\-\.]{1,64}"
RELATIVE = re.compile(rf"([A-Z][A-Za-z]+)/({_ID})(?:/_history/({_ID}))?").fullmatch
# the Type/id[/_history/v] tail of an absolute RESTful URL
ABSOLUTE_TAIL = re.compile(rf"(?:^|/)([A-Z][A-Za-z]+)/({_ID})(?:/_history/({_ID}))?$").search
HTTP = re.compile(r"https?://[^\s/?#]+[^\s]*").fullmatch
URN_UUID = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
).fullmatch
URN_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+").fullmatch
OTHER_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+").fullmatch
CONDITIONAL = re.compile(r"([A-Z][A-Za-z]+)\?\S*").fullmatch
ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+").fullmatch

EXAMPLE_HOSTS = ("example.org", "example.com", "example.net")
_HOST = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#:@]+@)?([^/?#:]+)").match


def is_example_url(value: str) -> bool:
    """A URL on a host reserved for documentation (RFC 2606)."""
    m = _HOST(value)
    if m is None:
        return False
    host = m.group(2).lower()
    return any(host == h or host.endswith("." + h) for h in EXAMPLE_HOSTS)


def split_history(ref: str) -> tuple[str, str | None]:
    """``.../Type/id/_history/v`` -> (``.../Type/id``, ``v``)."""
    head, sep, version = ref.partition("/_history/")
    return (head, version) if sep else (ref, None)
