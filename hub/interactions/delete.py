"""delete: ``DELETE [base]/[type]/[id]`` (a versioned tombstone) and conditional delete."""

from __future__ import annotations

from sqlalchemy import Connection

from hub.interactions import conditional
from hub.interactions.common import check_id, check_type
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse, Planned, parse_etag
from hub.store.repository import Change, WriteResult


def plan(ctx: Context, conn: Connection, req: FhirRequest, res_type: str, res_id: str | None, *,
         criteria: str | None = None) -> Planned:
    check_type(ctx, res_type)
    if criteria is not None:
        res_id = conditional.match_one(ctx, conn, res_type, criteria)
        if res_id is None:
            return Planned(None, lambda _: FhirResponse(204), None)
    assert res_id is not None
    check_id(res_id)
    if_match = parse_etag(req.header("if-match"), "FHIRHUB-IF-MATCH-INVALID")
    change = Change(res_type, res_id, None, "DELETE", if_match=if_match, origin=req.origin)

    def respond(result: WriteResult | None) -> FhirResponse:
        headers = {}
        if result is not None and result.stored is not None:
            headers["ETag"] = result.stored.etag
        return FhirResponse(204, None, headers)

    return Planned(change, respond, f"{res_type}/{res_id}")
