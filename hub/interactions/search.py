"""search-type, search-system, compartment search and ``$everything``: thin over :mod:`hub.search`."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection

from hub.errors import Category, FhirError, operation_outcome
from hub.fhir.bundle import Entry, assemble
from hub.interactions.common import check_id, check_type
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse

FORMAT_PARAMS = {"_format", "_pretty"}


def _engine(ctx: Context) -> Any:
    if ctx.search is None:
        raise FhirError(Category.NOT_SUPPORTED, "FHIRHUB-SEARCH-UNSUPPORTED", "Search is not enabled on this server")
    return ctx.search


def render(req: FhirRequest, result: Any) -> FhirResponse:
    """A searchset Bundle holding only what the client's scopes let it see (matches and includes alike)."""
    can_see = req.principal.permissions.can_see
    entries = [
        Entry(f"{req.base_url}/{e.res_type}/{e.res_id}", e.data, {"search": {"mode": e.mode}})
        for e in result.entries
        if can_see(e.res_type)
    ]
    if result.issues:
        oo = orjson.dumps(operation_outcome(list(result.issues)))
        entries.append(Entry(None, oo, {"search": {"mode": "outcome"}}))
    return FhirResponse(200, assemble("searchset", entries, total=result.total, links=result.links))


def search(ctx: Context, conn: Connection, req: FhirRequest, res_type: str | None,
           compartment: tuple[str, str] | None = None) -> FhirResponse:
    from hub.search.engine import SearchRequest

    engine = _engine(ctx)
    if res_type is not None:
        check_type(ctx, res_type)
    if compartment is not None:
        check_type(ctx, compartment[0])
        check_id(compartment[1])
    params = [(k, v) for k, v in req.params if k not in FORMAT_PARAMS]
    result = engine.search(conn, SearchRequest(res_type, params, req.prefer_strict, req.base_url, compartment))
    return render(req, result)


def operation(ctx: Context, conn: Connection, req: FhirRequest, route: Any) -> FhirResponse:
    if route.operation == "$everything" and route.res_type == "Patient" and route.res_id:
        engine = _engine(ctx)
        check_id(route.res_id)
        if not ctx.repo.exists(conn, "Patient", route.res_id):
            raise FhirError(Category.NOT_FOUND, "FHIRHUB-READ-NOT-FOUND", f"Patient/{route.res_id} is not known")
        params = [(k, v) for k, v in req.params if k not in FORMAT_PARAMS]
        result = engine.everything(conn, route.res_id, params, req.base_url)
        return render(req, result)
    raise FhirError(Category.NOT_SUPPORTED, "FHIRHUB-OPERATION-UNKNOWN", f"Operation {route.operation} is not supported here")
