"""Typed HL7v2 errors.

Every failure of parsing or mapping raises :class:`Hl7Error`, a
:class:`hub.errors.FhirError` that also carries what an ERR segment needs:
the HL7 location (ERL, e.g. ``PID^1^3``), the HL7 table 0357 error code and
the table 0516 severity.  The category decides AE or AR through
``hub.errors.CATEGORIES``:

* ``INVALID``        -> AE  (malformed message, content the mapping cannot accept)
* ``UNPROCESSABLE``  -> AE  (a FHIR rule would be broken: required element missing)
* ``NOT_SUPPORTED``  -> AR  (message type / event the mapping set does not handle)

Messages never contain patient values: only field positions, codes of the
error and names of mapping files.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.errors import Category, FhirError, Issue

# HL7 table 0357 (message error condition codes)
E_SEGMENT_SEQUENCE = "100"
E_REQUIRED_FIELD = "101"
E_DATA_TYPE = "102"
E_TABLE_VALUE = "103"
E_VALUE_TOO_LONG = "104"
E_UNSUPPORTED_MESSAGE_TYPE = "200"
E_UNSUPPORTED_EVENT = "201"
E_UNSUPPORTED_PROCESSING_ID = "202"
E_UNSUPPORTED_VERSION = "203"
E_APPLICATION = "207"

TABLE_0357: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "198": "Non-Conformant Cardinality",
    "199": "Other HL7 Error",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application error",
}


@dataclass
class Hl7Error(FhirError):
    """An HL7v2 failure with an ERR-ready location and table-0357 code."""

    location: str | None = None  # ERL: SEG^seq^field^rep^comp^sub
    hl7_code: str = E_APPLICATION
    severity: str = "E"  # table 0516: E error, F fatal, W warning, I information

    @property
    def ack_code(self) -> str:
        """MSA-1 in original mode (AE or AR)."""
        return self.mapping.ack_code


def hl7_error(
    category: Category,
    code: str,
    message: str,
    *,
    location: str | None = None,
    hl7_code: str = E_APPLICATION,
) -> Hl7Error:
    issue_code = (
        "not-supported"
        if category is Category.NOT_SUPPORTED
        else ("invariant" if category is Category.UNPROCESSABLE else "invalid")
    )
    expr = f"HL7 {location}" if location else None
    return Hl7Error(
        category,
        code,
        message,
        [Issue("error", issue_code, message, expr)],
        location=location,
        hl7_code=hl7_code,
    )


def parse_error(
    code: str, message: str, *, location: str | None = None, hl7_code: str = E_SEGMENT_SEQUENCE
) -> Hl7Error:
    """Malformed HL7 (AE). ``code`` is the suffix after ``HL7-PARSE-``."""
    return hl7_error(Category.INVALID, f"HL7-PARSE-{code}", message, location=location, hl7_code=hl7_code)


def mapping_error(
    code: str, message: str, *, location: str | None = None, hl7_code: str = E_REQUIRED_FIELD
) -> Hl7Error:
    """Content the mapping cannot accept (AE). ``code`` is the suffix after ``HL7-MAP-``."""
    return hl7_error(Category.UNPROCESSABLE, f"HL7-MAP-{code}", message, location=location, hl7_code=hl7_code)


def unsupported_error(message: str, *, event_only: bool = False) -> Hl7Error:
    """Message type or trigger event not handled by the mapping set (AR)."""
    return hl7_error(
        Category.NOT_SUPPORTED,
        "HL7-UNSUPPORTED-MESSAGE",
        message,
        location="MSH^1^9",
        hl7_code=E_UNSUPPORTED_EVENT if event_only else E_UNSUPPORTED_MESSAGE_TYPE,
    )


class MappingFileError(Exception):
    """A mapping file is broken. ``str()`` names the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.detail = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
