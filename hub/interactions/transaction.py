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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy import Connection

from hub.errors import Category, FhirError, Issue, invalid, operation_outcome
from hub.fhir.bundle import Entry, assemble
from hub.interactions import conditional
from hub.interactions.common import check_id, check_type, validate
from hub.interactions.request import FhirRequest, FhirResponse, Planned
from hub.interactions.router import Route
from hub.security.audit import AuditRecord
from hub.security.policy import authorize
from hub.store.repository import WriteResult, instant

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
    items = _items(req, entries)
    prevalidate(router, items)
    responses: dict[int, FhirResponse] = {}
    router.ctx.db.run_write(_work(router, req, items, responses))
    # committed
    router.ctx.changes.notify()
    return _response(req, entries, items, responses)


def _items(req: FhirRequest, entries: list[Any]) -> list[_Item]:
    items: list[_Item] = []
    for i, entry in enumerate(entries):
        try:
            sub, route = entry_request(req, entry, i)
        except FhirError as err:
            raise _located(err, i) from None
        sub.in_transaction = True
        items.append(_Item(i, entry, sub, route))
    items.sort(key=lambda it: ORDER[it.request.method])
    return items


def prevalidate(router: FhirRouter, items: list[_Item]) -> None:
    """Validate, before the write transaction, the entry resources that planning would validate whatever the
    database holds: creates without ``ifNoneExist`` (a match is answered without validating) and updates by id
    whose URL and body ids agree. On SQLite the single writer then spends its turn on planning and SQL only.
    Entries that would fail authorization or the checks before validation are left to planning, which raises
    the same error it always did; a validation error here is located at the entry as planning locates it."""
    ctx = router.ctx
    for it in items:
        r, route = it.request, it.route
        body = r.body
        if route.res_type is None or not isinstance(body, dict) or body.get("resourceType") != route.res_type:
            continue
        if route.kind == "create" and not r.header("if-none-exist"):
            resource = {k: v for k, v in body.items() if k != "id"}
        elif route.kind == "update" and route.res_id is not None and not r.params and body.get("id") == route.res_id:
            resource = body
        else:
            continue
        try:
            authorize(r.principal, route.kind, route.res_type)
            check_type(ctx, route.res_type)
            if route.kind == "update":
                check_id(route.res_id or "")
        except FhirError:
            continue  # planning raises it, in its own order
        try:
            validate(ctx, resource, f"Bundle.entry[{it.index}].resource", in_transaction=True)
        except FhirError as err:
            raise _located(err, it.index) from None
        r.validated = True


def _work(router: FhirRouter, req: FhirRequest, items: list[_Item], responses: dict[int, FhirResponse]) -> Callable[[Connection], None]:
    """The unit of work of one transaction Bundle: plan every entry, rewrite references, write, read, audit."""
    ctx = router.ctx

    def work(conn: Connection) -> None:
        plans = _plan(router, conn, items)
        results = ctx.repo.write_many(conn, [p.change for _, p in plans if p.change is not None])
        records = _answer(router, conn, req, items, plans, results, responses)
        if ctx.audit is not None:  # one insert for the transaction and all its entries, committed with them
            ctx.audit.write(conn, records)

    return work


def _plan(router: FhirRouter, conn: Connection, items: list[_Item]) -> list[tuple[_Item, Planned]]:
    """Plan every write entry (ids, conditional matches, validation) and rewrite the references between them."""
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
    return plans


def _answer(router: FhirRouter, conn: Connection, req: FhirRequest, items: list[_Item], plans: list[tuple[_Item, Planned]],
            written: Sequence[WriteResult], responses: dict[int, FhirResponse]) -> list[AuditRecord]:
    """The entries' responses (writes, then reads, which see the writes) and the audit records of the Bundle."""
    results = iter(written)
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
    return records


