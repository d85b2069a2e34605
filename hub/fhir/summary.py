"""``_summary`` and ``_elements`` (https://hl7.org/fhir/R4/search.html#summary)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.errors import invalid
from hub.fhir.definitions import ALWAYS_KEPT

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
SUMMARY_MODES = ("true", "false", "text", "data", "count")


def _choice_match(key: str, names: frozenset[str] | set[str]) -> bool:
    if key in names:
        return True
    # valueQuantity matches the choice element "value"
    return any(key.startswith(n) and key[len(n) : len(n) + 1].isupper() for n in names)


def _mark_subsetted(resource: dict[str, Any]) -> None:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    resource["meta"] = meta


def apply(
    resource: Mapping[str, Any],
    summary: str | None,
    elements: list[str] | None,
    summary_elements: Mapping[str, frozenset[str]],
) -> dict[str, Any]:
    """The resource reduced as ``_summary``/``_elements`` ask; marked SUBSETTED when reduced."""
    if summary is not None and summary not in SUMMARY_MODES:
        raise invalid("FHIRHUB-PARAM-SUMMARY", f"_summary must be one of {', '.join(SUMMARY_MODES)}")
    res_type = resource.get("resourceType", "")
    if summary in (None, "false") and not elements:
        return dict(resource)
    if summary == "true":
        keep = summary_elements.get(res_type, frozenset())
        out = {k: v for k, v in resource.items() if k in ALWAYS_KEPT or _choice_match(k, keep)}
    elif summary == "text":
        keep_text = {"text", "id", "meta"} | {
            k for k in summary_elements.get(res_type, frozenset()) if k in ("identifier", "status")
        }
        out = {k: v for k, v in resource.items() if k in ALWAYS_KEPT or k in keep_text}
    elif summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:  # _elements
        wanted = {e.strip().split(".")[-1] if "." in e else e.strip() for e in elements or [] if e.strip()}
        out = {k: v for k, v in resource.items() if k in ALWAYS_KEPT or _choice_match(k, wanted)}
        # mandatory elements stay, per the spec's SHOULD; modifiers (e.g. status) kept by summary list
    _mark_subsetted(out)
    return out
