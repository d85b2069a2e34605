"""Error categories with stable codes, mapped in one place to HTTP status,
OperationOutcome issue code and HL7v2 acknowledgment code.

Every layer raises :class:`FhirError`; only the edges (REST routes, MLLP
listener, CLI) translate it, and they all use :data:`CATEGORIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    INVALID = "invalid"  # malformed input: bad JSON, bad parameter
    UNPROCESSABLE = "unprocessable"  # well-formed but breaks the rules (validation)
    NOT_FOUND = "not-found"
    GONE = "gone"
    CONFLICT = "conflict"
    PRECONDITION = "precondition"
    NOT_ALLOWED = "not-allowed"  # method not allowed on this resource
    NOT_SUPPORTED = "not-supported"  # feature not implemented
    UNSUPPORTED_MEDIA = "unsupported-media"
    NOT_ACCEPTABLE = "not-acceptable"
    TOO_LARGE = "too-large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    TOO_MANY = "too-many"
    TRANSIENT = "transient"  # try again later (database busy, shutting down)
    INTERNAL = "internal"


@dataclass(frozen=True)
class CategoryMapping:
    http_status: int
    issue_code: str  # http://hl7.org/fhir/issue-type
    ack_code: str  # HL7v2 MSA-1 (original mode): AE application error, AR reject


CATEGORIES: dict[Category, CategoryMapping] = {
    Category.INVALID: CategoryMapping(400, "invalid", "AE"),
    Category.UNPROCESSABLE: CategoryMapping(422, "invariant", "AE"),
    Category.NOT_FOUND: CategoryMapping(404, "not-found", "AE"),
    Category.GONE: CategoryMapping(410, "deleted", "AE"),
    Category.CONFLICT: CategoryMapping(409, "conflict", "AE"),
    Category.PRECONDITION: CategoryMapping(412, "conflict", "AE"),
    Category.NOT_ALLOWED: CategoryMapping(405, "not-supported", "AR"),
    Category.NOT_SUPPORTED: CategoryMapping(501, "not-supported", "AR"),
    Category.UNSUPPORTED_MEDIA: CategoryMapping(415, "not-supported", "AR"),
    Category.NOT_ACCEPTABLE: CategoryMapping(406, "not-supported", "AR"),
    Category.TOO_LARGE: CategoryMapping(413, "too-costly", "AR"),
    Category.UNAUTHORIZED: CategoryMapping(401, "login", "AR"),
    Category.FORBIDDEN: CategoryMapping(403, "forbidden", "AR"),
    Category.TOO_MANY: CategoryMapping(429, "throttled", "AR"),
    Category.TRANSIENT: CategoryMapping(503, "transient", "AR"),
    Category.INTERNAL: CategoryMapping(500, "exception", "AR"),
}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue. ``expression`` locates it by FHIRPath."""

    severity: str  # fatal | error | warning | information
    code: str  # http://hl7.org/fhir/issue-type
    diagnostics: str
    expression: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


@dataclass
class FhirError(Exception):
    """A failure with a stable ``code`` (e.g. ``FHIRHUB-PARSE-JSON``) and a category."""

    category: Category
    code: str
    message: str
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code}: {self.message}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by its fields (an HL7 mapping process hands its errors back; Exception's own
        pickling would call ``__init__`` with the formatted text only)."""
        return (_restore, (type(self), {f.name: getattr(self, f.name) for f in fields(self)}))

    @property
    def mapping(self) -> CategoryMapping:
        return CATEGORIES[self.category]

    @property
    def http_status(self) -> int:
        return self.mapping.http_status

    def all_issues(self) -> list[Issue]:
        if self.issues:
            return self.issues
        return [Issue("error", self.mapping.issue_code, self.message)]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.all_issues(), code=self.code)


def _restore(cls: type[FhirError], values: dict[str, Any]) -> FhirError:
    return cls(**values)


def operation_outcome(issues: list[Issue], code: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}
    if code:
        for issue in out["issue"]:
            issue.setdefault(
                "details",
                {"coding": [{"system": "https://fhirhub.dev/CodeSystem/error-code", "code": code}]},
            )
    return out


def invalid(code: str, message: str, expression: str | None = None) -> FhirError:
    return FhirError(Category.INVALID, code, message, [Issue("error", "invalid", message, expression)] if expression else [])


def not_found(code: str, message: str) -> FhirError:
    return FhirError(Category.NOT_FOUND, code, message)
