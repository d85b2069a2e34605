"""read ``GET [base]/[type]/[id]`` and vread ``GET [base]/[type]/[id]/_history/[vid]``."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from sqlalchemy import Connection

from hub.errors import Category, FhirError
from hub.interactions.common import check_id, check_type
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse, parse_etag, version_headers
from hub.store.repository import Stored


def _respond(stored: Stored, req: FhirRequest) -> FhirResponse:
    headers = version_headers(stored, req.base_url)
    headers["Content-Location"] = headers.pop("Location")
    if stored.deleted:
        err = FhirError(Category.GONE, "FHIRHUB-READ-DELETED", f"{stored.res_type}/{stored.res_id} has been deleted")
        response = FhirResponse.error(err)
        response.headers.update(headers)
        return response
    return FhirResponse(200, stored.data, headers, resource=True, stored=stored)


def read(ctx: Context, conn: Connection, req: FhirRequest, res_type: str, res_id: str) -> FhirResponse:
    check_type(ctx, res_type)
    check_id(res_id)
    stored = ctx.repo.read(conn, res_type, res_id)
    if stored is None:
        raise FhirError(Category.NOT_FOUND, "FHIRHUB-READ-NOT-FOUND", f"{res_type}/{res_id} is not known")
    if not stored.deleted:
        none_match = req.header("if-none-match")
        if none_match and parse_etag(none_match, "FHIRHUB-IF-NONE-MATCH-INVALID") == stored.version:
            return FhirResponse(304, None, {"ETag": stored.etag})
        since = req.header("if-modified-since")
        if since:
            try:
                cutoff = parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                cutoff = None
            if cutoff is not None and stored.last_updated // 1_000_000 <= int(cutoff):
                return FhirResponse(304, None, {"ETag": stored.etag})
    return _respond(stored, req)


def vread(ctx: Context, conn: Connection, req: FhirRequest, res_type: str, res_id: str, vid: str) -> FhirResponse:
    check_type(ctx, res_type)
    check_id(res_id)
    if not vid.isdigit():
        raise FhirError(Category.NOT_FOUND, "FHIRHUB-VREAD-NOT-FOUND", f"Version '{vid[:20]}' is not known")
    stored = ctx.repo.vread(conn, res_type, res_id, int(vid))
    if stored is None:
        if not ctx.repo.exists(conn, res_type, res_id):
            raise FhirError(Category.NOT_FOUND, "FHIRHUB-READ-NOT-FOUND", f"{res_type}/{res_id} is not known")
        raise FhirError(Category.NOT_FOUND, "FHIRHUB-VREAD-NOT-FOUND", f"{res_type}/{res_id} has no version {vid}")
    return _respond(stored, req)