def _response(req: FhirRequest, entries: list[Any], items: list[_Item], responses: dict[int, FhirResponse]) -> FhirResponse:
    with_body = _wants_body(req)
    reads = {it.index for it in items if it.request.method in ("GET", "HEAD")}
    out = [response_entry(responses[i], req, with_body=with_body or i in reads) for i in range(len(entries))]
    return FhirResponse(200, assemble("transaction-response", out))


# --------------------------------------------------------------------------- several transactions, one commit
def process_many(router: FhirRouter, reqs: Sequence[FhirRequest],
                 within: Callable[[Connection, list[FhirResponse]], None] | None = None) -> list[FhirResponse]:
    """Several transaction Bundles committed in **one** database transaction, each all-or-nothing on its own.

    For callers that have many small, independent transactions at once (the HL7v2 listeners): each
    Bundle runs exactly as :func:`process` would run it (same planning, writes, audit records),
    inside its own SAVEPOINT; one that fails is rolled back to its savepoint alone and gets the
    response :meth:`FhirRouter.dispatch` would give it, the others still commit. Bundles are applied
    in the given order, so a later one sees what an earlier one wrote. ``within(conn, responses)``
    runs last, in the same database transaction (the caller records its own outcome atomically with
    the writes). Nothing is answered before the commit; if the commit itself (or ``within``) fails,
    the exception propagates and nothing of the batch is kept.
    """
    ctx = router.ctx
    responses: list[FhirResponse | None] = [None] * len(reqs)
    errors: dict[int, Exception] = {}
    units: list[_Unit] = []
    for n, req in enumerate(reqs):
        try:
            bundle = req.body
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
                raise invalid("FHIRHUB-BUNDLE-TYPE", "Bundle.type must be transaction", "Bundle.type")
            entries = bundle.get("entry") or []
            if not isinstance(entries, list):
                raise invalid("FHIRHUB-BUNDLE-ENTRY", "Bundle.entry must be an array", "Bundle.entry")
            limit = ctx.settings.max_bundle_entries
            if len(entries) > limit:
                raise FhirError(Category.TOO_LARGE, "FHIRHUB-BUNDLE-TOO-MANY-ENTRIES", f"A transaction may hold at most {limit} entries")
            items = _items(req, entries)
            prevalidate(router, items)
            units.append(_Unit(n, entries, items, {}, _keys(items)))
        except Exception as exc:  # noqa: BLE001 - answered like dispatch answers it
            errors[n] = exc

    def alone(conn: Connection, unit: _Unit) -> None:
        savepoint = conn.begin_nested()
        try:
            _work(router, reqs[unit.n], unit.items, unit.answers)(conn)
        except Exception as exc:  # noqa: BLE001 - this Bundle alone is rolled back
            savepoint.rollback()
            errors[unit.n] = exc
            unit.answers.clear()
        else:
            savepoint.commit()
            errors.pop(unit.n, None)
            responses[unit.n] = _response(reqs[unit.n], unit.entries, unit.items, unit.answers)

    def work(conn: Connection) -> None:
        pending = units
        while pending:
            wave: list[_Unit] = []
            later: list[_Unit] = []
            taken: set[str] = set()
            for unit in pending:  # Bundles naming none of the same resources are planned and written together
                if unit.keys is None or unit.keys & taken:
                    later.append(unit)
                else:
                    taken |= unit.keys
                    wave.append(unit)
            if len(wave) <= 1:
                for unit in [*wave, *later]:
                    alone(conn, unit)
                return
            for unit in _wave(router, conn, reqs, wave, responses):
                alone(conn, unit)  # not in the wave after all: on its own, after it
            pending = later

    def run(conn: Connection) -> None:
        work(conn)
        if within is not None:
            within(conn, [r if r is not None else _error_response(errors[n]) for n, r in enumerate(responses)])

    ctx.db.run_write(run)
    # committed
    if len(errors) < len(reqs):
        ctx.changes.notify()
    for n, failure in errors.items():
        responses[n] = router._failed(reqs[n], _TX, failure)  # logged and audited as dispatch does
    return [r if r is not None else _error_response(errors.get(n)) for n, r in enumerate(responses)]


