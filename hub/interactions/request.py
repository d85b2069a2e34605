"""The transport-neutral request and response of one FHIR interaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from hub.errors import FhirError, invalid
from hub.security.scopes import Principal
from hub.store.repository import Change, Stored, WriteResult


@dataclass
class FhirRequest:
    method: str  # GET HEAD POST PUT PATCH DELETE
    path: str  # relative to the FHIR base, no leading slash, no query ("Patient/1/_history")
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: Any = None  # parsed JSON
    base_url: str = "http://localhost/fhir"
    origin: str | None = None  # what caused the change (connector name), carried to the outbox
    principal: Principal = field(default_factory=Principal.system)  # who is asking, and what it may do
    in_transaction: bool = False  # an entry of a transaction Bundle (conditional references allowed)
    validated: bool = False  # the body was validated before the write transaction (transaction.prevalidate)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    @property
    def prefer_return(self) -> str:
        prefer = self.headers.get("prefer") or ""
        for part in prefer.split(";"):
            for item in part.split(","):
                key, _, value = item.strip().partition("=")
                if key.strip() == "return":
                    return value.strip().strip('"')
        return "representation"

    @property
    def prefer_strict(self) -> bool:
        prefer = (self.headers.get("prefer") or "").replace(" ", "")
        return "handling=strict" in prefer


@dataclass
class FhirResponse:
    status: int
    body: bytes | None = None  # JSON bytes
    headers: dict[str, str] = field(default_factory=dict)
    resource: bool = False  # the body is one resource (so _summary/_elements apply on read)
    stored: Stored | None = None  # the version the body shows, when there is one
    unchanged: bool = False  # an update whose content equalled the current version: nothing was written

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> FhirResponse:
        return cls(status, orjson.dumps(obj), headers or {})

    @classmethod
    def error(cls, err: FhirError) -> FhirResponse:
        return cls(err.http_status, orjson.dumps(err.outcome()), dict(err.headers))


def version_headers(stored: Stored, base_url: str) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": stored.last_modified,
        "Location": f"{base_url}/{stored.res_type}/{stored.res_id}/_history/{stored.version}",
    }


def parse_etag(value: str | None, code: str) -> int | None:
    """``W/"3"`` or ``"3"`` or ``3`` -> 3."""
    if value is None:
        return None
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    if not raw.isdigit():
        raise invalid(code, "ETag must look like W/\"<versionId>\"")
    return int(raw)


@dataclass
class Planned:
    """A write worked out but not yet applied; transactions apply many at once."""

    change: Change | None
    respond: Callable[[WriteResult | None], FhirResponse]
    entry_url: str | None = None  # the Type/id a transaction fullUrl resolves to
