"""SMART scopes (v2 ``system/Patient.rs`` and v1 ``system/Patient.read``) as permissions.

v2 letters: c create, r read (read, vread, instance history), u update and patch,
d delete, s search (type/system search, type/system history). v1 ``read`` means
``rs`` and ``write`` means ``cud``; ``*`` is every type. Only ``system/`` (and, for
backend clients acting for the practice, ``user/``) contexts are granted: ``patient/``
scopes would need a patient context that Backend Services does not have.
Two hub scopes sit beside them: ``fhirhub/admin`` (message store and connector
administration) and ``fhirhub/audit`` (search the audit trail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LETTERS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
ADMIN = "fhirhub/admin"
AUDIT = "fhirhub/audit"
_SCOPE = re.compile(r"^(system|user)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|c?r?u?d?s?)$")


def parse_scope(scope: str) -> tuple[str, str] | None:
    """``system/Patient.rs`` -> ("Patient", "rs"); None for a scope this server does not grant."""
    match = _SCOPE.match(scope)
    if not match or not match.group(3):
        return None
    _, res_type, perms = match.groups()
    return res_type, V1.get(perms, perms)


def valid_scope(scope: str) -> bool:
    return scope in (ADMIN, AUDIT) or parse_scope(scope) is not None


@dataclass(frozen=True)
class Permissions:
    """What a client may do: type -> letters; ``*`` applies to every type."""

    grants: dict[str, frozenset[str]] = field(default_factory=dict)
    admin: bool = False
    audit: bool = False
    scopes: tuple[str, ...] = ()

    @classmethod
    def from_scopes(cls, scopes: list[str] | str) -> Permissions:
        items = scopes.split() if isinstance(scopes, str) else list(scopes)
        grants: dict[str, set[str]] = {}
        granted = []
        for scope in items:
            if scope in (ADMIN, AUDIT):
                granted.append(scope)
                continue
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            res_type, letters = parsed
            grants.setdefault(res_type, set()).update(letters)
            granted.append(scope)
        return cls({k: frozenset(v) for k, v in grants.items()}, ADMIN in items, AUDIT in items, tuple(granted))

    @classmethod
    def everything(cls) -> Permissions:
        return cls({"*": frozenset(LETTERS)}, True, True, ("system/*.cruds", ADMIN, AUDIT))

    def allows(self, res_type: str, letter: str) -> bool:
        return letter in self.grants.get(res_type, frozenset()) or letter in self.grants.get("*", frozenset())

    def can_see(self, res_type: str) -> bool:
        """May this resource type appear in results (search matches, includes, history)?"""
        return self.allows(res_type, "r") or self.allows(res_type, "s")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a registered client (or the hub itself) and what it may do."""

    client_id: str
    permissions: Permissions
    address: str | None = None

    @classmethod
    def system(cls, name: str = "fhirhub") -> Principal:
        return cls(name, Permissions.everything())
