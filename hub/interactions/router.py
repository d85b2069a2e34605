"""FhirRouter: resolves a :class:`FhirRequest` to an interaction and runs it.

Writes run in a write transaction (plan, then one ``write_many``, then respond);
reads run on a read connection. A :class:`FhirError` anywhere becomes an
OperationOutcome with the category's status; anything else becomes a 500
OperationOutcome, logged by error code and type without resource content.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy import Connection

from hub.errors import Category, FhirError
from hub.interactions import capabilities, create, delete, history, patch, read, search, update
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse, Planned
from hub.security import audit
from hub.security.audit import AuditRecord, outcome_code
from hub.security.policy import AUDIT_TYPE, authorize, authorize_subscription
from hub.store.repository import Change, WriteResult

log = logging.getLogger("hub.router")

WRITE_KINDS = {"create", "update", "patch", "delete"}
SINGLE_READS = {"read", "vread", "capabilities"}  # one statement: no transaction needed


@dataclass(frozen=True)
class Route:
    kind: str  # read vread update patch delete history-instance history-type history-system create search-type
    #            search-system search-compartment capabilities transaction operation
    res_type: str | None = None
    res_id: str | None = None
    vid: str | None = None
    compartment_type: str | None = None
    operation: str | None = None


@functools.lru_cache(maxsize=4096)  # a Route is immutable; failures are not cached (they raise)
def resolve(method: str, path: str) -> Route:
    parts = [p for p in path.strip("/").split("/") if p]
    method = "GET" if method == "HEAD" else method
    n = len(parts)
    table: dict[tuple[int, str], str] = {}
    if n == 0:
        table = {(0, "GET"): "search-system", (0, "POST"): "transaction"}
        kind = table.get((0, method))
        if kind:
            return Route(kind)
    elif parts[0] == "metadata" and n == 1:
        if method == "GET":
            return Route("capabilities")
    elif parts[0] == "_history" and n == 1:
        if method == "GET":
            return Route("history-system")
    elif parts[0].startswith("$"):
        return Route("operation", operation=parts[0])
    elif n == 1:
        kind = {"GET": "search-type", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if kind:
            return Route(kind, parts[0])
    elif n == 2 and parts[1] == "_search":
        if method == "POST":
            return Route("search-type", parts[0])
    elif n == 2 and parts[1] == "_history":
        if method == "GET":
            return Route("history-type", parts[0])
    elif n == 2 and parts[1].startswith("$"):
        return Route("operation", parts[0], operation=parts[1])
    elif n == 2:
        kind = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if kind:
            return Route(kind, parts[0], parts[1])
    elif n == 3 and parts[2] == "_history":
        if method == "GET":
            return Route("history-instance", parts[0], parts[1])
    elif n == 3 and parts[2].startswith("$"):
        return Route("operation", parts[0], parts[1], operation=parts[2])
    elif n == 3:
        if method == "GET":
            return Route("search-compartment", parts[2], compartment_type=parts[0], res_id=parts[1])
    elif n == 4 and parts[2] == "_history":
        if method == "GET":
            return Route("vread", parts[0], parts[1], parts[3])
    else:
        raise FhirError(Category.NOT_FOUND, "FHIRHUB-PATH-UNKNOWN", "No FHIR interaction has this path")
    raise FhirError(Category.NOT_ALLOWED, "FHIRHUB-METHOD-NOT-ALLOWED", f"{method} is not allowed on this path")


OperationHandler = Callable[[FhirRequest, Route], FhirResponse]


@dataclass(frozen=True)
class _PreparedCreate:
    """The write of a plain create prepared outside the transaction (:func:`create.prepare`). It combines
    (:class:`hub.store.db.Combinable`): the creates of one group commit go to ``Repository.write_many`` and the
    audit trail together, a few statements for the whole group instead of a dozen per create, which shortens
    the turn of SQLite's single writer. One failing create sends the group back to a SAVEPOINT each."""

    router: FhirRouter
    req: FhirRequest
    route: Route
    change: Change
    combine_key: str = "create"

    def __call__(self, conn: Connection) -> tuple[Planned, WriteResult | None]:
        planned, result = self.run_together(conn, [self])[0]
        return planned, result

    def run_together(self, conn: Connection, units: Sequence[_PreparedCreate]) -> list[tuple[Planned, WriteResult]]:
        router = self.router
        planned = [router.plan(conn, u.req, u.route, prepared=u.change) for u in units]
        trail = router.ctx.audit

        def audit(results: list[WriteResult]) -> None:  # in the write's pipeline, before the outbox step
            assert trail is not None
            trail.write(conn, [router.write_record(u.req, u.route, r, p.entry_url)
                               for u, r, p in zip(units, results, planned, strict=True)])

        results = router.ctx.repo.write_many(conn, [u.change for u in units], audit if trail is not None else None)
        return list(zip(planned, results, strict=True))


