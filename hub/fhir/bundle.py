"""Bundles assembled from stored bytes, without re-serializing the resources (as Blaze does)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hub.store.repository import instant, now_micros


@dataclass(frozen=True)
class Entry:
    """A Bundle entry whose ``resource`` is already JSON bytes (or None)."""

    full_url: str | None
    resource: bytes | None
    extra: Mapping[str, Any]  # search / request / response members, as plain JSON


def _entry_bytes(e: Entry) -> bytes:
    head: dict[str, Any] = {}
    if e.full_url:
        head["fullUrl"] = e.full_url
    parts = [orjson.dumps(head)[:-1]]  # '{"fullUrl":"..."' without the closing brace
    sep = b"," if head else b""
    if e.resource is not None:
        parts.append(sep + b'"resource":' + e.resource)
        sep = b","
    if e.extra:
        parts.append(sep + orjson.dumps(dict(e.extra))[1:-1])
    parts.append(b"}")
    return b"".join(parts)


def assemble(bundle_type: str, entries: Iterable[Entry], *, total: int | None = None, links: Mapping[str, str] | None = None) -> bytes:
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(now_micros())},
        "type": bundle_type,
    }
    if total is not None:
        head["total"] = total
    if links:
        head["link"] = [{"relation": rel, "url": url} for rel, url in links.items()]
    body = b",".join(_entry_bytes(e) for e in entries)
    return orjson.dumps(head)[:-1] + b',"entry":[' + body + b"]}" if body else orjson.dumps(head)
