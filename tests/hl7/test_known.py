"""Known resources: remembered conditional look-ups make smaller transactions, and every change made
elsewhere meanwhile falls back to the conditional entries (same result as without the memory)."""

from __future__ import annotations

from typing import Any

import orjson

from hub.app import Hub
from hub.hl7.known import Known
from hub.hl7.pipeline import MappingCache, Pipeline
from hub.interactions.request import FhirRequest
from tests.hl7.support import listener, read, search, siu, uid


def pipeline(hub: Hub) -> tuple[Pipeline, Known]:
    known = Known(hub.ctx.db)
    return Pipeline(hub.router, listener(), MappingCache(), "http://hub.test/fhir", known=known), known


def rest(hub: Hub, method: str, path: str, body: Any = None) -> dict[str, Any]:
    resp = hub.router.dispatch(FhirRequest(method, path, body=body))
    assert resp.status < 300, resp.body
    return dict(orjson.loads(resp.body)) if resp.body else {}


def appointment(hub: Hub, appt: str) -> dict[str, Any]:
    [a] = search(hub, "Appointment", identifier=f"urn:fhirhub:id:PMS|{appt}")
    return a


def actor(a: dict[str, Any], res_type: str) -> str:
    return next(p["actor"]["reference"] for p in a["participant"] if p["actor"].get("reference", "").startswith(res_type))


def test_remembered_resources_shorten_the_transaction_and_keep_the_result(hub: Hub) -> None:
    p, known = pipeline(hub)
    mrn, a1, a2 = uid(), uid(), uid()
    assert p.process(1, siu(uid(), a1, mrn).encode()).ack_code == "AA"
    shortcut = known.shorten(orjson.dumps(p.prepare(2, siu(uid(), a2, mrn).encode()).conversion.bundle))  # type: ignore[union-attr]
    kinds = [(e["request"]["method"], e["request"]["url"].split("?")[0].split("/")[0]) for e in shortcut.bundle["entry"]]
    assert ("POST", "Practitioner") not in kinds and ("POST", "Location") not in kinds  # left out: known
    assert ("PUT", "Patient") in kinds and ("PUT", "Appointment") in kinds  # the subject: conditional, as converted
    result = p.process(2, siu(uid(), a2, mrn).encode())
    assert result.ack_code == "AA"
    first, second = appointment(hub, a1), appointment(hub, a2)
    for t in ("Patient", "Practitioner", "Location"):
        assert actor(first, t) == actor(second, t)  # the same resources as the conditional entries found
        assert read(hub, actor(second, t)) is not None
    assert known.hits >= 2


def test_a_resource_changed_elsewhere_falls_back_to_the_conditional_entries(hub: Hub) -> None:
    p, known = pipeline(hub)
    mrn, a1, a2, a3 = uid(), uid(), uid(), uid()
    assert p.process(1, siu(uid(), a1, mrn).encode()).ack_code == "AA"
    # someone edits the practitioner over REST: the remembered version is stale, the conditional create goes in
    doc = read(hub, actor(appointment(hub, a1), "Practitioner"))
    assert doc is not None
    rest(hub, "PUT", f"Practitioner/{doc['id']}", {**doc, "gender": "unknown"})
    hits = known.hits
    assert p.process(2, siu(uid(), a2, mrn).encode()).ack_code == "AA"
    assert actor(appointment(hub, a2), "Practitioner") == f"Practitioner/{doc['id']}"  # the same one, found again
    assert known.hits == hits + 1  # only the room was left out
    # the room is deleted over REST: the next message creates it again (as its conditional create would)
    room = actor(appointment(hub, a2), "Location")
    rest(hub, "DELETE", room)
    assert p.process(3, siu(uid(), a3, mrn).encode()).ack_code == "AA"
    again = actor(appointment(hub, a3), "Location")
    assert again != room and read(hub, again) is not None


def test_errors_are_located_in_the_converted_message(hub: Hub) -> None:
    p, _ = pipeline(hub)
    mrn, a1, a2 = uid(), uid(), uid()
    assert p.process(1, siu(uid(), a1, mrn).encode()).ack_code == "AA"
    for _ in range(2):  # two Appointments with the identifier the next message names: its conditional update fails
        rest(hub, "POST", "Appointment", {"resourceType": "Appointment", "status": "booked", "start": "2026-02-10T10:00:00Z", "end": "2026-02-10T10:30:00Z", "participant": [
            {"actor": {"display": "x"}, "status": "accepted"}], "identifier": [{"system": "urn:fhirhub:id:PMS", "value": a2}]})
    result = p.process(2, siu(uid(), a2, mrn).encode())
    assert (result.ack_code, result.outcome.error_code, result.outcome.error_location) == (
        "AE", "FHIRHUB-CONDITIONAL-MULTIPLE", "SCH^1")
