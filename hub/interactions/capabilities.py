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


def build(ctx: Context, base_url: str) -> dict[str, Any]:
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
        rest["operation"] = [
            {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
        ]
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


def respond(ctx: Context, req: FhirRequest) -> FhirResponse:
    return FhirResponse(200, orjson.dumps(build(ctx, req.base_url)))
