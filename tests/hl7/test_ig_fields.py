"""Field-level tests generated from the HL7 v2-to-FHIR IG segment tables.

For every row of the PID, PV1, NK1 (Patient and RelatedPerson), IN1, SCH, AIS,
AIL and AIP tables that names a FHIR target we implement, a base message gets
a value in that field and the FHIR element the row names is checked:

* a row with an Assignment (a quoted constant) must find that constant at the path;
* any other row must find the path filled, and not filled the same way without the field.

Rows we do not implement are listed with the reason in ``SKIP`` (printed by
``test_ig_row_coverage_report``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hub.hl7.convert import convert
from hub.hl7.igcsv import SegmentRow, read_segment_csv
from hub.hl7.mapping import MappingSet

DATA = Path(__file__).resolve().parents[1] / "data" / "v2-to-fhir" / "ig" / "segments"

TABLES = {
    "PID[Patient]": ("PID", "Patient", "ADT"),
    "PV1[Encounter]": ("PV1", "Encounter", "ADT"),
    "NK1[Patient]": ("NK1", "Patient", "ADT"),
    "NK1[RelatedPerson]": ("NK1", "RelatedPerson", "ADT"),
    "IN1[Coverage]": ("IN1", "Coverage", "ADT"),
    "SCH[Appointment]": ("SCH", "Appointment", "SIU"),
    "AIS[Appointment]": ("AIS", "Appointment", "SIU"),
    "AIL[Appointment]": ("AIL", "Appointment", "SIU"),
    "AIP[Appointment]": ("AIP", "Appointment", "SIU"),
}

# Rows with a target that the mapping set does not implement, and why.
SKIP: dict[str, str] = {
    "PID-21": "CX[RelatedPerson-Mother]: mother's identifier as a RelatedPerson is not mapped",
    "PID-27": "extension??-veteranMilitaryStatus: the IG names no defined extension",
    "PID-31": "extension??-identityUnknown: the IG names no defined extension",
    "PV1-37": "discharge-to Location (DLD[Location-Discharge]) not mapped",
    "PV1-40": "bed status goes onto a Location instance (operationalStatus): Locations are master data here (conditional create)",
    "PV1-53": "EpisodeOfCare not produced",
    "PV1-54": "EpisodeOfCare not produced",
    "NK1-30@Patient": "contact.organization contact person: Organizations are conditional-create master data, not edited from NK1",
    "NK1-31@Patient": "contact.organization contact person: Organizations are conditional-create master data, not edited from NK1",
    "NK1-32@Patient": "contact.organization contact person: Organizations are conditional-create master data, not edited from NK1",
    "IN1-5": "payor address: the payor Organization is master data; IN1-5 only fills it when it is created (checked in test_convert)",
    "IN1-10": "insured's group employer id (policyHolder Organization identifier / SN subscriberId) not mapped",
    "IN1-16@RelatedPerson": "subscriber RelatedPerson not created from IN1-16 (display only)",
    "SCH-26": "basedOn ServiceRequest not produced",
    "SCH-27": "basedOn ServiceRequest not produced",
    "AIS-5": "start offset (AIS-5/6) not computed",
    "AIL-7": "start offset (AIL-7/8) not computed",
    "AIP-7": "start offset (AIP-7/8) not computed",
    "AIS-7": "AIS-7 duration sets Appointment.end (checked as part of appointment_end), the IG's participant.period.end has no AIS participant",
    "AIS-4": "AIS-4 sets Appointment.start (an AIS has no participant of its own)",
    "AIS-10": "Appointment.status comes from SCH-25 (AIS-10 is per service)",
    "PID-19@SB": "US realm chosen: SSN type SS (the IG's SB row is the non-US alternative)",
    "NK1-37@SB": "US realm chosen: SSN type SS (the IG's SB row is the non-US alternative)",
    "SCH-7@HL70277": "SCH-7 with HL70277 goes to appointmentType (checked by the HL70276 row's counterpart in test_convert)",
}

CODED = {  # valid codes for fields bound to a code map
    "PID-8": "F",
    "PID-16": "M",
    "PID-24": "Y",
    "PID-30": "Y",
    "PV1-2": "I",
    "PV1-4": "E",
    "PV1-13": "R",
    "PV1-10": "MED",
    "PV1-15": "A2",
    "NK1-3": "SPO^Spouse^HL70063",
    "NK1-7": "C^Emergency Contact^HL70131",
    "NK1-15": "F",
    "IN1-17": "SPO^Spouse^HL70063",
    "SCH-25": "Pending",
    "AIP-12": "Cancelled",
    "SCH-7": "CHECKUP^Checkup^HL70276",
    "SCH-8": "Normal^Routine^HL70277",
    "SCH-9": "20",
    "PID-25": "2",
}

BY_TYPE = {
    "CX": "ID{n}^^^AUTH{n}^MR",
    "XPN": "FAM{n}^GIV{n}^MID^JR^DR^^L",
    "DTM": "20200102030405+0100",
    "TS": "20200102030405+0100",
    "DT": "20200102",
    "CWE": "C{n}^Text {n}^L",
    "CE": "C{n}^Text {n}^L",
    "CNE": "C{n}^Text {n}^L",
    "IS": "C{n}",
    "ID": "C{n}",
    "XAD": "{n} Main St^Apt 2^Town^ST^12345^USA^H",
    "XTN": "^^PH^^^555^12345{n}",
    "NM": "3",
    "ST": "TEXT{n}",
    "XCN": "P{n}^FAM^GIV",
    "PL": "POC{n}^RM^BED^FAC",
    "EI": "E{n}^NS",
    "DLN": "DL{n}^US^20300101",
    "XON": "ORG {n}^^O{n}",
    "HD": "NS{n}^1.2.3^ISO",
    "TQ": "^^^20200102030405+0100^20200102040405+0100",
}

BASE = {
    "ADT": [
        "MSH|^~\\&|APP|FAC|RAPP|RFAC|20200101000000+0000||ADT^A01^ADT_A01|CTRL1|P|2.5.1",
        "EVN|A01|20200101000000+0000",
        "PID|1||BASE1^^^HOSP^MR||BASEFAM^BASEGIV",
        "NK1|1|NKFAM^NKGIV|SPO^Spouse^HL70063",
        "PV1|1|O|||||||||||||||||V1^^^HOSP^VN",
        "IN1|1|PLAN1|INS1^^^PAYERS|Payer Inc|||||||||||||||||||||||||||||||POL1",
    ],
    "SIU": [
        "MSH|^~\\&|APP|FAC|RAPP|RFAC|20200101000000+0000||SIU^S12^SIU_S12|CTRL2|P|2.5.1",
        "SCH|PL1^NS|FI1^NS||||||||||||||||||||||Booked",
        "TQ1|||||||20200301100000+0000|20200301103000+0000",
        "PID|1||BASE1^^^HOSP^MR||BASEFAM^BASEGIV",
        "RGS|1",
        "AIS|1||SVC^Service^L",
        "AIL|1||LOC^R1^B1^FAC",
        "AIP|1||DOC1^DOCFAM^DOCGIV|ATND^attender^HL70443",
    ],
}

EXTRA: dict[tuple[str, str], dict[str, str]] = {
    # conditions of a row satisfied by other fields
    ("PV1-3", 'IF PV1-2.1 EQUALS "P"'): {"PV1-2": "P"},
    ("PID-12", "IF PID-11 IS NOT VALUED"): {"PID-11": ""},
    ("PID-12", "IF PID-11 LST.COUNT EQUALS 1 AND PID-11.9 IS NOT VALUED"): {"PID-11": "1 Main^^Town"},
    ("PID-12", "IF PID-11 LST.COUNT EQUALS 1 AND PID-11.9 IS VALUED NOT EQUAL PID-12"): {
        "PID-11": "1 Main^^Town^^^^^^CTY"
    },
    ("PID-12", "IF PID-11 LST.COUNT GREATER THAN 1"): {"PID-11": "1 Main^^Town~2 Side^^Town"},
    ("IN1-16", "IF IN1-17 IS 'patient'"): {"IN1-17": "SEL^Self^HL70063"},
    ("IN1-16", "IF IN1-17 IS NOT 'patient'"): {"IN1-17": "SPO^Spouse^HL70063"},
    ("SCH-9", ""): {"SCH-10": "min"},
    ("AIL-9", "IF AIL-6 IS VALUED"): {"AIL-6": "20200301100000+0000"},
    ("AIP-9", "IF AIP-6 IS VALUED"): {"AIP-6": "20200301100000+0000"},
    ("SCH-11", ""): {"TQ1-7": ""},
}


def _value(row: SegmentRow) -> str:
    if row.field in CODED:
        return CODED[row.field]
    if row.field == "PID-7" and "LENGTH" in row.condition:
        return "20200102030405+0100"
    if row.field == "PV1-45":
        return "20200103030405+0100"
    return BY_TYPE.get(row.datatype, "X{n}").format(n=row.number)


def _set(lines: list[str], ref: str, value: str) -> list[str]:
    seg, num = ref.split("-")
    n = int(num)
    out = []
    done = False
    for ln in lines:
        if ln.startswith(seg + "|") and not done:
            parts = ln.split("|")
            idx = n + 1 if seg == "MSH" else n
            while len(parts) <= idx:
                parts.append("")
            parts[idx] = value
            ln = "|".join(parts)
            done = True
        out.append(ln)
    return out


def _message(kind: str, row: SegmentRow | None, value: str | None) -> str:
    lines = list(BASE[kind])
    if row is not None:
        for ref, v in EXTRA.get((row.field, row.condition), {}).items():
            lines = _set(lines, ref, v)
        if row.field in ("SCH-9",):
            lines = _set(lines, "SCH-10", "min")
        if value is not None:
            lines = _set(lines, row.field, value)
    return "\r".join(lines) + "\r"


def _norm_path(target: str) -> tuple[str, str | None, str | None]:
    """IG target -> (path on the main resource, referenced type, attribute of the referenced resource)."""
    t = target.strip()
    t = t.replace("payer[1]", "payor[1]").replace(
        "policyHolder([1]Organization.identifier)", "policyHolder(Organization.identifier)"
    )
    m = re.match(r"^(.*?)\(([A-Za-z]+)(?:\.([A-Za-z.]+))?\)$", t)
    ref_type = attr = None
    if m:
        t, ref_type, attr = m.group(1), m.group(2), m.group(3)
    t = re.sub(r"\[[0-9-]+\]", "", t)
    t = t.split("=")[0].strip()
    t = t.replace("birthDate.extension", "_birthDate.extension")
    return t.strip("."), ref_type, attr


def _values(obj: Any, path: str) -> list[Any]:
    items = [obj]
    for part in [p for p in path.split(".") if p]:
        nxt: list[Any] = []
        for it in items:
            if isinstance(it, dict) and part in it:
                v = it[part]
                nxt.extend(v if isinstance(v, list) else [v])
        items = nxt
    return items


def _leaves(v: Any) -> list[str]:
    if isinstance(v, dict):
        return [x for val in v.values() for x in _leaves(val)]
    if isinstance(v, list):
        return [x for val in v for x in _leaves(val)]
    return [str(v)]


def _rows() -> list[tuple[str, SegmentRow]]:
    out = []
    for table in TABLES:
        path = next(p for p in sorted(DATA.iterdir()) if f"_ {table} - " in p.name)
        for row in read_segment_csv(path):
            if row.target:
                out.append((table, row))
    return out


ROWS = _rows()


def _skip_reason(table: str, row: SegmentRow) -> str | None:
    rtype = TABLES[table][1]
    for key in (f"{row.field}@{rtype}", row.field):
        if key in SKIP:
            return SKIP[key]
    if row.field in ("PID-19", "NK1-37") and row.assignment.strip('"') == "SB":
        return SKIP[f"{row.field}@SB"]
    if row.field == "SCH-7" and "HL70277" in row.condition:
        return SKIP["SCH-7@HL70277"]
    if row.field == "IN1-16" and "NOT" in row.condition:
        return SKIP["IN1-16@RelatedPerson"]
    return None


def _resource(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    res = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]
    assert res, f"no {rtype} in bundle"
    return res[0]


def _follow(bundle: dict[str, Any], refs: list[Any], rtype: str) -> list[dict[str, Any]]:
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    out = []
    for r in refs:
        if isinstance(r, dict) and r.get("reference") in by_url:
            target = by_url[r["reference"]]
            if target["resourceType"] == rtype:
                out.append(target)
    return out


def check_row(ms: MappingSet, table: str, row: SegmentRow) -> None:
    seg, rtype, kind = TABLES[table]
    value = _value(row)
    if (row.field, row.condition) in EXTRA and row.field == "SCH-11":
        value = BY_TYPE["TQ"]
        lines = _set(list(BASE[kind]), "TQ1-7", "")
        lines = _set(lines, "TQ1-8", "")
        lines = _set(lines, "SCH-11", value)
        msg = "\r".join(lines) + "\r"
        base_msg = "\r".join(_set(_set(list(BASE[kind]), "TQ1-7", ""), "TQ1-8", "")) + "\r"
    else:
        msg = _message(kind, row, value)
        base_msg = _message(kind, row, "")
    bundle = convert(msg, ms).bundle
    try:
        base_bundle: dict[str, Any] | None = convert(base_msg, ms).bundle
    except Exception:
        base_bundle = None
    main = _resource(bundle, rtype)
    if row.target == "$this" and row.datatype_map == "TQ[Appointment]":
        assert (
            main.get("start") == "2020-01-02T03:04:05+01:00"
            and main.get("end") == "2020-01-02T04:04:05+01:00"
        )
        return
    if table == "NK1[Patient]":
        main = main["contact"][0]
        path, ref_type, attr = _norm_path(row.target.replace("contact.", "", 1))
    else:
        path, ref_type, attr = _norm_path(row.target)
    found = _values(main, path)
    assert found, f"{row.field} -> {row.target}: nothing at {path}"
    if ref_type:
        targets = _follow(bundle, found, ref_type)
        assert targets, f"{row.field} -> {row.target}: no {ref_type} referenced at {path}"
        if attr:
            assert any(_values(t, attr) for t in targets), f"{row.field}: referenced {ref_type} has no {attr}"
        return
    assignment = row.assignment.strip().strip('"').strip("#").strip().rstrip(".")
    if assignment.startswith("http") and "valueset" in assignment.lower():
        assignment = ""  # a binding named in the Assignment column, not a fixed value
    if assignment and not assignment.startswith("/") and " " not in assignment.strip():
        leaves = _leaves(found)
        assert assignment.strip() in [x.strip() for x in leaves], (
            f"{row.field} -> {row.target}: {assignment!r} not in {leaves}"
        )
        return
    if assignment and assignment in ("placer contact", "filler contact"):
        assert assignment in _leaves(found)
        return
    if base_bundle is not None:
        base_main = _resource(base_bundle, rtype)
        if table == "NK1[Patient]":
            base_main = base_main.get("contact", [{}])[0]
        assert _values(base_main, path) != found, f"{row.field} -> {row.target}: same value without the field"


IMPLEMENTED = [(t, r) for t, r in ROWS if _skip_reason(t, r) is None]


@pytest.mark.parametrize(("table", "row"), IMPLEMENTED, ids=[f"{t}:{r.field}:{r.line}" for t, r in IMPLEMENTED])
def test_ig_row(ms: MappingSet, table: str, row: SegmentRow) -> None:
    """Rows the mappings do not implement are not run; the coverage report below lists them with reasons."""
    check_row(ms, table, row)


def test_ig_row_coverage_report(ms: MappingSet, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints covered vs skipped rows; requires >= 85% of the rows with a target."""
    covered = skipped = 0
    reasons: dict[str, int] = {}
    for table, row in ROWS:
        r = _skip_reason(table, row)
        if r is None:
            covered += 1
        else:
            skipped += 1
            reasons[f"{row.field}: {r}"] = reasons.get(f"{row.field}: {r}", 0) + 1
    total = covered + skipped
    with capsys.disabled():
        print(
            f"\nIG rows with a FHIR target: {total}; covered {covered}, skipped {skipped} ({covered / total:.0%} covered)"
        )
        for k, v in sorted(reasons.items()):
            print(f"  skipped x{v} {k}")
    assert covered / total >= 0.85
