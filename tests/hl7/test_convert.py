"""convert(): Bundle shape, conditional requests, determinism, events, errors, FHIR validity."""

from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from hub.errors import CATEGORIES, Category
from hub.hl7.convert import convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import split_messages

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
NG = DATA / "nextgen-connect"


def _res(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _entry(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def test_transaction_with_conditional_update_and_create(ms: MappingSet) -> None:
    r = convert((NG / "nonbatch_01.hl7").read_bytes(), ms)
    b = r.bundle
    assert b["resourceType"] == "Bundle" and b["type"] == "transaction"
    pat = _entry(b, "Patient")
    assert pat["request"] == {"method": "PUT", "url": "Patient?identifier=urn:fhirhub:id:SENDING_FACILITY|42"}
    assert pat["fullUrl"].startswith("urn:uuid:") and "id" not in pat["resource"]
    prac = _entry(b, "Practitioner")
    assert prac["request"]["method"] == "POST" and prac["request"]["ifNoneExist"].startswith("identifier=")
    appt = _entry(b, "Appointment")
    assert appt["request"]["url"].startswith("Appointment?identifier=")
    assert appt["resource"]["participant"][0]["actor"]["reference"] == pat["fullUrl"]
    full_urls = {e["fullUrl"] for e in b["entry"]}
    refs = [v for e in b["entry"] for v in _refs(e["resource"])]
    assert all(ref in full_urls for ref in refs if ref.startswith("urn:uuid:"))
    assert r.event == "SIU^S12" and r.control_id == "24916560"
    assert r.sender == {"application": "SENDING_APPLICATION", "facility": "SENDING_FACILITY"}
    assert r.patient_key == "urn:fhirhub:id:SENDING_FACILITY|42"
    assert r.mapping == "messages/SIU_S12.yaml"


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        out = [obj["reference"]] if isinstance(obj.get("reference"), str) else []
        return out + [x for v in obj.values() for x in _refs(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _refs(v)]
    return []


def test_output_is_deterministic(ms: MappingSet) -> None:
    raw = (DATA / "microsoft-fhir-converter" / "ADT-A01-01.hl7").read_bytes()
    a, b = convert(raw, ms).bundle, convert(raw, ms).bundle
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_sender_systems_map_assigning_authorities(ms: MappingSet) -> None:
    raw = (NG / "nonbatch_04.hl7").read_bytes()
    r = convert(raw, ms, sender_systems={"SENDING_FACILITY": "https://clinic.example/mrn"})
    assert (
        _entry(r.bundle, "Patient")["request"]["url"]
        == "Patient?identifier=https://clinic.example/mrn|135769"
    )
    assert r.patient_key == "https://clinic.example/mrn|135769"


def test_oid_authority_becomes_urn_oid(ms: MappingSet) -> None:
    raw = (DATA / "microsoft-fhir-converter" / "SIU-S12-01.hl7").read_bytes()
    ids = _res(convert(raw, ms).bundle, "Patient")[0]["identifier"]
    assert {"value": "PATID1234", "system": "urn:fhirhub:id:test1"}.items() <= ids[1].items()


def test_timezone_for_times_without_offset(ms: MappingSet) -> None:
    raw = (NG / "nonbatch_01.hl7").read_bytes()
    utc = _res(convert(raw, ms).bundle, "Appointment")[0]
    berlin = _res(convert(raw, ms, timezone="Europe/Berlin").bundle, "Appointment")[0]
    assert utc["start"] == "2011-06-17T08:45:00Z" and utc["end"] == "2011-06-17T09:30:00Z"
    assert berlin["start"] == "2011-06-17T08:45:00+02:00"


@pytest.mark.parametrize(
    ("file", "status", "participant"),
    [
        ("nonbatch_01.hl7", "booked", "accepted"),
        ("nonbatch_02.hl7", "booked", "accepted"),
        ("nonbatch_03.hl7", "cancelled", "declined"),
    ],
)
def test_siu_stream_statuses(ms: MappingSet, file: str, status: str, participant: str) -> None:
    appt = _res(convert((NG / file).read_bytes(), ms).bundle, "Appointment")[0]
    assert appt["status"] == status
    assert appt["participant"][-1]["status"] == participant


def test_siu_events_force_status(ms: MappingSet) -> None:
    base = (NG / "nonbatch_01.hl7").read_text()
    for event, status in (
        ("S15", "cancelled"),
        ("S17", "entered-in-error"),
        ("S26", "noshow"),
        ("S13", "booked"),
        ("S14", "booked"),
    ):
        raw = base.replace("SIU^S12", f"SIU^{event}")
        appt = _res(convert(raw, ms).bundle, "Appointment")[0]
        assert appt["status"] == status, event
    # the same appointment identity across the stream: reschedule/cancel update one resource
    urls = {
        _entry(convert(base.replace("SIU^S12", f"SIU^{e}"), ms).bundle, "Appointment")["request"]["url"]
        for e in ("S12", "S13", "S15")
    }
    assert len(urls) == 1


def test_appointment_without_times_or_status_is_ae(ms: MappingSet) -> None:
    raw = "MSH|^~\\&|A|F|||20200101||SIU^S12|1|P|2.5\rSCH|P1|F1\rPID|1||1^^^H^MR\r"
    r = convert(raw, ms)  # S12 default booked, no time: app-3 allows none only for proposed/cancelled
    appt = _res(r.bundle, "Appointment")[0]
    assert appt["status"] == "booked"
    raw2 = "MSH|^~\\&|A|F|||20200101||SIU^S12|1|P|2.5\rSCH\rPID|1||1^^^H^MR\r"
    with pytest.raises(Hl7Error) as info:
        convert(raw2, ms)
    assert info.value.location == "SCH^1^2" and info.value.ack_code == "AE"


def test_merge_links_both_patients(ms: MappingSet) -> None:
    b = convert((NG / "nonbatch_nested_07.hl7").read_bytes(), ms).bundle
    survivor, old = _res(b, "Patient")
    urls = {e["resource"]["identifier"][0]["value"]: e["fullUrl"] for e in b["entry"]}
    assert survivor["link"] == [{"other": {"reference": urls["1765475"]}, "type": "replaces"}]
    assert old["active"] is False and old["link"] == [
        {"other": {"reference": urls["1765431"]}, "type": "replaced-by"}
    ]


def test_two_merges_in_one_message(ms: MappingSet) -> None:
    raw = (
        DATA / "linuxforhealth-converter" / "HL7MergeFHIRConversionTest.validateTwoMRGs.hl7message.hl7"
    ).read_bytes()
    pats = _res(convert(raw, ms).bundle, "Patient")
    assert len(pats) == 4 and sum(1 for p in pats if p.get("active") is False) == 2


def test_encounter_status_by_event(ms: MappingSet) -> None:
    base = (DATA / "microsoft-fhir-converter" / "ADT-A01-02.hl7").read_text()
    enc = {
        ev: _res(convert(base.replace("ADT^A01", f"ADT^{ev}", 1), ms).bundle, "Encounter")[0]
        for ev in ("A01", "A03", "A11")
    }
    assert enc["A03"]["status"] == "finished" and enc["A11"]["status"] == "cancelled"
    assert enc["A01"]["status"] in ("in-progress", "planned", "finished")


def test_dft_claim_with_items_and_charge_items(ms: MappingSet) -> None:
    b = convert((DATA / "microsoft-fhir-converter" / "DFT-P03-01.hl7").read_bytes(), ms).bundle
    claim = _res(b, "Claim")[0]
    assert claim["status"] == "active" and claim["use"] == "claim"
    assert [i["productOrService"]["coding"][0]["code"] for i in claim["item"]] == ["71045", "626.2"]
    assert claim["insurance"][0]["focal"] is True and claim["insurance"][0]["coverage"][
        "reference"
    ].startswith("urn:uuid:")
    assert claim["total"] == {"value": 220, "currency": "USD"}
    assert len(_res(b, "ChargeItem")) == 2


def test_dft_without_insurance_is_ae(ms: MappingSet) -> None:
    raw = "\r".join(
        line
        for line in (DATA / "microsoft-fhir-converter" / "DFT-P03-01.hl7")
        .read_text()
        .replace("\n", "\r")
        .split("\r")
        if not line.startswith(("IN1", "IN2"))
    )
    with pytest.raises(Hl7Error) as info:
        convert(raw, ms)
    err = info.value
    assert err.code == "HL7-MAP-REQUIRED" and err.location == "IN1^1" and err.hl7_code == "101"
    assert CATEGORIES[err.category].ack_code == "AE"


def test_unsupported_type_is_ar(ms: MappingSet) -> None:
    with pytest.raises(Hl7Error) as info:
        convert((DATA / "microsoft-fhir-converter" / "ORU-R01-01.hl7").read_bytes(), ms)
    assert info.value.category is Category.NOT_SUPPORTED and info.value.ack_code == "AR"
    assert info.value.hl7_code == "200"
    with pytest.raises(Hl7Error) as info2:
        convert((DATA / "microsoft-fhir-converter" / "ADT-A02-01.hl7").read_bytes(), ms)
    assert info2.value.hl7_code == "201"  # known type, unsupported event


def test_errors_carry_no_patient_values(ms: MappingSet) -> None:
    raw = "MSH|^~\\&|A|F|||20200101||ADT^A01|1|P|2.5\rPID|1||SECRET123^^^H^MR||DOE^JOHN||19991399\r"
    with pytest.raises(Hl7Error) as info:
        convert(raw, ms)
    text = str(info.value) + json.dumps(info.value.outcome())
    assert "SECRET" not in text and "DOE" not in text and "19991399" not in text
    assert info.value.location == "PID^1^7" and info.value.hl7_code == "102"


def test_patient_without_identifier_is_ae(ms: MappingSet) -> None:
    with pytest.raises(Hl7Error) as info:
        convert("MSH|^~\\&|A|F|||20200101||ADT^A01|1|P|2.5\rPID|1||||DOE^JOHN\r", ms)
    assert info.value.location == "PID^1^3" and info.value.hl7_code == "101"


def _validator(rtype: str) -> Any:
    module = importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}")
    return getattr(module, rtype)


def _all_bundles(ms: MappingSet) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DATA.rglob("*")):
        if path.suffix not in (".hl7", ".txt"):
            continue
        try:
            messages = split_messages(path.read_bytes())
        except Hl7Error:
            continue
        for i, m in enumerate(messages):
            with contextlib.suppress(Hl7Error):
                out.append((f"{path.name}#{i}", convert(m, ms).bundle))
    return out


def test_every_produced_resource_is_valid_fhir(ms: MappingSet) -> None:
    """Validated with fhir.resources' R4B models (identical to R4 4.0.1 for these resource types)."""
    checked = 0
    for name, bundle in _all_bundles(ms):
        for e in bundle["entry"]:
            res = e["resource"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    _validator(res["resourceType"]).model_validate(res)
                except Exception as exc:  # pydantic ValidationError
                    pytest.fail(f"{name}: {res['resourceType']} invalid: {str(exc)[:500]}")
            checked += 1
            if res["resourceType"] == "Appointment":
                assert ("start" in res) == ("end" in res), name  # app-2
                assert "start" in res or res["status"] in ("proposed", "cancelled", "waitlist"), name  # app-3
                assert all(p.get("actor") or p.get("type") for p in res["participant"]), name  # app-1
            if res["resourceType"] == "Encounter":
                assert res.get("status") and res.get("class"), name
    assert checked > 1000
