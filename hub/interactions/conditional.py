"""Resolving conditional criteria (``Type?query``) through the search engine."""

from __future__ import annotations

from sqlalchemy import Connection

from hub.errors import Category, FhirError
from hub.interactions.context import Context


def find(ctx: Context, conn: Connection, res_type: str, criteria: str) -> list[str]:
    if ctx.search is None:
        raise FhirError(Category.NOT_SUPPORTED, "FHIRHUB-CONDITIONAL-UNSUPPORTED", "Conditional operations need the search engine")
    criteria = criteria.split("?", 1)[1] if "?" in criteria else criteria
    if not criteria.strip():
        raise FhirError(Category.INVALID, "FHIRHUB-CONDITIONAL-EMPTY", "Conditional criteria must not be empty")
    return [res_id for _, res_id in ctx.search.find(conn, res_type, criteria)]


def match_one(ctx: Context, conn: Connection, res_type: str, criteria: str) -> str | None:
    """The id of the one match, None for no match; 412 when several match."""
    ids = find(ctx, conn, res_type, criteria)
    if len(ids) > 1:
        raise FhirError(
            Category.PRECONDITION,
            "FHIRHUB-CONDITIONAL-MULTIPLE",
            f"The criteria match {len(ids)} {res_type} resources; they must match at most one",
        )
    return ids[0] if ids else None
