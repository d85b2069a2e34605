"""The services an interaction may use: typed seams, each with an in-memory twin for tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection

from hub.errors import Issue
from hub.fhir.definitions import Definitions
from hub.security.audit import AuditTrail
from hub.settings import Settings
from hub.store.db import Database
from hub.store.outbox import ChangeSignal
from hub.store.repository import Repository


class Validating(Protocol):
    @property
    def resource_types(self) -> frozenset[str]: ...

    def validate(self, resource: Mapping[str, Any], *, in_transaction: bool | None = None) -> list[Issue]: ...


class Searching(Protocol):
    def search(self, conn: Connection, request: Any) -> Any: ...

    def find(self, conn: Connection, res_type: str, query: str) -> list[tuple[int, str]]: ...

    def capability(self, res_type: str) -> list[dict[str, Any]]: ...


@dataclass
class Context:
    settings: Settings
    db: Database
    repo: Repository
    definitions: Definitions
    validator: Validating
    search: Searching | None = None
    audit: AuditTrail | None = None
    changes: ChangeSignal = field(default_factory=ChangeSignal)  # rung after every committed write
    # The resource types a Subscription discloses (its criteria or its topic's triggers), for the scope check.
    subscription_types: Callable[[Mapping[str, Any]], frozenset[str]] | None = None

    @property
    def resource_types(self) -> frozenset[str]:
        return self.definitions.resource_types
