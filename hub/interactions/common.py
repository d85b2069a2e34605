"""Checks and responses shared by the write interactions."""

from __future__ import annotations

from typing import Any

import orjson

from hub.errors import Category, FhirError, Issue, invalid, operation_outcome
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse, version_headers
from hub.store.repository import WriteResult

ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


def check_type(ctx: Context, res_type: str) -> None:
    if res_type not in ctx.resource_types:
        raise FhirError(Category.NOT_FOUND, "FHIRHUB-TYPE-UNKNOWN", f"Unknown resource type '{res_type}'")


def check_id(res_id: str) -> None:
    if not (1 <= len(res_id) <= 64) or not set(res_id) <= ID_CHARS:
        raise invalid("FHIRHUB-ID-INVALID", "A resource id is 1-64 characters of A-Z a-z 0-9 - .")


def resource_body(req: FhirRequest, res_type: str) -> dict[str, Any]:
    body = req.body
    if not isinstance(body, dict):
        raise invalid("FHIRHUB-BODY-NOT-RESOURCE", "The request body must be a FHIR resource (a JSON object)")
    if body.get("resourceType") != res_type:
        raise invalid(
            "FHIRHUB-BODY-TYPE-MISMATCH",
            f"The resource's resourceType must be '{res_type}'",
        )
    return body


def validate(ctx: Context, resource: dict[str, Any], location: str | None = None) -> None:
    """Raise 422 with every error issue located by FHIRPath; warnings do not block."""
    issues = ctx.validator.validate(resource)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        if location:
            errors = [
                Issue(i.severity, i.code, i.diagnostics, f"{location}.{i.expression}" if i.expression else location)
                for i in errors
            ]
        raise FhirError(
            Category.UNPROCESSABLE,
            "FHIRHUB-VALIDATION",
            f"The resource is not valid FHIR R4: {len(errors)} error(s)",
            errors,
        )


def written(req: FhirRequest, result: WriteResult | None, *, created_status: int = 201) -> FhirResponse:
    """The response to a create/update/patch, honouring ``Prefer: return=``."""
    assert result is not None
    stored = result.stored
    assert stored is not None
    status = created_status if result.outcome == "created" else 200
    headers = version_headers(stored, req.base_url)
    prefer = req.prefer_return
    if prefer == "minimal":
        return FhirResponse(status, None, headers, stored=stored)
    if prefer == "OperationOutcome":
        oo = operation_outcome(
            [Issue("information", "informational", f"{stored.res_type}/{stored.res_id} version {stored.version}: {result.outcome}")]
        )
        return FhirResponse(status, orjson.dumps(oo), headers, stored=stored)
    return FhirResponse(status, stored.data, headers, resource=True, stored=stored)
