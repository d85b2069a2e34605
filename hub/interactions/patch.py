"""patch: ``PATCH [base]/[type]/[id]`` and conditional patch.

The body is a JSON Patch document (RFC 6902, what FHIR R4 specifies for JSON), or,
as an extension many FHIR clients use (fhirpy, Aidbox), a JSON Merge Patch
(RFC 7396) object. FHIRPath Patch (a Parameters body) is not supported: 415.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
from sqlalchemy import Connection

from hub.errors import Category, FhirError, invalid
from hub.interactions import conditional
from hub.interactions.common import check_type, validate, written
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, Planned, parse_etag
from hub.store.repository import Change


def plan(ctx: Context, conn: Connection, req: FhirRequest, res_type: str, res_id: str | None, *,
         criteria: str | None = None, location: str | None = None) -> Planned:
    check_type(ctx, res_type)
    if criteria is not None:
        res_id = conditional.match_one(ctx, conn, res_type, criteria)
        if res_id is None:
            raise FhirError(Category.NOT_FOUND, "FHIRHUB-PATCH-NO-MATCH", f"No {res_type} matches the criteria")
    assert res_id is not None
    ops = req.body
    if isinstance(ops, dict) and ops.get("resourceType") == "Parameters":
        raise FhirError(Category.UNSUPPORTED_MEDIA, "FHIRHUB-PATCH-FHIRPATH", "FHIRPath Patch is not supported; send JSON Patch")
    if not isinstance(ops, list | dict):
        raise invalid("FHIRHUB-PATCH-NOT-JSON-PATCH", "A JSON Patch body is an array of operations")
    current = ctx.repo.read(conn, res_type, res_id)
    if current is None:
        raise FhirError(Category.NOT_FOUND, "FHIRHUB-READ-NOT-FOUND", f"{res_type}/{res_id} is not known")
    if current.deleted:
        raise FhirError(Category.GONE, "FHIRHUB-READ-DELETED", f"{res_type}/{res_id} has been deleted")
    if_match = parse_etag(req.header("if-match"), "FHIRHUB-IF-MATCH-INVALID")
    if if_match is not None and if_match != current.version:
        raise FhirError(
            Category.PRECONDITION,
            "FHIRHUB-WRITE-VERSION-CONFLICT",
            f"If-Match version {if_match} does not match the current version {current.version} of {res_type}/{res_id}",
        )
    try:
        if isinstance(ops, dict):
            patched: Any = merge_patch(current.resource(), ops)
        else:
            patched = jsonpatch.JsonPatch(ops).apply(current.resource())
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, ValueError) as exc:
        raise FhirError(Category.UNPROCESSABLE, "FHIRHUB-PATCH-FAILED", f"The patch cannot be applied: {type(exc).__name__}") from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != res_type or patched.get("id") != res_id:
        raise FhirError(Category.UNPROCESSABLE, "FHIRHUB-PATCH-IDENTITY", "A patch must not change resourceType or id")
    validate(ctx, patched, location, in_transaction=req.in_transaction)
    change = Change(res_type, res_id, patched, "PATCH", if_match=current.version, origin=req.origin)
    return Planned(change, lambda result: written(req, result), f"{res_type}/{res_id}")


def merge_patch(target: Any, patch_doc: Any) -> Any:
    """RFC 7396 section 2: null removes a member, objects merge, anything else replaces."""
    if not isinstance(patch_doc, dict):
        return patch_doc
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch_doc.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
