"""Scope enforcement, in one place: which SMART letter each interaction needs.

The router calls :func:`authorize` before every interaction — top-level requests and
each batch/transaction entry alike — and result Bundles (search matches, includes,
history, ``$everything``) keep only entries whose type the client may see
(:meth:`Permissions.can_see`).
"""

from __future__ import annotations

from hub.errors import Category, FhirError
from hub.security.scopes import Principal

LETTER = {
    "read": "r", "vread": "r", "history-instance": "r",
    "search-type": "s", "search-compartment": "s", "history-type": "s",
    "create": "c", "update": "u", "patch": "u", "delete": "d",
}
AUDIT_TYPE = "AuditEvent"


def forbidden(message: str) -> FhirError:
    return FhirError(Category.FORBIDDEN, "FHIRHUB-AUTH-SCOPE", message)


def authorize(principal: Principal, kind: str, res_type: str | None, compartment_type: str | None = None) -> None:
    perms = principal.permissions
    if kind in ("capabilities", "transaction"):
        return
    if res_type == AUDIT_TYPE:
        if kind in ("read", "search-type"):
            if not perms.audit:
                raise forbidden("Reading the audit trail needs the fhirhub/audit scope")
            return
        raise FhirError(Category.NOT_ALLOWED, "FHIRHUB-AUDIT-APPEND-ONLY", "The audit trail is append-only and written by the hub")
    if kind in ("search-system", "history-system"):
        if not perms.grants:
            raise forbidden("No resource type may be searched with the granted scopes")
        return
    if kind == "operation":
        if res_type and not perms.can_see(res_type):
            raise forbidden(f"The granted scopes do not allow reading {res_type}")
        return
    letter = LETTER.get(kind)
    if letter is None or res_type is None:
        raise forbidden("This interaction is not covered by the granted scopes")
    if not perms.allows(res_type, letter):
        raise forbidden(f"The granted scopes do not allow '{letter}' on {res_type}")
    if compartment_type is not None and not perms.can_see(compartment_type):
        raise forbidden(f"The granted scopes do not allow reading {compartment_type}")


def authorize_subscription(principal: Principal, disclosed: frozenset[str]) -> None:
    """A client may subscribe only to changes of types it may read (a Subscription discloses them)."""
    hidden = sorted(t for t in disclosed if not principal.permissions.can_see(t))
    if hidden:
        raise forbidden(f"A Subscription would disclose {', '.join(hidden)}, which the granted scopes do not allow reading")
