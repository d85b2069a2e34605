"""A small FHIR server in memory, served through respx: the EHR of the unit tests.

It does what the connector relies on — token endpoint, CapabilityStatement, smart-configuration,
search with ``_lastUpdated=gt``, ``_sort=_lastUpdated``, ``_count``, ``_id`` and next links, read,
conditional create on identifier, update with ``If-Match`` (412 with an OperationOutcome) — and lets
a test queue failures (429 with Retry-After, 5xx, timeouts) in front of any path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson

HOST = "ehr.test"
BASE = f"https://{HOST}/fhir"
TOKEN_URL = f"https://{HOST}/auth/token"


def instant(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds")


def outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


@dataclass
class Stored:
    resource: dict[str, Any]
    version: int
    updated: int


@dataclass
class FakeEhr:
    types: tuple[str, ...] = ("Patient", "Appointment", "Coverage")
    token_ttl: int = 300
    conditional_create: bool = True
    versioning: str = "versioned-update"
    smart_algs: tuple[str, ...] = ("RS384", "ES384")
    data: dict[str, dict[str, Stored]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str, Callable[[httpx.Request], httpx.Response]]] = field(default_factory=list)
    token_error: tuple[int, dict[str, Any]] | None = None
    clock: int = 1_790_000_000_000_000
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------ test helpers
    def tick(self, step: int = 1000) -> int:
        self.clock += step
        return self.clock

    def put(self, resource: dict[str, Any], *, same_instant: bool = False) -> dict[str, Any]:
        """Create or update a resource on the EHR (as its own users would)."""
        res_type = resource["resourceType"]
        rid = resource.get("id") or f"e{next(self._ids)}"
        bucket = self.data.setdefault(res_type, {})
        old = bucket.get(rid)
        when = self.clock if same_instant else self.tick()
        version = old.version + 1 if old else 1
        body = {**resource, "id": rid, "meta": {**(resource.get("meta") or {}), "versionId": str(version), "lastUpdated": instant(when)}}
        bucket[rid] = Stored(body, version, when)
        return body

    def get(self, res_type: str, rid: str) -> dict[str, Any] | None:
        found = self.data.get(res_type, {}).get(rid)
        return found.resource if found else None

    def all(self, res_type: str) -> list[dict[str, Any]]:
        return [s.resource for s in self.data.get(res_type, {}).values()]

    def fail(self, method: str, path_prefix: str, *responses: Callable[[httpx.Request], httpx.Response]) -> None:
        """Queue failures: the next calls matching ``method`` and ``path_prefix`` get these answers first."""
        for r in responses:
            self.failures.append((method, path_prefix, r))

    def calls(self, method: str, path_prefix: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.startswith(f"/fhir/{path_prefix}".rstrip("/"))]

    # ------------------------------------------------------------------ the server
    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        for i, (method, prefix, answer) in enumerate(self.failures):
            if request.method == method and path.startswith(prefix):
                del self.failures[i]
                return answer(request)
        return self.serve(request)

    def serve(self, request: httpx.Request) -> httpx.Response:
        """The normal answer (no queued failure)."""
        path = request.url.path
        if path == "/auth/token":
            return self._token(request)
        if path == "/fhir/.well-known/smart-configuration":
            return self._json(200, {"token_endpoint": TOKEN_URL, "grant_types_supported": ["client_credentials"],
                                    "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
                                    "token_endpoint_auth_signing_alg_values_supported": list(self.smart_algs),
                                    "scopes_supported": ["system/*.cruds"], "capabilities": ["client-confidential-asymmetric"]})
        if path == "/fhir/metadata":
            return self._json(200, self.capability())
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer t"):
            return self._json(401, outcome("login", "no token"))
        parts = path.removeprefix("/fhir/").split("/")
        if request.method == "GET" and len(parts) == 1:
            return self._search(request, parts[0])
        if request.method == "GET" and len(parts) == 2 and parts[1] == "_history":
            return self._history(request, parts[0])
        if request.method == "GET" and len(parts) == 2:
            found = self.data.get(parts[0], {}).get(parts[1])
            if found is None:
                return self._json(404, outcome("not-found", "unknown"))
            return self._json(200, found.resource, {"ETag": f'W/"{found.version}"'})
        if request.method == "POST" and len(parts) == 1:
            return self._create(request, parts[0])
        if request.method == "PUT" and len(parts) == 2:
            return self._update(request, parts[0], parts[1])
        return self._json(405, outcome("not-supported", "no"))

    def capability(self) -> dict[str, Any]:
        return {
            "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["json"], "date": "2026-01-01",
            "rest": [{"mode": "server", "searchParam": [{"name": "_lastUpdated", "type": "date"}], "resource": [
                {"type": t, "versioning": self.versioning, "conditionalCreate": self.conditional_create,
                 "interaction": [{"code": c} for c in ("read", "search-type", "create", "update", "history-type")]}
                for t in self.types]}],
        }

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.Response(status, content=orjson.dumps(body), headers={"Content-Type": "application/fhir+json", **(headers or {})})

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        self.token_forms.append(form)
        if self.token_error is not None:
            return httpx.Response(self.token_error[0], json=self.token_error[1])
        return httpx.Response(200, json={"access_token": f"t{next(self._tokens)}", "token_type": "bearer",
                                         "expires_in": self.token_ttl, "scope": form.get("scope", "")})

    def _search(self, request: httpx.Request, res_type: str) -> httpx.Response:
        params = dict(parse_qsl(request.url.query.decode()))
        items = sorted(self.data.get(res_type, {}).values(), key=lambda s: (s.updated, s.resource["id"]))
        if "_id" in params:
            ids = set(params["_id"].split(","))
            items = [s for s in items if s.resource["id"] in ids]
        if "_lastUpdated" in params and params["_lastUpdated"].startswith("gt"):
            from hub.fhir.instant import parse_instant_micros

            floor = parse_instant_micros(params["_lastUpdated"][2:], "_lastUpdated")
            items = [s for s in items if s.updated > floor]
        count = int(params.get("_count", "20"))
        offset = int(params.get("_page", "0"))
        page = items[offset : offset + count]
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + count < len(items):
            nxt = {k: v for k, v in params.items() if k != "_page"}
            nxt["_page"] = str(offset + count)
            links.append({"relation": "next", "url": f"{BASE}/{res_type}?{urlencode(nxt)}"})
        return self._json(200, {"resourceType": "Bundle", "type": "searchset", "total": len(items), "link": links,
                                "entry": [{"fullUrl": f"{BASE}/{res_type}/{s.resource['id']}", "resource": s.resource,
                                           "search": {"mode": "match"}} for s in page]})

    def _history(self, request: httpx.Request, res_type: str) -> httpx.Response:
        """Type history, newest first (only the current versions are kept here: enough for the connector)."""
        from hub.fhir.instant import parse_instant_micros

        params = dict(parse_qsl(request.url.query.decode()))
        items = sorted(self.data.get(res_type, {}).values(), key=lambda s: (s.updated, s.resource["id"]), reverse=True)
        if "_since" in params:
            since = parse_instant_micros(params["_since"], "_since")
            items = [s for s in items if s.updated >= since]
        count = int(params.get("_count", "20"))
        offset = int(params.get("_page", "0"))
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + count < len(items):
            links.append({"relation": "next", "url": f"{BASE}/{res_type}/_history?{urlencode({**params, '_page': str(offset + count)})}"})
        return self._json(200, {"resourceType": "Bundle", "type": "history", "link": links, "entry": [
            {"fullUrl": f"{BASE}/{res_type}/{s.resource['id']}", "resource": s.resource,
             "request": {"method": "PUT", "url": f"{res_type}/{s.resource['id']}"}} for s in items[offset : offset + count]]})

    def _written(self, status: int, body: dict[str, Any]) -> httpx.Response:
        rid, version = body["id"], body["meta"]["versionId"]
        return self._json(status, body, {"ETag": f'W/"{version}"',
                                         "Location": f"{BASE}/{body['resourceType']}/{rid}/_history/{version}"})

    def _create(self, request: httpx.Request, res_type: str) -> httpx.Response:
        body = orjson.loads(request.content)
        cond = request.headers.get("if-none-exist")
        if cond:
            system, _, value = dict(parse_qsl(cond)).get("identifier", "").partition("|")
            for s in self.data.get(res_type, {}).values():
                if any(i.get("system") == system and i.get("value") == value for i in s.resource.get("identifier") or []):
                    return self._written(200, s.resource)
        body.pop("id", None)
        return self._written(201, self.put(body))

    def _update(self, request: httpx.Request, res_type: str, rid: str) -> httpx.Response:
        body = orjson.loads(request.content)
        current = self.data.get(res_type, {}).get(rid)
        match = request.headers.get("if-match")
        if match is not None and (current is None or match != f'W/"{current.version}"'):
            return self._json(412, outcome("conflict", f"version conflict: {match} is not the current version"))
        return self._written(200 if current else 201, self.put({**body, "id": rid}))


def status(code: int, headers: dict[str, str] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, json=outcome("transient" if code >= 500 else "throttled", f"answered {code}"), headers=headers)
    return answer


def timeout() -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)
    return answer
