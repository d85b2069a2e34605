"""HL7v2 message -> FHIR transaction Bundle (pure; no I/O, no logging).

>>> result = convert(raw, MappingSet.load("mappings"))
>>> result.bundle["type"]
'transaction'

Entries use conditional interactions on business identifiers so that a
resent message changes nothing twice:

* the subject of the message (Patient, Encounter, Appointment, Coverage,
  Claim ...) is a conditional update: ``PUT Patient?identifier=system|value``;
* master data the message only names (Practitioner, Location, payor
  Organization) is a conditional create: ``POST`` with ``ifNoneExist``, so a
  richer record kept elsewhere is never overwritten by the few fields of an XCN.

``fullUrl`` values are ``urn:uuid:`` UUIDv5 of sender + type + identifier, so
the output is stable (golden files) and references between entries resolve
inside the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.hl7.engine import Run, Scope
from hub.hl7.errors import E_SEGMENT_SEQUENCE, mapping_error, unsupported_error
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import Message, parse


@dataclass
class ConversionResult:
    bundle: dict[str, Any]
    message_type: str  # MSH-9.1, e.g. "ADT"
    trigger: str  # MSH-9.2, e.g. "A01"
    structure: str  # MSH-9.3 (may be empty)
    control_id: str  # MSH-10
    sender: dict[str, str]  # application (MSH-3), facility (MSH-4)
    receiver: dict[str, str]  # application (MSH-5), facility (MSH-6)
    version: str  # MSH-12
    patient_key: str | None  # "system|value" of the patient the message is about (ordering key)
    mapping: str  # mapping file used (relative to the mapping set)
    warnings: list[str] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)  # per entry: the segment it came from ("PID^1")

    @property
    def event(self) -> str:
        return f"{self.message_type}^{self.trigger}"

    @property
    def resource_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.bundle.get("entry", []):
            rt = e["resource"]["resourceType"]
            counts[rt] = counts.get(rt, 0) + 1
        return counts


def convert(
    raw: str | bytes | Message,
    mappings: MappingSet,
    *,
    sender_systems: dict[str, str] | None = None,
    timezone: str | None = None,
    parser: str = "python-hl7",
) -> ConversionResult:
    """Map one HL7v2 message to a FHIR R4 transaction Bundle.

    ``sender_systems`` maps assigning authorities (CX-4/EI-2 namespace or
    universal id) to identifier system URIs; it overrides the mapping set's
    ``settings.yaml``.  ``timezone`` (IANA name or ``+hh:mm``) applies to v2
    times without an offset (default: the mapping set's ``default_timezone``).
    ``parser`` is the tokenizer (see :func:`hub.hl7.parse.parse`).

    Raises :class:`hub.hl7.errors.Hl7Error`: ``INVALID`` / ``UNPROCESSABLE``
    (-> AE) for malformed or unmappable content, ``NOT_SUPPORTED`` (-> AR) for
    message types the mapping set does not handle.
    """
    msg = raw if isinstance(raw, Message) else parse(raw, parser=parser)
    code, trigger = msg.message_code, msg.trigger
    doc = mappings.message_for(code, trigger)
    if doc is None:
        raise unsupported_error(
            f"no mapping for {code}^{trigger}" if trigger else f"no mapping for {code}",
            event_only=mappings.supports_type(code),
        )
    for seg_name in doc.data.get("requires") or []:
        if msg.first(seg_name) is None:
            raise mapping_error(
                "SEGMENT",
                f"{code}^{trigger} requires segment {seg_name}",
                location=f"{seg_name}^1",
                hl7_code=E_SEGMENT_SEQUENCE,
            )
    run = Run(mappings, msg, sender_systems=sender_systems, timezone=timezone)
    scope = Scope()
    variables: dict[str, Any] = {**dict(doc.data.get("vars") or {}), "event": trigger}
    run.run_steps(doc.data["steps"], scope, msg.segments, variables)
    run.finish()
    entries = [
        {"fullUrl": e.full_url, "resource": e.resource, "request": e.request_json()} for e in run.entries
    ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    patient_key = None
    pname = doc.data.get("patient")
    if pname:
        pe = scope.find(pname)
        if pe is not None and pe.key is not None:
            patient_key = f"{pe.key[0]}|{pe.key[1]}"
    msh = msg.msh
    return ConversionResult(
        bundle=bundle,
        message_type=code,
        trigger=trigger,
        structure=msg.structure,
        control_id=msg.control_id,
        sender={"application": msh.value(3), "facility": msh.value(4)},
        receiver={"application": msh.value(5), "facility": msh.value(6)},
        version=msg.version,
        patient_key=patient_key,
        mapping=doc.path,
        warnings=list(run.warnings) + list(msg.warnings),
        sources=[f"{e.segment.name}^{e.segment.occurrence}" if e.segment is not None else None for e in run.entries],
    )
