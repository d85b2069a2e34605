"""The official R4 StructureDefinitions, loaded once at start from ``profiles/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# Resource elements that `_summary=data` removes (narrative), and the ones every summary keeps.
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})


@dataclass(frozen=True)
class Definitions:
    resource_types: frozenset[str]
    summary_elements: dict[str, frozenset[str]]  # type -> top-level element names with isSummary
    raw: dict[str, Any]  # the profiles-resources Bundle, for modules that compile more from it

    @classmethod
    def load(cls, profiles_dir: Path) -> Definitions:
        bundle = orjson.loads((profiles_dir / "profiles-resources.json").read_bytes())
        types: set[str] = set()
        summary: dict[str, frozenset[str]] = {}
        for entry in bundle.get("entry", []):
            sd = entry.get("resource", {})
            if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource":
                continue
            if sd.get("abstract") or sd.get("derivation") == "constraint":
                continue
            name = sd["type"]
            types.add(name)
            names = set()
            for element in sd.get("snapshot", {}).get("element", []):
                path: str = element["path"]
                parts = path.split(".")
                if len(parts) == 2 and element.get("isSummary"):
                    names.add(parts[1].replace("[x]", ""))
            summary[name] = frozenset(names)
        return cls(frozenset(types), summary, bundle)