@dataclass
class _Unit:
    """One Bundle of :func:`process_many`."""

    n: int
    entries: list[Any]
    items: list[_Item]
    answers: dict[int, FhirResponse]
    keys: set[str] | None  # the resources it names (conditional criteria, Type/id); None: never in a wave


_CONDITIONAL_REF = re.compile(rb'"reference":"([A-Z][A-Za-z]+\?[^"]*)"')


def _keys(items: list[_Item]) -> set[str] | None:
    """What a Bundle names: the URL of each update/patch/delete (``Type/id`` or ``Type?criteria``), the
    criteria of each conditional create, each conditional reference. None for Bundles with reads."""
    keys: set[str] = set()
    for it in items:
        method = it.request.method
        if method in ("GET", "HEAD"):
            return None
        res_type = it.route.res_type or ""
        request = it.entry.get("request") or {}
        if method == "POST":
            criteria = request.get("ifNoneExist")
            if isinstance(criteria, str):
                keys.add(f"{res_type}?{criteria.split('?', 1)[-1]}")
        else:
            keys.add(str(request.get("url") or ""))
        if isinstance(it.request.body, dict):
            keys.update(m.decode() for m in _CONDITIONAL_REF.findall(orjson.dumps(it.request.body)))
    return keys


def _wave(router: FhirRouter, conn: Connection, reqs: Sequence[FhirRequest], wave: list[_Unit],
          responses: list[FhirResponse | None]) -> list[_Unit]:
    """Independent Bundles planned together and written with **one** ``write_many`` (and one audit insert)
    inside one savepoint: the round trips of a write are paid once for the wave. Returns the Bundles to
    apply on their own afterwards: any that failed here (it gets its own answer there, seeing the
    wave's writes), any whose planned resources collide with an earlier one's, or all of them when
    the wave's write failed."""
    ctx = router.ctx
    savepoint = conn.begin_nested()
    retry: list[_Unit] = []
    try:
        conditional.prefetch(ctx, conn, [k for unit in wave for k in (unit.keys or ()) if "?" in k])
        try:
            planned: list[tuple[_Unit, list[tuple[_Item, Planned]]]] = []
            ids: set[tuple[str, str]] = set()
            for unit in wave:
                try:
                    plans = _plan(router, conn, unit.items)
                except FhirError:
                    retry.append(unit)
                    continue
                mine = {(p.change.res_type, p.change.res_id) for _, p in plans if p.change is not None}
                if mine & ids:
                    retry.append(unit)
                    continue
                ids |= mine
                planned.append((unit, plans))
        finally:
            conditional.forget(conn)  # the look-ups are only valid until the first write
        changes = [p.change for _, plans in planned for _, p in plans if p.change is not None]
        written = iter(ctx.repo.write_many(conn, changes))
        records: list[AuditRecord] = []
        for unit, plans in planned:
            mine_written = [next(written) for _, p in plans if p.change is not None]
            records.extend(_answer(router, conn, reqs[unit.n], unit.items, plans, mine_written, unit.answers))
        if ctx.audit is not None:
            ctx.audit.write(conn, records)
    except Exception:  # noqa: BLE001 - nothing of the wave is kept; each Bundle on its own
        savepoint.rollback()
        for unit in wave:
            unit.answers.clear()
        return wave
    savepoint.commit()
    for unit, _ in planned:
        responses[unit.n] = _response(reqs[unit.n], unit.entries, unit.items, unit.answers)
    return retry


def _error_response(exc: Exception | None) -> FhirResponse:
    """What :meth:`FhirRouter._failed` answers, without its logging and audit (for ``within``)."""
    if isinstance(exc, FhirError):
        return FhirResponse.error(exc)
    return FhirResponse.error(FhirError(Category.INTERNAL, "FHIRHUB-INTERNAL", "Internal server error"))


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
