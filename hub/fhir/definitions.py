"""What the hub knows of the R4 definitions outside the validator: the concrete resource types."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class Definitions:
    resource_types: frozenset[str]

    @classmethod
    def load(cls, profiles_dir: Path) -> Definitions:
        bundle = orjson.loads((profiles_dir / "profiles-resources.json").read_bytes())
        types: set[str] = set()
        for entry in bundle.get("entry", []):
            sd = entry.get("resource", {})
            if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource":
                continue
            if sd.get("abstract") or sd.get("derivation") == "constraint":
                continue
            types.add(sd["type"])
        return cls(frozenset(types))
