"""FhirRouter: resolves a :class:`FhirRequest` to an interaction and runs it.

Writes run in a write transaction (plan, then one ``write_many``, then respond);
reads run on a read connection. A :class:`FhirError` anywhere becomes an
OperationOutcome with the category's status; anything else becomes a 500
OperationOutcome, logged by error code and type without resource content.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy import Connection

from hub.errors import Category, FhirError
from hub.interactions import capabilities, create, delete, history, patch, read, search, update
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse, Planned

log = logging.getLogger("hub.router")

WRITE_KINDS = {"create", "update", "patch", "delete"}


@dataclass(frozen=True)
class Route:
    kind: str  # read vread update patch delete history-instance history-type history-system create search-type
    #            search-system search-compartment capabilities transaction operation
    res_type: str | None = None
    res_id: str | None = None
    vid: str | None = None
    compartment_type: str | None = None
    operation: str | None = None


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


class FhirRouter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ----------------------------------------------------------- entry point
    def dispatch(self, req: FhirRequest) -> FhirResponse:
        try:
            route = resolve(req.method, req.path)
            if route.kind == "transaction":
                from hub.interactions import transaction

                return transaction.process(self, req)
            if route.kind in WRITE_KINDS:
                with self.ctx.db.write() as conn:
                    planned = self.plan(conn, req, route)
                    result = self.ctx.repo.write(conn, planned.change) if planned.change is not None else None
                # committed: only now is the answer built
                return planned.respond(result)
            with self.ctx.db.read() as conn:
                return self.query(conn, req, route)
        except FhirError as err:
            if err.category is Category.INTERNAL:
                log.error("request failed code=%s", err.code)
            return FhirResponse.error(err)
        except Exception as exc:  # noqa: BLE001 - the edge: never a stack trace to the client
            log.exception("unexpected error type=%s", type(exc).__name__)
            return FhirResponse.error(FhirError(Category.INTERNAL, "FHIRHUB-INTERNAL", "Internal server error"))

    # ---------------------------------------------------------------- writes
    def plan(self, conn: Connection, req: FhirRequest, route: Route, *, location: str | None = None,
             new_resource_id: str | None = None) -> Planned:
        ctx = self.ctx
        assert route.res_type is not None
        criteria = urlencode(req.params) if route.res_id is None else None
        if route.kind == "create":
            return create.plan(ctx, conn, req, route.res_type, location=location, new_resource_id=new_resource_id)
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
            return capabilities.respond(ctx, req)
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
