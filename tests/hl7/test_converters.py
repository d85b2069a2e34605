"""Message-level comparison with two established converters.

* Microsoft FHIR-Converter: expected bundles of its functional tests
  (tests/data/v2-to-fhir/microsoft-fhir-converter-expected/manifest.json);
* LinuxForHealth hl7v2-fhir-converter: resource counts its JUnit tests assert
  (tests/data/hl7v2/linuxforhealth-converter/manifest.json).

Scored on resource counts of the types both sides model the same way
(Patient, Encounter, Appointment, Coverage, ChargeItem; RelatedPerson and
Condition for LinuxForHealth) and on key values (patient identifiers,
family name, birth date, gender, appointment start/end/status, encounter
class).  Types that the converters model differently are not counted:
Microsoft makes a Location per PL component and an Organization per HD,
Provenance/MessageHeader per message, a Linkage for A40 (counted here as the
two Patients it links); RelatedPerson/Condition also come from GT1, IN1-16,
PV2 and PDA there.  LinuxForHealth makes one payor Organization per IN1
where fhirhub conditionally creates one per insurer identity, so
Organization is not counted either.  The score is printed; the bar is 90%.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.hl7.convert import convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import parse

DATA = Path(__file__).resolve().parents[1] / "data"
MS_DIR = DATA / "v2-to-fhir" / "microsoft-fhir-converter-expected"
LFH_DIR = DATA / "hl7v2" / "linuxforhealth-converter"

MS_TYPES = ("Patient", "Encounter", "Appointment", "Coverage", "ChargeItem")
LFH_TYPES = ("Patient", "Encounter", "Coverage", "RelatedPerson", "Condition")
SUPPORTED = {
    "ADT^A01",
    "ADT^A03",
    "ADT^A04",
    "ADT^A08",
    "ADT^A11",
    "ADT^A28",
    "ADT^A31",
    "ADT^A40",
    "DFT^P03",
} | {f"SIU^{e}" for e in ("S12", "S13", "S14", "S15", "S17", "S26")}


def _counts(bundle: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in bundle.get("entry", []):
        t = e["resource"]["resourceType"]
        out[t] = out.get(t, 0) + 1
    return out


def _instant(v: str | None) -> str | None:
    if not v:
        return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return v
    if dt.tzinfo is None:
        return v
    return dt.astimezone(UTC).isoformat()


def _first(bundle: dict[str, Any], rtype: str) -> dict[str, Any] | None:
    return next(
        (e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == rtype), None
    )


class Score:
    def __init__(self) -> None:
        self.ok = 0
        self.total = 0
        self.misses: list[str] = []

    def check(self, cond: bool, what: str) -> None:
        self.total += 1
        if cond:
            self.ok += 1
        else:
            self.misses.append(what)

    @property
    def ratio(self) -> float:
        return self.ok / self.total if self.total else 1.0


def score_microsoft(ms: MappingSet) -> Score:
    manifest = json.loads((MS_DIR / "manifest.json").read_text())
    sc = Score()
    for pair in manifest["pairs"]:
        name = Path(pair["input"]).name
        raw = (DATA / pair["input"]).read_bytes()
        expected = json.loads((DATA / pair["expected"]).read_text())
        want = dict(pair["expected_resource_counts"])
        linkage = _first(expected, "Linkage")
        if linkage is not None:  # A40: Microsoft links two patients with a Linkage
            want["Patient"] = len(linkage["item"])
        try:
            bundle = convert(raw, ms).bundle
        except Hl7Error as exc:
            sc.check(False, f"{name}: {exc.code}")
            continue
        got = _counts(bundle)
        for t in MS_TYPES:
            if want.get(t) or got.get(t):
                sc.check(want.get(t, 0) == got.get(t, 0), f"{name}: {t} {got.get(t, 0)} != {want.get(t, 0)}")
        # key values
        exp_p = _first(expected, "Patient")
        our_p = _first(bundle, "Patient")
        if exp_p is not None and our_p is not None:
            # PID-2/3/4 identifiers (Microsoft also adds ids from GT1, DB1, IN2: out of scope)
            pid = parse(raw).first("PID")
            pid_ids = {rep[0][0] for n in (2, 3, 4) for rep in (pid.field(n) if pid else ())}
            exp_ids = {i.get("value") for i in exp_p.get("identifier", [])} & pid_ids
            our_ids = {i.get("value") for i in our_p.get("identifier", [])}
            for v in sorted(x for x in exp_ids if x):
                sc.check(v in our_ids, f"{name}: patient identifier missing")
            exp_fam = [n.get("family") for n in exp_p.get("name", []) if n.get("family")]
            our_fam = [n.get("family") for n in our_p.get("name", []) if n.get("family")]
            if exp_fam:
                sc.check(exp_fam[0] in our_fam, f"{name}: family name")
            for k in ("birthDate", "gender"):
                if k in exp_p:
                    sc.check(exp_p[k] == our_p.get(k), f"{name}: {k}")
        if linkage is not None:
            our_ids = {i.get("value") for e in bundle["entry"] for i in e["resource"].get("identifier", [])}
            for item in linkage["item"]:
                sc.check(item["resource"]["identifier"]["value"] in our_ids, f"{name}: merged patient id")
            old = [e["resource"] for e in bundle["entry"] if e["resource"].get("active") is False]
            sc.check(bool(old) and old[0]["link"][0]["type"] == "replaced-by", f"{name}: replaced-by link")
        exp_a = _first(expected, "Appointment")
        our_a = _first(bundle, "Appointment")
        if exp_a is not None and our_a is not None:
            for k in ("start", "end"):
                if k in exp_a:
                    sc.check(_instant(exp_a[k]) == _instant(our_a.get(k)), f"{name}: appointment {k}")
            sc.check(exp_a.get("status") == our_a.get("status"), f"{name}: appointment status")
            exp_ids = {i.get("value") for i in exp_a.get("identifier", [])}
            sc.check(
                exp_ids <= {i.get("value") for i in our_a.get("identifier", [])}, f"{name}: appointment ids"
            )
        exp_e = _first(expected, "Encounter")
        our_e = _first(bundle, "Encounter")
        if exp_e is not None and our_e is not None:
            sc.check(
                exp_e.get("class", {}).get("code") == our_e.get("class", {}).get("code"),
                f"{name}: encounter class",
            )
        for exp_c in [
            e["resource"] for e in expected["entry"] if e["resource"]["resourceType"] == "ChargeItem"
        ]:
            code = exp_c["code"]["coding"][0]["code"]
            ours = [
                c["code"]["coding"][0]["code"]
                for c in (e["resource"] for e in bundle["entry"])
                if c["resourceType"] == "ChargeItem"
            ]
            sc.check(code in ours, f"{name}: charge code")
    return sc


def score_linuxforhealth(ms: MappingSet) -> Score:
    manifest = json.loads((LFH_DIR / "manifest.json").read_text())
    sc = Score()
    for m in manifest["messages"]:
        event = "^".join(m["message_type"].split("^")[:2])
        counts = m.get("asserted_resource_counts")
        if event not in SUPPORTED or not counts:
            continue
        raw = (LFH_DIR / m["file"]).read_bytes()
        try:
            bundle = convert(raw, ms).bundle
        except Hl7Error as exc:
            sc.check(False, f"{m['file']}: {exc.code}")
            continue
        got = _counts(bundle)
        for t, n in counts.items():
            if t in LFH_TYPES:
                sc.check(got.get(t, 0) == n, f"{m['test_method']}: {t} {got.get(t, 0)} != {n}")
    return sc


def test_microsoft_converter_score(ms: MappingSet, capsys: pytest.CaptureFixture[str]) -> None:
    sc = score_microsoft(ms)
    with capsys.disabled():
        print(f"\nMicrosoft FHIR-Converter: {sc.ok}/{sc.total} checks ({sc.ratio:.1%})")
        for miss in sc.misses:
            print(f"  miss: {miss}")
    assert sc.ratio >= 0.90


def test_linuxforhealth_score(ms: MappingSet, capsys: pytest.CaptureFixture[str]) -> None:
    sc = score_linuxforhealth(ms)
    with capsys.disabled():
        print(f"\nLinuxForHealth: {sc.ok}/{sc.total} checks ({sc.ratio:.1%})")
        for miss in sc.misses:
            print(f"  miss: {miss}")
    assert sc.ratio >= 0.90
