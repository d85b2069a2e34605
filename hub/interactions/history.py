"""history at instance, type and system level, with ``_since``, ``_at``-free keyset paging.

Versions are listed newest first. Pages are keyset pages on the version row's
surrogate key (``_page=b<pk>`` for older, ``a<pk>`` for newer), so a page stays
correct while others write.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, select

from hub.errors import Category, FhirError, invalid
from hub.fhir.bundle import Entry, assemble
from hub.fhir.instant import parse_instant_micros
from hub.interactions.common import check_id, check_type
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse
from hub.store.repository import instant
from hub.store.tables import version_t

HISTORY_PARAMS = {"_count", "_since", "_page", "_format", "_pretty"}
STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def page_size(ctx: Context, req: FhirRequest) -> int:
    raw = req.param("_count")
    if raw is None:
        return ctx.settings.default_page_size
    if not raw.isdigit():
        raise invalid("FHIRHUB-PARAM-COUNT", "_count must be a non-negative integer")
    return min(int(raw), ctx.settings.max_page_size)


def history(ctx: Context, conn: Connection, req: FhirRequest, res_type: str | None = None, res_id: str | None = None) -> FhirResponse:
    v = version_t.c
    stmt = select(v.pk, v.res_type, v.res_id, v.version, v.last_updated, v.method, v.deleted, v.data)
    if res_type is not None:
        check_type(ctx, res_type)
        stmt = stmt.where(v.res_type == res_type)
    if res_id is not None:
        assert res_type is not None
        check_id(res_id)
        if not ctx.repo.exists(conn, res_type, res_id):
            raise FhirError(Category.NOT_FOUND, "FHIRHUB-READ-NOT-FOUND", f"{res_type}/{res_id} is not known")
        stmt = stmt.where(v.res_id == res_id)
    unknown = sorted({k for k, _ in req.params if k not in HISTORY_PARAMS})
    if unknown and req.prefer_strict:
        raise invalid("FHIRHUB-PARAM-UNKNOWN", f"Unsupported history parameter(s): {', '.join(unknown)}")
    since = req.param("_since")
    if since is not None:
        stmt = stmt.where(v.last_updated >= parse_instant_micros(since, "_since"))
    count = page_size(ctx, req)
    page = req.param("_page") or ""
    newer = page.startswith("a")
    if page:
        if len(page) < 2 or page[0] not in "ab" or not page[1:].isdigit():
            raise invalid("FHIRHUB-PARAM-PAGE", "_page is not a page this server gave out")
        anchor = int(page[1:])
        stmt = stmt.where(v.pk > anchor) if newer else stmt.where(v.pk < anchor)
    stmt = stmt.order_by(v.pk.asc() if newer else v.pk.desc()).limit(count + 1)
    rows = list(conn.execute(stmt))
    more = len(rows) > count
    rows = rows[:count]
    if newer:
        rows.reverse()

    path = "/".join(p for p in (res_type, res_id, "_history") if p)
    keep: list[tuple[str, str]] = [(k, val) for k, val in req.params if k in ("_count", "_since")]
    if not any(k == "_count" for k, _ in keep):
        keep.append(("_count", str(count)))

    def link(extra: list[tuple[str, str]]) -> str:
        return f"{req.base_url}/{path}?{urlencode(keep + extra)}"

    links = {"self": link([("_page", page)] if page else [])}
    if rows:
        has_older = more if not newer else True
        has_newer = bool(page) and (more if newer else True)
        if has_older:
            links["next"] = link([("_page", f"b{rows[-1].pk}")])
        if has_newer:
            links["previous"] = link([("_page", f"a{rows[0].pk}")])
    entries = []
    can_see = req.principal.permissions.can_see
    for row in rows:
        if not can_see(row.res_type):
            continue
        url = f"{row.res_type}/{row.res_id}"
        extra: dict[str, Any] = {
            "request": {"method": row.method, "url": url if row.method != "POST" else row.res_type},
            "response": {
                "status": STATUS.get(row.method, "200 OK"),
                "etag": f'W/"{row.version}"',
                "lastModified": instant(row.last_updated),
            },
        }
        entries.append(Entry(f"{req.base_url}/{url}", None if row.deleted else row.data, extra))
    return FhirResponse(200, assemble("history", entries, links=links))
