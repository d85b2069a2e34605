"""create: ``POST [base]/[type]``, with conditional create (``If-None-Exist``)."""

from __future__ import annotations

from sqlalchemy import Connection

from hub.interactions import conditional
from hub.interactions.common import check_type, resource_body, validate, written
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse, Planned, version_headers
from hub.store.repository import Change, WriteResult, content_hash, new_id


def prepare(ctx: Context, req: FhirRequest, res_type: str) -> Change | None:
    """The part of a plain create that needs no database: the checks, the new id, validation and the search-index
    rows. The HTTP edge runs it before handing the write to the writer, so that the single writer of SQLite spends
    its turn on SQL only. None for a conditional create (``If-None-Exist``), which must search first: a match is
    answered without validating the body."""
    if req.header("if-none-exist"):
        return None
    check_type(ctx, res_type)
    body = resource_body(req, res_type)
    res_id = new_id()
    resource = {k: v for k, v in body.items() if k != "id"}
    validate(ctx, resource, None, in_transaction=req.in_transaction)
    return Change(res_type, res_id, resource, "POST", create_only=True, origin=req.origin,
                  index_rows=ctx.repo.index_rows(res_type, res_id, resource), digest=content_hash(resource))


def plan(ctx: Context, conn: Connection, req: FhirRequest, res_type: str, *, location: str | None = None,
         if_none_exist: str | None = None, prepared: Change | None = None) -> Planned:
    if prepared is not None:
        return Planned(prepared, lambda result: written(req, result), f"{res_type}/{prepared.res_id}")
    check_type(ctx, res_type)
    body = resource_body(req, res_type)
    criteria = if_none_exist if if_none_exist is not None else req.header("if-none-exist")
    if criteria:
        match = conditional.match_one(ctx, conn, res_type, criteria)
        if match is not None:
            existing = ctx.repo.read(conn, res_type, match)
            assert existing is not None

            def respond_existing(_: WriteResult | None) -> FhirResponse:
                headers = version_headers(existing, req.base_url)
                if req.prefer_return == "minimal":
                    return FhirResponse(200, None, headers, stored=existing)
                return FhirResponse(200, existing.data, headers, resource=True, stored=existing)

            return Planned(None, respond_existing, f"{res_type}/{match}")
    res_id = new_id()  # a fresh UUID: create_only lets the repository skip looking it up
    resource = {k: v for k, v in body.items() if k != "id"}  # the server assigns the id
    if not req.validated:
        validate(ctx, resource, location, in_transaction=req.in_transaction)
    change = Change(res_type, res_id, resource, "POST", create_only=True, origin=req.origin)
    return Planned(change, lambda result: written(req, result), f"{res_type}/{res_id}")
