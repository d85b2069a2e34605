"""The message-store admin API, under ``/admin/messages`` (scope ``fhirhub/admin``).

| route | what it does |
|---|---|
| ``GET /admin/messages`` | search: ``type`` (ADT, ADT^A01), ``status`` (comma list), ``control_id``, ``sender`` (part of MSH-3/4), ``connector``, ``direction`` (in/out), ``error`` (error class), ``ack_delivery`` (``undelivered``: enhanced-mode application ACKs still owed to their sender; ``redelivered``), ``since``/``until`` (instant or ``2h``/``7d`` ago), ``_count``, ``before`` (paging: the last id shown) |
| ``GET /admin/messages/{id}`` | one message: the raw message, its ACK, the resources it produced (``?bundle=true``: the Bundle it became) |
| ``POST /admin/messages/{id}/reprocess`` | run it through the current mapping files and commit again |
| ``POST /admin/messages/reprocess?error=CODE`` | reprocess every failed message of that error class (``connector``, ``limit``) |
| ``POST /admin/messages/{id}/requeue`` | a dead outbound message back into its sender's queue |
| ``POST /admin/messages/purge?older_than=30d`` | delete messages received before then (or ``before=<instant>``; ``status``, ``connector``) |

Every route answers 401 without a bearer token and 403 without ``fhirhub/admin`` (with
``FHIRHUB_AUTH=off`` on loopback, every caller is the admin). Reading a message (it holds
patient data) and reprocessing are audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from hub.api.auth import Authenticator
from hub.errors import Category, FhirError, invalid
from hub.hl7 import store
from hub.hl7.admin import Admin, admin_for, parse_when
from hub.hl7.tables import ACK_DELIVERIES
from hub.security.audit import AuditRecord
from hub.security.scopes import Principal

if TYPE_CHECKING:
    from hub.app import Hub

PREFIX = "/admin/messages"
MAX_COUNT = 500


def mount(app: FastAPI, hub: Hub, authenticator: Authenticator) -> None:
    """Add the ``/admin/messages`` routes (call from ``create_app``)."""
    settings = hub.settings
    holder: dict[str, Admin] = {}

    def admin() -> Admin:
        if "admin" not in holder:  # built on first use: the services exist by then
            holder["admin"] = admin_for(hub)
        return holder["admin"]

    def guard(request: Request) -> Principal:
        base = settings.base_url or f"{str(request.base_url).rstrip('/')}/fhir"
        principal = authenticator.principal(request, base)
        if not principal.permissions.admin:
            raise FhirError(Category.FORBIDDEN, "FHIRHUB-ADMIN-SCOPE", "The message store needs the fhirhub/admin scope")
        return principal

    def audit(principal: Principal, detail: str, entities: list[str] | None = None, outcome: int = 0) -> None:
        if hub.ctx.audit is not None:
            hub.ctx.audit.enqueue(AuditRecord("operation", outcome, principal.client_id, principal.address,
                                              entities or [], None, detail))

    async def run(request: Request, work: Callable[[Principal], Any], status: int = 200) -> Response:
        try:
            principal = guard(request)
            body = await run_in_threadpool(work, principal)
        except FhirError as err:
            if err.category in (Category.UNAUTHORIZED, Category.FORBIDDEN) and hub.ctx.audit is not None:
                address = request.client.host if request.client else None
                hub.ctx.audit.enqueue(AuditRecord("operation", 4, None, address, (), None, f"{err.code} {request.url.path}"))
            return JSONResponse(err.outcome(), status_code=err.http_status, headers=dict(err.headers),
                                media_type="application/fhir+json")
        return JSONResponse(body, status_code=status)

    async def search(request: Request) -> Response:
        params = request.query_params

        def work(principal: Principal) -> Any:
            q = _query(params)
            rows = admin().search(q)
            out: dict[str, Any] = {"count": len(rows), "messages": rows}
            if len(rows) == q.limit and rows:
                out["next"] = f"{PREFIX}?{_next(params, rows[-1]['id'])}"
            audit(principal, "admin/messages search")
            return out

        return await run(request, work)

    async def show(request: Request, pk: int) -> Response:
        with_bundle = request.query_params.get("bundle") == "true"

        def work(principal: Principal) -> Any:
            found = admin().get(pk, with_bundle)
            audit(principal, f"admin/messages/{pk} read", found.get("resources"))
            return found

        return await run(request, work)

    async def reprocess(request: Request, pk: int) -> Response:
        def work(principal: Principal) -> Any:
            done = admin().reprocess(pk)
            audit(principal, f"admin/messages/{pk} reprocess {done.ack_code}", done.resources)
            return done.json()

        return await run(request, work)

    async def reprocess_class(request: Request) -> Response:
        params = request.query_params

        def work(principal: Principal) -> Any:
            code = params.get("error")
            if not code:
                raise invalid("HL7-ADMIN-PARAM", "error=<error class> is required (e.g. HL7-MAP-REQUIRED)")
            limit = _int(params.get("limit"), 10_000, "limit")
            done = admin().reprocess_class(code, params.get("connector"), limit)
            tally: dict[str, int] = {}
            for d in done:
                tally[d.status] = tally.get(d.status, 0) + 1
            audit(principal, f"admin/messages reprocess error={code} n={len(done)}")
            return {"count": len(done), "outcomes": tally, "messages": [d.json() for d in done]}

        return await run(request, work)

    async def requeue(request: Request, pk: int) -> Response:
        def work(principal: Principal) -> Any:
            if not admin().requeue(pk):
                raise FhirError(Category.CONFLICT, "HL7-REQUEUE", f"message {pk} is not a dead outbound message")
            audit(principal, f"admin/messages/{pk} requeue")
            return {"id": pk, "status": "queued"}

        return await run(request, work)

    async def purge(request: Request) -> Response:
        params = request.query_params

        def work(principal: Principal) -> Any:
            if params.get("before"):
                before = parse_when(params["before"], "before")
            elif params.get("older_than"):
                before = parse_when(params["older_than"], "older_than")
            else:
                raise invalid("HL7-ADMIN-PARAM", "older_than=30d or before=<instant> is required")
            statuses = [s for s in (params.get("status") or "").split(",") if s] or None
            n = admin().purge(before, statuses, params.get("connector"))
            audit(principal, f"admin/messages purge n={n}")
            return {"deleted": n}

        return await run(request, work)

    app.add_api_route(PREFIX, search, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{PREFIX}/reprocess", reprocess_class, methods=["POST"], include_in_schema=False)
    app.add_api_route(f"{PREFIX}/purge", purge, methods=["POST"], include_in_schema=False)
    app.add_api_route(PREFIX + "/{pk:int}", show, methods=["GET"], include_in_schema=False)
    app.add_api_route(PREFIX + "/{pk:int}/reprocess", reprocess, methods=["POST"], include_in_schema=False)
    app.add_api_route(PREFIX + "/{pk:int}/requeue", requeue, methods=["POST"], include_in_schema=False)


def _int(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise invalid("HL7-ADMIN-PARAM", f"{name} must be a non-negative integer")
    return int(value)


def _query(params: Any) -> store.Query:
    status = [s for s in (params.get("status") or "").split(",") if s] or None
    direction = params.get("direction")
    if direction not in (None, "", "in", "out"):
        raise invalid("HL7-ADMIN-PARAM", "direction is in or out")
    before = params.get("before")
    return store.Query(
        message_type=params.get("type") or None,
        status=status,
        control_id=params.get("control_id") or None,
        sender=params.get("sender") or None,
        connector=params.get("connector") or None,
        direction=direction or None,
        error_code=params.get("error") or None,
        ack_delivery=_ack_delivery(params.get("ack_delivery")),
        since=parse_when(params["since"], "since") if params.get("since") else None,
        until=parse_when(params["until"], "until") if params.get("until") else None,
        before_pk=_int(before, 0, "before") if before else None,
        limit=min(_int(params.get("_count"), 50, "_count"), MAX_COUNT),
    )


def _ack_delivery(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    if value not in ACK_DELIVERIES:
        raise invalid("HL7-ADMIN-PARAM", f"ack_delivery is one of {', '.join(ACK_DELIVERIES)}")
    return value


def _next(params: Any, last: int) -> str:
    from urllib.parse import urlencode

    keep = [(k, v) for k, v in params.multi_items() if k != "before"]
    return urlencode([*keep, ("before", str(last))])
