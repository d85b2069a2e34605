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


def validate(ctx: Context, resource: dict[str, Any], location: str | None = None, *, in_transaction: bool = False) -> None:
    """Raise 422 with every error issue located by FHIRPath; warnings do not block.

    Conditional references (``Patient?identifier=…``) are allowed only in a transaction,
    which resolves them; anywhere else they would be stored unresolved.
    ``location`` (``Bundle.entry[3].resource``) replaces the resource type that starts each expression.
    """
    issues = ctx.validator.validate(resource, in_transaction=in_transaction)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        if location:
            res_type = str(resource.get("resourceType"))
            errors = [Issue(i.severity, i.code, i.diagnostics, _relocate(i.expression, res_type, location)) for i in errors]
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
    unchanged = result.outcome == "unchanged"
    prefer = req.prefer_return
    if prefer == "minimal":
        return FhirResponse(status, None, headers, stored=stored, unchanged=unchanged)
    if prefer == "OperationOutcome":
        oo = operation_outcome(
            [Issue("information", "informational", f"{stored.res_type}/{stored.res_id} version {stored.version}: {result.outcome}")]
        )
        return FhirResponse(status, orjson.dumps(oo), headers, stored=stored, unchanged=unchanged)
    return FhirResponse(status, stored.data, headers, resource=True, stored=stored, unchanged=unchanged)


def _relocate(expression: str | None, res_type: str, location: str) -> str:
    if not expression:
        return location
    if expression == res_type or expression.startswith(res_type + ".") or expression.startswith(res_type + "["):
        return location + expression[len(res_type):]
    return f"{location}.{expression}"
