"""batch and transaction: ``POST [base]`` with a Bundle (https://hl7.org/fhir/R4/http.html#transaction).

A transaction is all-or-nothing in one database transaction:

1. entries are planned in the spec's order (DELETE, POST, PUT/PATCH, then GET/HEAD);
   planning assigns ids, runs conditional creates/updates, and validates;
2. every ``fullUrl`` (``urn:uuid:`` or absolute) is mapped to the ``Type/id`` it became, and
   every reference to it, anywhere in the bundle, is rewritten; conditional references
   (``Patient?identifier=…``) are resolved on the same connection;
3. all writes go through one ``Repository.write_many`` (batched inserts, one commit);
4. reads run after the writes and see them.

A batch runs each entry on its own, each in its own database transaction.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy import Connection

from hub.errors import Category, FhirError, Issue, invalid, operation_outcome
from hub.fhir.bundle import Entry, assemble
from hub.interactions import conditional
from hub.interactions.request import FhirRequest, FhirResponse, Planned
from hub.interactions.router import Route
from hub.store.repository import instant

if TYPE_CHECKING:
    from hub.interactions.router import FhirRouter

_TX = Route("transaction")
_BATCH = Route("batch")

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
ENTRY_HEADERS = {"ifMatch": "if-match", "ifNoneExist": "if-none-exist", "ifNoneMatch": "if-none-match", "ifModifiedSince": "if-modified-since"}


@dataclass
class _Item:
    index: int
    entry: dict[str, Any]
    request: FhirRequest
    route: Route


def process(router: FhirRouter, req: FhirRequest) -> FhirResponse:
    bundle = req.body
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise invalid("FHIRHUB-BUNDLE-NOT-BUNDLE", "POST to the base takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise invalid("FHIRHUB-BUNDLE-TYPE", "Bundle.type must be batch or transaction", "Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise invalid("FHIRHUB-BUNDLE-ENTRY", "Bundle.entry must be an array", "Bundle.entry")
    limit = router.ctx.settings.max_bundle_entries
    if len(entries) > limit:
        raise FhirError(Category.TOO_LARGE, "FHIRHUB-BUNDLE-TOO-MANY-ENTRIES", f"A {kind} may hold at most {limit} entries")
    if kind == "batch":
        return _batch(router, req, entries)
    return _transaction(router, req, entries)


# --------------------------------------------------------------------------- entries
def entry_request(parent: FhirRequest, entry: Any, index: int) -> tuple[FhirRequest, Route]:
    from hub.interactions.router import resolve

    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        raise invalid("FHIRHUB-BUNDLE-ENTRY", "Each entry must be an object", where)
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("method"), str) or not isinstance(request.get("url"), str):
        raise invalid("FHIRHUB-BUNDLE-REQUEST", "Each entry needs request.method and request.url", f"{where}.request")
    method = request["method"].upper()
    if method not in ORDER:
        raise invalid("FHIRHUB-BUNDLE-METHOD", "request.method must be GET, HEAD, POST, PUT, PATCH or DELETE", f"{where}.request.method")
    url: str = request["url"]
    if url.startswith(parent.base_url + "/"):
        url = url[len(parent.base_url) + 1 :]
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        raise invalid("FHIRHUB-BUNDLE-URL", "request.url must be relative to this server's base", f"{where}.request.url")
    headers = {h: request[k] for k, h in ENTRY_HEADERS.items() if isinstance(request.get(k), str)}
    if "prefer" in parent.headers:
        headers["prefer"] = parent.headers["prefer"]
    body = entry.get("resource")
    if method == "PATCH":
        body = _patch_body(body, where)
    sub = FhirRequest(
        method=method,
        path=parts.path,
        params=parse_qsl(parts.query, keep_blank_values=True),
        headers=headers,
        body=body,
        base_url=parent.base_url,
        origin=parent.origin,
        principal=parent.principal,
    )
    route = resolve(method, parts.path)
    if route.kind == "transaction":
        raise invalid("FHIRHUB-BUNDLE-NESTED", "A bundle entry cannot itself be a batch or transaction", f"{where}.request")
    return sub, route


def _patch_body(body: Any, where: str) -> Any:
    """In a bundle, a JSON Patch travels as a Binary resource (R4 http.html#patch)."""
    if isinstance(body, dict) and body.get("resourceType") == "Binary":
        try:
            return orjson.loads(base64.b64decode(body.get("data") or "", validate=True))
        except (binascii.Error, orjson.JSONDecodeError) as exc:
            raise invalid("FHIRHUB-BUNDLE-PATCH", "The Binary does not hold a JSON Patch document", f"{where}.resource") from exc
    return body


def _located(err: FhirError, index: int) -> FhirError:
    where = f"Bundle.entry[{index}]"
    issues = [
        Issue(i.severity, i.code, i.diagnostics, i.expression if i.expression and i.expression.startswith("Bundle") else where)
        for i in err.all_issues()
    ]
    return FhirError(err.category, err.code, f"{where}: {err.message}", issues, err.headers)


def response_entry(resp: FhirResponse, req: FhirRequest, *, with_body: bool) -> Entry:
    status = f"{resp.status} {HTTPStatus(resp.status).phrase}"
    response: dict[str, Any] = {"status": status}
    location = resp.headers.get("Location")
    if location:
        response["location"] = location[len(req.base_url) + 1 :] if location.startswith(req.base_url + "/") else location
    if "ETag" in resp.headers:
        response["etag"] = resp.headers["ETag"]
    if resp.stored is not None:
        response["lastModified"] = instant(resp.stored.last_updated)
    body = resp.body
    if resp.status >= 400:
        response["outcome"] = orjson.loads(resp.body) if resp.body else None
        body = None
    elif resp.unchanged:
        response["outcome"] = operation_outcome(
            [Issue("information", "informational", "No change: the content equals the current version")],
            code="FHIRHUB-WRITE-UNCHANGED",
        )
    elif not with_body:
        body = None
    full_url = None
    if resp.stored is not None and body is not None:
        full_url = f"{req.base_url}/{resp.stored.res_type}/{resp.stored.res_id}"
    return Entry(full_url, body, {"response": response})


def _wants_body(parent: FhirRequest) -> bool:
    return "prefer" in parent.headers and parent.prefer_return == "representation"


# --------------------------------------------------------------------------- batch
def _batch(router: FhirRouter, req: FhirRequest, entries: list[Any]) -> FhirResponse:
    out: list[Entry] = []
    for i, entry in enumerate(entries):
        try:
            sub, route = entry_request(req, entry, i)
        except FhirError as err:
            out.append(response_entry(FhirResponse.error(_located(err, i)), req, with_body=False))
            continue
        resp = router.dispatch(sub)
        out.append(response_entry(resp, req, with_body=route.kind not in ("create", "update", "patch", "delete") or _wants_body(req)))
    router.audit_later(req, _BATCH, 200)
    return FhirResponse(200, assemble("batch-response", out))


# --------------------------------------------------------------------------- transaction
def _transaction(router: FhirRouter, req: FhirRequest, entries: list[Any]) -> FhirResponse:
    ctx = router.ctx
    items: list[_Item] = []
    for i, entry in enumerate(entries):
        try:
            sub, route = entry_request(req, entry, i)
        except FhirError as err:
            raise _located(err, i) from None
        sub.in_transaction = True
        items.append(_Item(i, entry, sub, route))
    items.sort(key=lambda it: ORDER[it.request.method])
    responses: dict[int, FhirResponse] = {}

    def work(conn: Connection) -> None:
        plans: list[tuple[_Item, Planned]] = []
        idmap: dict[str, str] = {}
        for it in items:
            if it.request.method in ("GET", "HEAD"):
                continue
            try:
                planned = router.plan(conn, it.request, it.route, location=f"Bundle.entry[{it.index}].resource")
            except FhirError as err:
                raise _located(err, it.index) from None
            plans.append((it, planned))
            full_url = it.entry.get("fullUrl")
            if isinstance(full_url, str) and planned.entry_url:
                idmap[full_url] = planned.entry_url
        resolver = _References(router, conn, idmap)
        for it, planned in plans:
            if planned.change is not None and planned.change.resource is not None and resolver.may_apply(planned.change.resource):
                try:
                    resolver.rewrite(planned.change.resource)
                except FhirError as err:
                    raise _located(err, it.index) from None
        changes = [p.change for _, p in plans if p.change is not None]
        results = iter(ctx.repo.write_many(conn, changes))
        records = [router.audit_record(req, _TX, 200, entities=[])]
        for it, planned in plans:
            result = next(results) if planned.change is not None else None
            records.append(router.write_record(it.request, it.route, result, planned.entry_url))
            responses[it.index] = planned.respond(result)
        for it in items:
            if it.request.method in ("GET", "HEAD"):
                try:
                    responses[it.index] = router.query(conn, it.request, it.route)
                except FhirError as err:
                    raise _located(err, it.index) from None
                records.append(router.audit_record(it.request, it.route, responses[it.index].status))
        if ctx.audit is not None:  # one insert for the transaction and all its entries, committed with them
            ctx.audit.write(conn, records)

    ctx.db.run_write(work)
    # committed
    ctx.changes.notify()
    with_body = _wants_body(req)
    reads = {it.index for it in items if it.request.method in ("GET", "HEAD")}
    out = [response_entry(responses[i], req, with_body=with_body or i in reads) for i in range(len(entries))]
    return FhirResponse(200, assemble("transaction-response", out))


class _References:
    """Rewrites references to bundle fullUrls, and resolves conditional references."""

    def __init__(self, router: FhirRouter, conn: Any, idmap: dict[str, str]) -> None:
        self.router = router
        self.conn = conn
        self.idmap = idmap
        self.cache: dict[str, str] = {}
        # Absolute fullUrls can be referenced verbatim; urn: ones are found by their prefix.
        self.absolute = [k.encode() for k in idmap if not k.startswith(("urn:uuid:", "urn:oid:"))]

    def may_apply(self, resource: dict[str, Any]) -> bool:
        """A cheap pre-check on the serialized resource: could any reference in it need rewriting?"""
        raw = orjson.dumps(resource)
        return b"urn:uuid:" in raw or b"urn:oid:" in raw or b"?" in raw or any(k in raw for k in self.absolute)

    def rewrite(self, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    node[key] = self.resolve(value)
                elif key == "div" and isinstance(value, str) and "urn:uuid:" in value:
                    for old, new in self.idmap.items():
                        if old.startswith("urn:uuid:") and old in value:
                            value = value.replace(old, new)
                    node[key] = value
                elif isinstance(value, dict | list):
                    self.rewrite(value)
        elif isinstance(node, list):
            for value in node:
                self.rewrite(value)

    def resolve(self, ref: str) -> str:
        if ref in self.idmap:
            return self.idmap[ref]
        if ref.startswith(("urn:uuid:", "urn:oid:")):
            raise invalid("FHIRHUB-BUNDLE-UNRESOLVED", "A reference names a fullUrl that no entry in the bundle has")
        if "?" in ref and "/" not in ref.split("?", 1)[0]:
            if ref not in self.cache:
                res_type, criteria = ref.split("?", 1)
                ids = conditional.find(self.router.ctx, self.conn, res_type, criteria)
                if len(ids) != 1:
                    raise FhirError(
                        Category.PRECONDITION,
                        "FHIRHUB-BUNDLE-CONDITIONAL-REFERENCE",
                        f"A conditional reference to {res_type} matches {len(ids)} resources; it must match exactly one",
                    )
                self.cache[ref] = f"{res_type}/{ids[0]}"
            return self.cache[ref]
        return ref
