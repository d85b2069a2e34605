"""``GET [base]/metadata``: a CapabilityStatement generated from what is implemented.

It claims nothing that is not: conditional operations and search parameters are
listed only when the search engine is enabled, and the documentation of each
resource names the known gaps.
"""

from __future__ import annotations

from typing import Any

import orjson

from hub import FHIR_VERSION, __version__
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse

INSTANCE = ["read", "vread", "update", "patch", "delete", "history-instance"]
TYPE = ["history-type", "create"]


OPERATION_DOCS = {
    "$status": "Subscription $status (R4 Subscriptions Backport IG): the subscription's status and event count",
    "$events": "Subscription $events (R4 Subscriptions Backport IG): past notifications by event number",
    "$resend": "fhirhub: replay dead or past deliveries, by subscription, resource or time range",
    "$workflow-runs": "fhirhub: workflow runs and their steps (scope fhirhub/admin)",
}


def build(ctx: Context, base_url: str, operations: list[str] | None = None) -> dict[str, Any]:
    searching = ctx.search is not None
    resources = []
    for res_type in sorted(ctx.resource_types):
        entry: dict[str, Any] = {
            "type": res_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
            "interaction": [{"code": c} for c in INSTANCE + TYPE + (["search-type"] if searching else [])],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": searching,
            "conditionalRead": "modified-since",
            "conditionalUpdate": searching,
            "conditionalDelete": "single" if searching else "not-supported",
        }
        if searching:
            assert ctx.search is not None
            entry["searchParam"] = ctx.search.capability(res_type)
        resources.append(entry)
    system = [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}]
    if searching:
        system.append({"code": "search-system"})
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": (
            "JSON only (application/fhir+json, application/json); XML answers 406/415. "
            "Patch is JSON Patch only (no FHIRPath Patch)."
        ),
        "resource": resources,
        "interaction": system,
    }
    if searching:
        rest["documentation"] += (
            " Search: every R4 search parameter, except the token modifiers :in, :not-in, :above and :below (400) and"
            " the parameters _text, _content, _query, _list, _contained, _containedType, _filter and near, which are"
            " ignored and reported in the searchset's OperationOutcome entry (400 with Prefer: handling=strict)."
        )
    ops: list[dict[str, Any]] = []
    if searching:
        ops.append({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"})
    for name in operations or []:
        ops.append({"name": name.lstrip("$"), "definition": f"https://fhirhub.dev/OperationDefinition/{name.lstrip('$')}",
                    "documentation": OPERATION_DOCS.get(name, "")})
    if ops:
        rest["operation"] = ops
    if operations:
        rest["documentation"] += (
            " Subscriptions: R4 criteria-based and R4 Subscriptions Backport topic-based, channel rest-hook"
            " (payload none or application/fhir+json), delivered at least once, in order per resource."
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-27",
        "publisher": "fhirhub",
        "kind": "instance",
        "software": {"name": "fhirhub", "version": __version__},
        "implementation": {"description": "fhirhub FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }


def respond(ctx: Context, req: FhirRequest, operations: list[str] | None = None) -> FhirResponse:
    return FhirResponse(200, orjson.dumps(build(ctx, req.base_url, operations)))
