"""``_summary`` and ``_elements`` (https://hl7.org/fhir/R4/search.html#summary), for read and search alike.

The rules per type (elements marked ``isSummary``, and the mandatory ones ``_elements``
always keeps) are in ``data/summary-elements.json``, generated from the official R4
StructureDefinitions. A reduced resource is tagged ``SUBSETTED``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fhirpathpy.models import models

from hub.errors import invalid

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
SUMMARY_MODES = ("true", "false", "text", "data", "count")
CHOICES: dict[str, list[str]] = models["r4"]["choiceTypePaths"]
RULES = Path(__file__).parent / "data" / "summary-elements.json"


@cache
def rules() -> dict[str, dict[str, list[str]]]:
    data: dict[str, dict[str, list[str]]] = orjson.loads(RULES.read_bytes())
    return data


def check_mode(summary: str | None) -> None:
    if summary is not None and summary not in SUMMARY_MODES:
        raise invalid("FHIRHUB-PARAM-SUMMARY", f"_summary must be one of {', '.join(SUMMARY_MODES)}")


def subset(data: bytes, res_type: str, summary: str | None, elements: tuple[str, ...] | None) -> bytes:
    """The stored bytes reduced as asked; the same bytes when nothing is asked."""
    check_mode(summary)
    if summary in (None, "false") and not elements:
        return data
    res: dict[str, Any] = orjson.loads(data)
    info = rules().get(res_type, {"summary": [], "mandatory": []})
    keep: set[str] | None = None
    if elements:
        keep = {e.split(".", 1)[1] if e.startswith(res_type + ".") else e for e in elements} | set(info["mandatory"])
    elif summary == "true":
        keep = set(info["summary"])
    elif summary == "text":
        keep = {"text"} | set(info["mandatory"])
    if summary == "data":
        res.pop("text", None)
    elif keep is not None:
        allowed = {"resourceType", "id", "meta"}
        choice_prefixes = []
        for k in keep:
            name = k[:-3] if k.endswith("[x]") else k
            allowed.add(name)
            if f"{res_type}.{name}" in CHOICES:
                choice_prefixes.append(name)
        res = {
            k: val
            for k, val in res.items()
            if k in allowed
            or (k.startswith("_") and k[1:] in allowed)
            or any(k.startswith(p) and len(k) > len(p) and k[len(p)].isupper() for p in choice_prefixes)
        }
    meta = dict(res.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    res["meta"] = meta
    return orjson.dumps(res)
