"""update: ``PUT [base]/[type]/[id]`` (update-as-create allowed) and conditional update ``PUT [base]/[type]?criteria``."""

from __future__ import annotations

from sqlalchemy import Connection

from hub.errors import FhirError, invalid
from hub.interactions import conditional
from hub.interactions.common import check_id, check_type, resource_body, validate, written
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, Planned, parse_etag
from hub.store.repository import Change, new_id


def prevalidate(ctx: Context, req: FhirRequest, res_type: str, res_id: str) -> None:
    """Validate an update by id before the write transaction (the HTTP edge calls it, so that the single writer
    of SQLite spends its turn on SQL only), when the checks planning makes first would pass: otherwise planning
    raises what it always raised."""
    body = req.body
    if req.params or not isinstance(body, dict) or body.get("resourceType") != res_type or body.get("id") != res_id:
        return
    try:
        check_type(ctx, res_type)
        check_id(res_id)
    except FhirError:
        return
    validate(ctx, body, None, in_transaction=req.in_transaction)
    req.validated = True


def plan(ctx: Context, conn: Connection, req: FhirRequest, res_type: str, res_id: str | None, *,
         criteria: str | None = None, location: str | None = None) -> Planned:
    check_type(ctx, res_type)
    body = resource_body(req, res_type)
    body_id = body.get("id")
    if criteria is not None:
        match = conditional.match_one(ctx, conn, res_type, criteria)
        if match is not None:
            if body_id is not None and body_id != match:
                raise invalid("FHIRHUB-UPDATE-ID-MISMATCH", "The resource id differs from the resource the criteria match")
            res_id = match
        else:
            res_id = body_id if isinstance(body_id, str) else new_id()
    else:
        assert res_id is not None
        check_id(res_id)
        if body_id is None:
            raise invalid("FHIRHUB-UPDATE-ID-MISSING", "An update must carry the resource id", f"{res_type}.id")
        if body_id != res_id:
            raise invalid("FHIRHUB-UPDATE-ID-MISMATCH", "The resource id must equal the id in the URL", f"{res_type}.id")
    assert res_id is not None
    check_id(res_id)
    if not req.validated:
        validate(ctx, body, location, in_transaction=req.in_transaction)
    if_match = parse_etag(req.header("if-match"), "FHIRHUB-IF-MATCH-INVALID")
    change = Change(res_type, res_id, body, "PUT", if_match=if_match, origin=req.origin)
    return Planned(change, lambda result: written(req, result), f"{res_type}/{res_id}")
