"""In-memory twins of the hub's seams, for tests that do not exercise them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.errors import Issue


class AcceptAllValidator:
    """Validating twin: knows the resource types, finds no errors."""

    def __init__(self, resource_types: frozenset[str]) -> None:
        self.resource_types = resource_types

    def validate(self, resource: Mapping[str, Any], *, in_transaction: bool | None = None) -> list[Issue]:
        return []
