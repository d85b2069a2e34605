"""FHIR -> HL7v2 through the outbound mapping files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hub.hl7.convert import convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import MappingSet
from hub.hl7.outbound import to_v2
from hub.hl7.parse import parse

NG = Path(__file__).resolve().parents[1] / "data" / "hl7v2" / "nextgen-connect"


def _appointment(ms: MappingSet, file: str = "nonbatch_01.hl7") -> tuple[dict, dict]:
    b = convert((NG / file).read_bytes(), ms).bundle
    related = {e["fullUrl"]: e["resource"] for e in b["entry"]}
    appt = next(r for r in related.values() if r["resourceType"] == "Appointment")
    return appt, related


@pytest.mark.parametrize(
    ("status", "event"),
    [("booked", "S12"), ("cancelled", "S15"), ("noshow", "S26"), ("entered-in-error", "S17")],
)
def test_appointment_event_by_status(ms: MappingSet, status: str, event: str) -> None:
    appt, related = _appointment(ms)
    appt = {**appt, "status": status}
    out = to_v2(appt, "auto", related, ms, control_id="OUT1", timestamp="20240101120000+0000")
    msg = parse(out)
    assert msg.message_code == "SIU" and msg.trigger == event and msg.control_id == "OUT1"


def test_appointment_roundtrip(ms: MappingSet) -> None:
    appt, related = _appointment(ms)
    out = to_v2(appt, "S13", related, ms, control_id="OUT2", timestamp="20240101120000+0000")
    back = convert(out, ms, sender_systems={"SENDING_FACILITY": "urn:fhirhub:id:SENDING_FACILITY"}).bundle
    appt2 = next(e["resource"] for e in back["entry"] if e["resource"]["resourceType"] == "Appointment")
    for k in ("start", "end"):
        assert datetime.fromisoformat(appt2[k].replace("Z", "+00:00")) == datetime.fromisoformat(
            appt[k].replace("Z", "+00:00")
        )
    assert {i["value"] for i in appt2["identifier"]} == {i["value"] for i in appt["identifier"]}
    pid = parse(out).first("PID")
    assert pid is not None and pid.value(3) == "42" and pid.value(5, 1) == "BEEBLEBROX"
    sch = parse(out).first("SCH")
    assert sch is not None and sch.value(25) == "Booked"
    # hl7apy's schema accepts the structure
    m = parse_message(out, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    assert m.msh.msh_9.msh_9_2.value == "S13"


def test_patient_a08_and_a31(ms: MappingSet) -> None:
    b = convert((NG / "nonbatch_04.hl7").read_bytes(), ms).bundle
    pat = b["entry"][0]["resource"]
    for event in ("A08", "A31"):
        out = to_v2(pat, event, {}, ms, control_id="P1", timestamp="20240101")
        msg = parse(out)
        assert msg.trigger == event
        pid = msg.first("PID")
        assert (
            pid is not None
            and pid.value(5, 1) == "MOUSE"
            and pid.value(7) == "19281118"
            and pid.value(8) == "M"
        )
    back = convert(to_v2(pat, "A08", {}, ms, control_id="P2", timestamp="20240101"), ms).bundle
    assert back["entry"][0]["resource"]["name"] == pat["name"]


def test_unknown_event_or_type(ms: MappingSet) -> None:
    appt, related = _appointment(ms)
    with pytest.raises(Hl7Error):
        to_v2(appt, "S99", related, ms)
    with pytest.raises(Hl7Error):
        to_v2({"resourceType": "Observation"}, "R01", {}, ms)


def test_escaping_in_outbound(ms: MappingSet) -> None:
    pat = {"resourceType": "Patient", "identifier": [{"value": "1"}], "name": [{"family": "O|Brien^X"}]}
    out = to_v2(pat, "A08", {}, ms, control_id="E1", timestamp="20240101")
    pid = parse(out).first("PID")
    assert pid is not None and pid.value(5, 1) == "O|Brien^X"


def test_appointment_event_from_change() -> None:
    from hub.hl7.outbound import appointment_event

    base = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": "2024-01-01T10:00:00Z",
        "end": "2024-01-01T10:30:00Z",
    }
    assert appointment_event(None, base) == "S12"
    assert (
        appointment_event(base, {**base, "start": "2024-01-02T10:00:00Z", "end": "2024-01-02T10:30:00Z"})
        == "S13"
    )
    assert appointment_event(base, {**base, "comment": "bring x-rays"}) == "S14"
    assert appointment_event(base, {**base, "status": "cancelled"}) == "S15"
    assert appointment_event(base, {**base, "status": "noshow"}) == "S26"
    assert appointment_event(base, {**base, "status": "entered-in-error"}) == "S17"