class FhirRouter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # "$name" -> handler, registered by background services (subscriptions: $status $events $resend
        # $workflow-runs). A handler opens its own read or write transactions.
        self.operations: dict[str, OperationHandler] = {}

    # ----------------------------------------------------------- entry point
    def is_quick(self, method: str, path: str) -> bool:
        """A read by id on SQLite: a few microseconds of I/O from the page cache, never blocked by writers
        (WAL), so the HTTP edge may run it on the event loop instead of paying a thread hand-off."""
        if not self.ctx.db.is_sqlite or method not in ("GET", "HEAD"):
            return False
        try:
            return resolve(method, path).kind in ("read", "vread")
        except FhirError:
            return False

    def dispatch(self, req: FhirRequest) -> FhirResponse:
        route: Route | None = None
        try:
            route = resolve(req.method, req.path)
            handler = self.operations.get(route.operation or "") if route.kind == "operation" else None
            if handler is not None:
                authorize(req.principal, route.kind, route.res_type)
                response = handler(req, route)
                self.audit_later(req, route, response.status)
                return response
            if route.kind == "transaction":
                from hub.interactions import transaction

                return transaction.process(self, req)  # audits itself, entry by entry
            if route.kind in WRITE_KINDS:
                planned, result = self.ctx.db.run_write(self._write_work(req, route))
                return self._written(planned, result)
            with self.ctx.db.read_once() if route.kind in SINGLE_READS else self.ctx.db.read() as conn:
                response = self.query(conn, req, route)
            self.audit_later(req, route, response.status)
            return response
        except Exception as exc:  # noqa: BLE001 - the edge: every failure becomes an OperationOutcome
            return self._failed(req, route, exc)

    def is_write(self, req: FhirRequest) -> bool:
        """A single-resource write (create, update, patch, delete): :meth:`dispatch_write` can run it."""
        try:
            return resolve(req.method, req.path).kind in WRITE_KINDS
        except FhirError:
            return False

    async def dispatch_write(self, req: FhirRequest) -> FhirResponse:
        """:meth:`dispatch` for a single-resource write, awaiting the commit instead of blocking a thread.

        The unit of work is the same; it goes to :meth:`Database.submit` (on SQLite, the writer thread that
        group-commits), and the answer is built once the commit holding it is done.
        """
        route: Route | None = None
        try:
            route = resolve(req.method, req.path)
            prepared = None
            if route.kind == "create" and route.res_type is not None:
                authorize(req.principal, route.kind, route.res_type)  # before validation: no answers to the unauthorized
                prepared = create.prepare(self.ctx, req, route.res_type)
            elif route.kind == "update" and route.res_type is not None and route.res_id is not None:
                authorize(req.principal, route.kind, route.res_type)
                update.prevalidate(self.ctx, req, route.res_type, route.res_id)
            work = self._write_work(req, route, prepared)
            planned, result = await self.ctx.db.submit_async(work)
            return self._written(planned, result)
        except Exception as exc:  # noqa: BLE001 - the edge: every failure becomes an OperationOutcome
            return self._failed(req, route, exc)

    def _write_work(self, req: FhirRequest, route: Route,
                    prepared: Change | None = None) -> Callable[[Connection], tuple[Planned, WriteResult | None]]:
        if prepared is not None and route.kind == "create":
            return _PreparedCreate(self, req, route, prepared)

        def work(conn: Connection) -> tuple[Planned, WriteResult | None]:
            planned = self.plan(conn, req, route, prepared=prepared)
            trail = self.ctx.audit
            if planned.change is None:  # nothing to write (a conditional create that matched): its event alone
                if trail is not None:
                    trail.write(conn, [self.write_record(req, route, None, planned.entry_url)])
                return planned, None

            def audit(results: list[WriteResult]) -> None:  # in the write's pipeline, before the outbox step
                assert trail is not None
                trail.write(conn, [self.write_record(req, route, results[0], planned.entry_url)])

            return planned, self.ctx.repo.write(conn, planned.change, audit if trail is not None else None)

        return work

    def _written(self, planned: Planned, result: WriteResult | None) -> FhirResponse:
        # committed: only now is the answer built, and consumers of the outbox woken
        if result is not None and result.outcome in ("created", "updated", "deleted"):
            self.ctx.changes.notify()
        return planned.respond(result)

    def _failed(self, req: FhirRequest, route: Route | None, exc: Exception) -> FhirResponse:
        if isinstance(exc, FhirError):
            if exc.category is Category.INTERNAL:
                log.error("request failed code=%s", exc.code)
            self.audit_later(req, route, exc.http_status, exc.code)
            return FhirResponse.error(exc)
        # The message and traceback may hold resource values (SQL parameters): DEBUG only.
        log.error("unexpected error type=%s path=%s", type(exc).__name__, route.kind if route else "-")
        log.debug("unexpected error detail", exc_info=exc)
        self.audit_later(req, route, 500, "FHIRHUB-INTERNAL")
        return FhirResponse.error(FhirError(Category.INTERNAL, "FHIRHUB-INTERNAL", "Internal server error"))

    # ------------------------------------------------------------------ audit
    def audit_record(self, req: FhirRequest, route: Route | None, status: int, detail: str | None = None,
                     entities: list[str] | None = None) -> AuditRecord:
        kind = route.kind if route is not None else "authorize"
        if route is not None and route.res_type and route.res_id and entities is None:
            if route.kind == "search-compartment" and route.compartment_type:
                entities = [f"{route.compartment_type}/{route.res_id}"]
            else:
                entities = [f"{route.res_type}/{route.res_id}" + (f"/_history/{route.vid}" if route.vid else "")]
        query = None
        if kind.startswith(("search", "history")) or kind == "operation":
            query = f"{req.path}?{urlencode(req.params)}" if req.params else req.path
        return AuditRecord(kind, outcome_code(status), req.principal.client_id, req.principal.address,
                           entities or [], query, detail)

    def write_record(self, req: FhirRequest, route: Route, result: WriteResult | None, entry_url: str | None) -> AuditRecord:
        """The audit event of a write; the caller inserts it in the write's own transaction."""
        stored = result.stored if result is not None else None
        refs = [f"{stored.res_type}/{stored.res_id}/_history/{stored.version}"] if stored else []
        return self.audit_record(req, route, 200, entities=refs or ([entry_url] if entry_url else []))

    def audit_later(self, req: FhirRequest, route: Route | None, status: int, detail: str | None = None) -> None:
        if self.ctx.audit is not None:
            self.ctx.audit.enqueue(self.audit_record(req, route, status, detail))

    # ---------------------------------------------------------------- writes
    def plan(self, conn: Connection, req: FhirRequest, route: Route, *, location: str | None = None,
             prepared: Change | None = None) -> Planned:
        ctx = self.ctx
        assert route.res_type is not None
        authorize(req.principal, route.kind, route.res_type)
        if prepared is not None and route.kind == "create":
            planned = create.plan(ctx, conn, req, route.res_type, location=location, prepared=prepared)
        else:
            planned = self._plan(conn, req, route, location)
        change = planned.change
        if route.res_type == "Subscription" and change is not None and change.resource is not None:
            disclosed = ctx.subscription_types(change.resource) if ctx.subscription_types else frozenset()
            authorize_subscription(req.principal, disclosed)
        return planned

    def _plan(self, conn: Connection, req: FhirRequest, route: Route, location: str | None) -> Planned:
        ctx = self.ctx
        assert route.res_type is not None
        criteria = urlencode(req.params) if route.res_id is None else None
        if route.kind == "create":
            return create.plan(ctx, conn, req, route.res_type, location=location)
        if route.kind in ("update", "patch", "delete") and route.res_id is None and not criteria:
            raise FhirError(
                Category.NOT_ALLOWED, "FHIRHUB-CONDITIONAL-NO-CRITERIA",
                f"{req.method} on a resource type needs search criteria (a conditional {route.kind})",
            )
        if route.kind == "update":
            return update.plan(ctx, conn, req, route.res_type, route.res_id, criteria=criteria, location=location)
        if route.kind == "patch":
            return patch.plan(ctx, conn, req, route.res_type, route.res_id, criteria=criteria, location=location)
        if route.kind == "delete":
            return delete.plan(ctx, conn, req, route.res_type, route.res_id, criteria=criteria)
        raise FhirError(Category.NOT_ALLOWED, "FHIRHUB-METHOD-NOT-ALLOWED", f"{route.kind} is not a write")

    # ----------------------------------------------------------------- reads
    def query(self, conn: Connection, req: FhirRequest, route: Route) -> FhirResponse:
        ctx = self.ctx
        kind = route.kind
        authorize(req.principal, kind, route.res_type, route.compartment_type)
        if route.res_type == AUDIT_TYPE:
            return self.audit_query(conn, req, route)
        if kind == "read":
            assert route.res_type and route.res_id
            return read.read(ctx, conn, req, route.res_type, route.res_id)
        if kind == "vread":
            assert route.res_type and route.res_id and route.vid
            return read.vread(ctx, conn, req, route.res_type, route.res_id, route.vid)
        if kind == "history-instance":
            return history.history(ctx, conn, req, route.res_type, route.res_id)
        if kind == "history-type":
            return history.history(ctx, conn, req, route.res_type)
        if kind == "history-system":
            return history.history(ctx, conn, req)
        if kind == "capabilities":
            return capabilities.respond(ctx, req, sorted(self.operations))
        if kind == "search-type":
            return search.search(ctx, conn, req, route.res_type)
        if kind == "search-system":
            return search.search(ctx, conn, req, None)
        if kind == "search-compartment":
            assert route.compartment_type and route.res_id
            return search.search(ctx, conn, req, route.res_type, compartment=(route.compartment_type, route.res_id))
        if kind == "operation":
            return search.operation(ctx, conn, req, route)
        raise FhirError(Category.NOT_ALLOWED, "FHIRHUB-METHOD-NOT-ALLOWED", f"{req.method} is not allowed here")

    def audit_query(self, conn: Connection, req: FhirRequest, route: Route) -> FhirResponse:
        """AuditEvent read and search, served from the append-only audit table."""
        settings = self.ctx.settings
        if route.kind == "read" and route.res_id:
            data = audit.read(conn, route.res_id)
            if data is None:
                raise FhirError(Category.NOT_FOUND, "FHIRHUB-READ-NOT-FOUND", f"AuditEvent/{route.res_id} is not known")
            return FhirResponse(200, data, resource=True)
        params = [(k, v) for k, v in req.params if k not in ("_format", "_pretty")]
        body = audit.search(conn, params, req.base_url, settings.default_page_size, settings.max_page_size, req.prefer_strict)
        return FhirResponse(200, body)
