"""Build the demo clinic bundles in ``examples/demo-clinic/`` (run: ``python examples/build_demo_clinic.py``).

The JSON files are committed; this script is their source of truth and is deterministic, so
``tests/test_demo_data.py`` can check that the committed files equal its output. Every person,
organisation, phone number (555-01xx) and e-mail address (example.com/.org/.net) is fictional.

Each file is a FHIR R4 transaction Bundle. Entries are ``PUT <Type>/<fixed id>`` so that loading the
set twice changes nothing; ``fullUrl`` is a ``urn:uuid:`` (uuid5 of the fixed id) and references
between entries of the same bundle use it, references to resources of an earlier file use the
fixed ids (``Patient/demo-pat-1``). The clinic's "today" is Monday 2026-12-07: four visits in the
week before are fulfilled, one was a no-show, and the two weeks from 2026-12-07 hold the booked
appointments (one of them cancelled).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "demo-clinic"
UUID_NS = uuid.UUID("5b0f3f5e-6d1a-4c1e-9a57-0d3c1f2a9e11")
TZ = "-05:00"  # the clinic is in US Eastern time; December is standard time
TODAY = dt.date(2026, 12, 7)
SLOT_DAYS = [
    TODAY + dt.timedelta(days=d) for d in range(-6, 12) if (TODAY + dt.timedelta(days=d)).weekday() < 5
]

DEMO_TAG = {"system": "urn:fhirhub:demo", "code": "demo-clinic", "display": "fhirhub demo clinic data"}
MRN_SYSTEM = "urn:fhirhub:demo:mrn"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
BCP47 = "urn:ietf:bcp:47"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0276 = "http://terminology.hl7.org/CodeSystem/v2-0276"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SERVICE_TYPE = "http://terminology.hl7.org/CodeSystem/service-type"
SERVICE_CATEGORY = "http://terminology.hl7.org/CodeSystem/service-category"


# ---------------------------------------------------------------------------------------- helpers


def full_url(rtype: str, rid: str) -> str:
    return f"urn:uuid:{uuid.uuid5(UUID_NS, f'{rtype}/{rid}')}"


def ref(rtype: str, rid: str, display: str | None = None) -> dict[str, Any]:
    """A literal reference to a resource of an earlier file (or any file already loaded)."""
    out: dict[str, Any] = {"reference": f"{rtype}/{rid}"}
    if display:
        out["display"] = display
    return out


def local(rtype: str, rid: str, display: str | None = None) -> dict[str, Any]:
    """A reference to another entry of the same bundle, by its urn:uuid fullUrl."""
    out: dict[str, Any] = {"reference": full_url(rtype, rid)}
    if display:
        out["display"] = display
    return out


def cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def usd(value: float) -> dict[str, Any]:
    return {"value": value, "currency": "USD"}


def instant(day: dt.date, hhmm: str) -> str:
    return f"{day.isoformat()}T{hhmm[:2]}:{hhmm[2:]}:00{TZ}"


def add_minutes(hhmm: str, minutes: int) -> str:
    total = int(hhmm[:2]) * 60 + int(hhmm[2:]) + minutes
    return f"{total // 60:02d}{total % 60:02d}"


def npi(base9: str) -> str:
    """A 10-digit NPI with a valid Luhn check digit (prefix 80840), from 9 digits; all start 999."""
    digits = [int(c) for c in "80840" + base9]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return base9 + str((10 - total % 10) % 10)


def resource(rtype: str, rid: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "meta": {"tag": [DEMO_TAG]}, **body}


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for res in resources:
        rtype, rid = res["resourceType"], res["id"]
        entries.append(
            {
                "fullUrl": full_url(rtype, rid),
                "resource": res,
                "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# ------------------------------------------------------------------------------------ 01 clinic

CLINIC = "Maplebrook Family Practice"
CLINIC_ADDRESS = {
    "use": "work",
    "type": "physical",
    "line": ["100 Example Avenue", "Suite 2"],
    "city": "Maplebrook",
    "state": "VT",
    "postalCode": "05999",
    "country": "US",
}
RIVERSIDE_ADDRESS = {
    "use": "work",
    "type": "physical",
    "line": ["7 Sample River Road"],
    "city": "Maplebrook",
    "state": "VT",
    "postalCode": "05999",
    "country": "US",
}

LOCATIONS = {
    "demo-loc-main": ("Maplebrook Family Practice - Main Street Office", CLINIC_ADDRESS, "+18025550100"),
    "demo-loc-riverside": (
        "Maplebrook Family Practice - Riverside Office",
        RIVERSIDE_ADDRESS,
        "+18025550110",
    ),
}

# Each practitioner works at one location and offers 30-minute slots starting at the listed times.
MORNING = ["0900", "0930", "1000", "1030", "1100", "1130"]
AFTERNOON = ["1300", "1330", "1400", "1430", "1500", "1530", "1600"]
PRACTITIONERS = {
    "demo-prac-1": {
        "given": ["Quinn"],
        "family": "Placeholder",
        "prefix": ["Dr."],
        "suffix": ["MD"],
        "gender": "female",
        "degree": ("MD", "Doctor of Medicine"),
        "npi": npi("999000001"),
        "specialty": ("419772000", "Family practice"),
        "taxonomy": ("207Q00000X", "Family Medicine Physician"),
        "role": ("doctor", "Doctor"),
        "location": "demo-loc-main",
        "slots": MORNING + AFTERNOON,
    },
    "demo-prac-2": {
        "given": ["Morgan"],
        "family": "Mockwell",
        "prefix": ["Dr."],
        "suffix": ["MD"],
        "gender": "male",
        "degree": ("MD", "Doctor of Medicine"),
        "npi": npi("999000002"),
        "specialty": ("419192003", "Internal medicine"),
        "taxonomy": ("207R00000X", "Internal Medicine Physician"),
        "role": ("doctor", "Doctor"),
        "location": "demo-loc-main",
        "slots": MORNING + AFTERNOON,
    },
    "demo-prac-3": {
        "given": ["Sam"],
        "family": "Samplewood",
        "prefix": [],
        "suffix": ["NP"],
        "gender": "other",
        "degree": ("NP", "Nurse Practitioner"),
        "npi": npi("999000003"),
        "specialty": ("419772000", "Family practice"),
        "taxonomy": ("363LF0000X", "Family Nurse Practitioner"),
        "role": ("nurse", "Nurse"),
        "location": "demo-loc-riverside",
        "slots": ["0830", *MORNING, "1200", "1230"],
    },
}
CLINIC_NPI = npi("999000000")


def prac_display(pid: str) -> str:
    p = PRACTITIONERS[pid]
    return " ".join([*p["prefix"], *p["given"], p["family"]]) + ", " + p["suffix"][0]


def clinic_resources(busy: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    out.append(
        resource(
            "Organization",
            "demo-org-clinic",
            {
                "identifier": [
                    {"use": "official", "system": NPI_SYSTEM, "value": CLINIC_NPI},
                    {"system": "urn:fhirhub:demo:organization", "value": "maplebrook-fp"},
                ],
                "active": True,
                "type": [
                    cc(
                        "http://terminology.hl7.org/CodeSystem/organization-type",
                        "prov",
                        "Healthcare Provider",
                    )
                ],
                "name": CLINIC,
                "alias": ["Maplebrook FP"],
                "telecom": [
                    {"system": "phone", "value": "+18025550100", "use": "work", "rank": 1},
                    {"system": "fax", "value": "+18025550101", "use": "work"},
                    {"system": "email", "value": "frontdesk@maplebrook.example.org", "use": "work"},
                    {"system": "url", "value": "https://maplebrook.example.org", "use": "work"},
                ],
                "address": [CLINIC_ADDRESS],
            },
        )
    )
    weekdays = ["mon", "tue", "wed", "thu", "fri"]
    for lid, (name, address, phone) in LOCATIONS.items():
        out.append(
            resource(
                "Location",
                lid,
                {
                    "identifier": [
                        {"system": "urn:fhirhub:demo:location", "value": lid.removeprefix("demo-loc-")}
                    ],
                    "status": "active",
                    "name": name,
                    "mode": "instance",
                    "type": [
                        cc(
                            "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "FMC",
                            "Family Medicine Clinic",
                        )
                    ],
                    "telecom": [{"system": "phone", "value": phone, "use": "work"}],
                    "address": address,
                    "physicalType": cc(
                        "http://terminology.hl7.org/CodeSystem/location-physical-type", "bu", "Building"
                    ),
                    "managingOrganization": local("Organization", "demo-org-clinic", CLINIC),
                    "hoursOfOperation": [
                        {"daysOfWeek": weekdays, "openingTime": "08:00:00", "closingTime": "17:00:00"}
                    ],
                },
            )
        )
    out.append(
        resource(
            "HealthcareService",
            "demo-hcs-primary-care",
            {
                "active": True,
                "providedBy": local("Organization", "demo-org-clinic", CLINIC),
                "category": [cc(SERVICE_CATEGORY, "17", "General Practice")],
                "type": [cc(SERVICE_TYPE, "124", "General Practice"), cc(SERVICE_TYPE, "57", "Immunization")],
                "specialty": [
                    cc(SNOMED, "419772000", "Family practice"),
                    cc(SNOMED, "419192003", "Internal medicine"),
                ],
                "location": [local("Location", lid, LOCATIONS[lid][0]) for lid in LOCATIONS],
                "name": "Primary care office visits",
                "comment": "Annual check-ups, acute visits, chronic care follow-up and vaccinations for adults and children.",
                "telecom": [{"system": "phone", "value": "+18025550100", "use": "work"}],
                "serviceProvisionCode": [
                    cc(
                        "http://terminology.hl7.org/CodeSystem/service-provision-conditions",
                        "cost",
                        "Fees apply",
                    )
                ],
                "communication": [cc(BCP47, "en", "English"), cc(BCP47, "es", "Spanish")],
                "appointmentRequired": True,
                "availableTime": [
                    {"daysOfWeek": weekdays, "availableStartTime": "08:30:00", "availableEndTime": "16:30:00"}
                ],
            },
        )
    )
    for pid, p in PRACTITIONERS.items():
        out.append(
            resource(
                "Practitioner",
                pid,
                {
                    "identifier": [
                        {"use": "official", "system": NPI_SYSTEM, "value": p["npi"]},
                        {"system": "urn:fhirhub:demo:practitioner", "value": pid.removeprefix("demo-")},
                    ],
                    "active": True,
                    "name": [
                        {
                            "use": "official",
                            "family": p["family"],
                            "given": p["given"],
                            **({"prefix": p["prefix"]} if p["prefix"] else {}),
                            "suffix": p["suffix"],
                        }
                    ],
                    "telecom": [
                        {
                            "system": "email",
                            "value": f"{p['given'][0].lower()}.{p['family'].lower()}@maplebrook.example.org",
                            "use": "work",
                        }
                    ],
                    "gender": p["gender"],
                    "qualification": [
                        {
                            "code": cc(
                                "http://terminology.hl7.org/CodeSystem/v2-0360/2.7",
                                p["degree"][0],
                                p["degree"][1],
                            )
                        }
                    ],
                    "communication": [cc(BCP47, "en", "English")]
                    + ([cc(BCP47, "es", "Spanish")] if pid == "demo-prac-1" else []),
                },
            )
        )
    for pid, p in PRACTITIONERS.items():
        n = pid.removeprefix("demo-prac-")
        lid = p["location"]
        out.append(
            resource(
                "PractitionerRole",
                f"demo-role-{n}",
                {
                    "active": True,
                    "period": {"start": "2020-01-01"},
                    "practitioner": local("Practitioner", pid, prac_display(pid)),
                    "organization": local("Organization", "demo-org-clinic", CLINIC),
                    "code": [
                        cc(
                            "http://terminology.hl7.org/CodeSystem/practitioner-role",
                            p["role"][0],
                            p["role"][1],
                        ),
                        cc("http://nucc.org/provider-taxonomy", p["taxonomy"][0], p["taxonomy"][1]),
                    ],
                    "specialty": [cc(SNOMED, p["specialty"][0], p["specialty"][1])],
                    "location": [local("Location", lid, LOCATIONS[lid][0])],
                    "healthcareService": [local("HealthcareService", "demo-hcs-primary-care")],
                    "telecom": [{"system": "phone", "value": LOCATIONS[lid][2], "use": "work"}],
                    "availableTime": [
                        {
                            "daysOfWeek": weekdays,
                            "availableStartTime": f"{p['slots'][0][:2]}:{p['slots'][0][2:]}:00",
                            "availableEndTime": f"{add_minutes(p['slots'][-1], 30)[:2]}:{add_minutes(p['slots'][-1], 30)[2:]}:00",
                        }
                    ],
                },
            )
        )
    for pid, p in PRACTITIONERS.items():
        n = pid.removeprefix("demo-prac-")
        lid = p["location"]
        out.append(
            resource(
                "Schedule",
                f"demo-sched-{n}",
                {
                    "active": True,
                    "serviceCategory": [cc(SERVICE_CATEGORY, "17", "General Practice")],
                    "serviceType": [cc(SERVICE_TYPE, "124", "General Practice")],
                    "specialty": [cc(SNOMED, p["specialty"][0], p["specialty"][1])],
                    "actor": [
                        local("Practitioner", pid, prac_display(pid)),
                        local("Location", lid, LOCATIONS[lid][0]),
                    ],
                    "planningHorizon": {
                        "start": instant(SLOT_DAYS[0], "0000"),
                        "end": instant(SLOT_DAYS[-1], "2359"),
                    },
                    "comment": f"30-minute visits with {prac_display(pid)} at the {LOCATIONS[lid][0].split(' - ')[1]}.",
                },
            )
        )
    for pid, p in PRACTITIONERS.items():
        n = pid.removeprefix("demo-prac-")
        for day in SLOT_DAYS:
            for start in p["slots"]:
                sid = slot_id(pid, day, start)
                out.append(
                    resource(
                        "Slot",
                        sid,
                        {
                            "serviceType": [cc(SERVICE_TYPE, "124", "General Practice")],
                            "schedule": local("Schedule", f"demo-sched-{n}"),
                            "status": "busy" if sid in busy else "free",
                            "start": instant(day, start),
                            "end": instant(day, add_minutes(start, 30)),
                        },
                    )
                )
    return out


def slot_id(pid: str, day: dt.date, hhmm: str) -> str:
    return f"demo-slot-{pid.removeprefix('demo-prac-')}-{day.strftime('%Y%m%d')}-{hhmm}"


# ---------------------------------------------------------------------------------- 02 patients

PAYERS = {
    "demo-payer-bluebird": ("Bluebird Sample Health Plan", "BBSHP", "+18005550150"),
    "demo-payer-placeholder": ("Placeholder Mutual Insurance Co.", "PHMIC", "+18005550160"),
    "demo-payer-example-senior": ("Example Senior Advantage (demo)", "EXSAD", "+18005550170"),
}

LANGUAGES = {
    "en": "English",
    "es": "Spanish",
    "vi": "Vietnamese",
    "zh": "Chinese",
    "ar": "Arabic",
    "ru": "Russian",
    "de": "German",
    "fr": "French",
    "hi": "Hindi",
}

# Names are made of words meaning "sample", "test" or "example" in the patient's language.
# "mobile" numbers can take SMS, "home" numbers are landlines; coverage is
# (payer, relationship to subscriber, plan type, member id, group number, employer) or None (self-pay).
PATIENTS: list[dict[str, Any]] = [
    {"given": ["Avery", "Jo"], "family": "Sampleton", "gender": "female", "birthDate": "1984-03-14", "lang": "en",
     "mobile": "+18025550121", "email": "avery.sampleton@example.com", "pcp": "demo-prac-1",
     "coverage": ("demo-payer-bluebird", "self", "PPO", "BB-100200301", "GRP-4410", "Maplebrook Schools")},
    {"given": ["Bruno"], "family": "Testori", "gender": "male", "birthDate": "1957-11-02", "lang": "en",
     "home": "+18025550122", "email": "bruno.testori@example.net", "pcp": "demo-prac-2",
     "coverage": ("demo-payer-example-senior", "self", "HMO", "EXS-55012", "MA-2026", "Senior Advantage Plus")},
    {"given": ["Carmen", "Lucia"], "family": "Ficticia", "gender": "female", "birthDate": "1991-06-21", "lang": "es",
     "mobile": "+18025550123", "email": "carmen.ficticia@example.org", "pcp": "demo-prac-3",
     "coverage": ("demo-payer-placeholder", "self", "HMO", "PM-7788123", "GRP-0077", "Sample Bakery Co.")},
    {"given": ["Dung"], "family": "Thử", "gender": "male", "birthDate": "1972-09-09", "lang": "vi",
     "mobile": "+18025550124", "email": "dung.thu@example.com", "pcp": "demo-prac-2",
     "coverage": ("demo-payer-bluebird", "self", "PPO", "BB-100200304", "GRP-5120", "Example Logistics")},
    {"given": ["Mei"], "family": "Ceshi", "gender": "female", "birthDate": "1999-01-30", "lang": "zh",
     "mobile": "+18025550125", "email": "mei.ceshi@example.com", "pcp": "demo-prac-1", "coverage": None},
    {"given": ["Omar"], "family": "Tajriba", "gender": "male", "birthDate": "1979-04-18", "lang": "ar",
     "mobile": "+18025550126", "email": "omar.tajriba@example.org", "pcp": "demo-prac-2",
     "coverage": ("demo-payer-placeholder", "self", "HMO", "PM-7788126", "GRP-0091", "Demo Hardware Ltd.")},
    {"given": ["Olga"], "family": "Testova", "gender": "female", "birthDate": "1949-12-05", "lang": "ru",
     "mobile": "+18025550127", "home": "+18025550137", "pcp": "demo-prac-2",
     "coverage": ("demo-payer-example-senior", "self", "HMO", "EXS-55027", "MA-2026", "Senior Advantage Plus")},
    {"given": ["Hans"], "family": "Beispiel", "gender": "male", "birthDate": "1965-08-23", "lang": "de",
     "home": "+18025550128", "pcp": "demo-prac-1", "coverage": None},
    {"given": ["Marie"], "family": "Exemple", "gender": "female", "birthDate": "1995-02-11", "lang": "fr",
     "mobile": "+18025550129", "email": "marie.exemple@example.net", "pcp": "demo-prac-3",
     "coverage": ("demo-payer-bluebird", "self", "PPO", "BB-100200309", "GRP-4410", "Maplebrook Schools")},
    {"given": ["Jonah"], "family": "Demoulin", "gender": "male", "birthDate": "2001-07-04", "lang": "en",
     "mobile": "+18025550130", "email": "jonah.demoulin@example.com", "pcp": "demo-prac-1", "coverage": None},
    {"given": ["Priya"], "family": "Namuna", "gender": "female", "birthDate": "1986-10-26", "lang": "hi",
     "mobile": "+18025550131", "email": "priya.namuna@example.org", "pcp": "demo-prac-3",
     "coverage": ("demo-payer-placeholder", "self", "HMO", "PM-7788131", "GRP-0102", "Fictional Software Inc.")},
    {"given": ["Leo"], "family": "Namuna", "gender": "male", "birthDate": "2018-05-30", "lang": "en",
     "pcp": "demo-prac-3", "guardian": 11,
     "coverage": ("demo-payer-placeholder", "child", "HMO", "PM-7788131-02", "GRP-0102", "Fictional Software Inc.")},
]  # fmt: skip

PLAN_TYPES = {
    "PPO": "preferred provider organization policy",
    "HMO": "health maintenance organization policy",
}
STREETS = ["Example Avenue", "Sample Street", "Test Lane", "Placeholder Road", "Mock Court", "Demo Drive"]


def patient_name(n: int) -> str:
    p = PATIENTS[n - 1]
    return f"{' '.join(p['given'])} {p['family']}"


def patient_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pid, (name, payer_id, phone) in PAYERS.items():
        out.append(
            resource(
                "Organization",
                pid,
                {
                    "identifier": [{"system": "urn:fhirhub:demo:payer-id", "value": payer_id}],
                    "active": True,
                    "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")],
                    "name": name,
                    "telecom": [{"system": "phone", "value": phone, "use": "work"}],
                },
            )
        )
    for n, p in enumerate(PATIENTS, start=1):
        telecom: list[dict[str, Any]] = []
        if "mobile" in p:
            telecom.append({"system": "phone", "value": p["mobile"], "use": "mobile", "rank": 1})
            telecom.append({"system": "sms", "value": p["mobile"], "use": "mobile", "rank": 1})
        if "home" in p:
            telecom.append(
                {"system": "phone", "value": p["home"], "use": "home", "rank": 2 if "mobile" in p else 1}
            )
        if "email" in p:
            telecom.append({"system": "email", "value": p["email"], "use": "home"})
        guardian = p.get("guardian")
        body: dict[str, Any] = {
            "identifier": [
                {
                    "use": "usual",
                    "type": cc(V2_0203, "MR", "Medical record number"),
                    "system": MRN_SYSTEM,
                    "value": f"MB{100000 + n}",
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": p["family"], "given": p["given"]}],
            "telecom": telecom or None,
            "gender": p["gender"],
            "birthDate": p["birthDate"],
            "address": [
                {
                    "use": "home",
                    "type": "both",
                    "line": [f"{10 * (guardian or n) + 5} {STREETS[(guardian or n) % len(STREETS)]}"],
                    "city": "Maplebrook",
                    "state": "VT",
                    "postalCode": "05999",
                    "country": "US",
                }
            ],
        }
        if guardian:
            g = PATIENTS[guardian - 1]
            body["contact"] = [
                {
                    "relationship": [cc("http://terminology.hl7.org/CodeSystem/v2-0131", "N", "Next-of-Kin")],
                    "name": {"use": "official", "family": g["family"], "given": g["given"]},
                    "telecom": [
                        {"system": "phone", "value": g["mobile"], "use": "mobile"},
                        {"system": "sms", "value": g["mobile"], "use": "mobile"},
                        {"system": "email", "value": g["email"], "use": "home"},
                    ],
                }
            ]
        body["communication"] = [{"language": cc(BCP47, p["lang"], LANGUAGES[p["lang"]]), "preferred": True}]
        if p["lang"] != "en":
            body["communication"].append({"language": cc(BCP47, "en", "English"), "preferred": False})
        body["generalPractitioner"] = [ref("Practitioner", p["pcp"], prac_display(p["pcp"]))]
        body["managingOrganization"] = ref("Organization", "demo-org-clinic", CLINIC)
        out.append(resource("Patient", f"demo-pat-{n}", {k: v for k, v in body.items() if v is not None}))
    for n, p in enumerate(PATIENTS, start=1):
        if not p["coverage"]:
            continue
        payer, relationship, plan, member_id, group, employer = p["coverage"]
        subscriber = p.get("guardian") or n
        out.append(
            resource(
                "Coverage",
                f"demo-cov-{n}",
                {
                    "identifier": [
                        {
                            "type": cc(V2_0203, "MB", "Member Number"),
                            "system": f"urn:fhirhub:demo:payer:{PAYERS[payer][1].lower()}:member",
                            "value": member_id,
                        }
                    ],
                    "status": "active",
                    "type": cc(V3_ACT, plan, PLAN_TYPES[plan]),
                    "subscriber": local("Patient", f"demo-pat-{subscriber}", patient_name(subscriber)),
                    "subscriberId": member_id.removesuffix("-02"),
                    "beneficiary": local("Patient", f"demo-pat-{n}", patient_name(n)),
                    "dependent": "02" if relationship == "child" else "01",
                    "relationship": cc(
                        "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                        relationship,
                        relationship.capitalize(),
                    ),
                    "period": {"start": "2026-01-01", "end": "2026-12-31"},
                    "payor": [local("Organization", payer, PAYERS[payer][0])],
                    "class": [
                        {
                            "type": cc(
                                "http://terminology.hl7.org/CodeSystem/coverage-class", "group", "Group"
                            ),
                            "value": group,
                            "name": employer,
                        },
                        {
                            "type": cc(
                                "http://terminology.hl7.org/CodeSystem/coverage-class", "plan", "Plan"
                            ),
                            "value": f"{PAYERS[payer][1]}-{plan}",
                            "name": f"{PAYERS[payer][0]} {plan}",
                        },
                    ],
                    "order": 1,
                    "costToBeneficiary": [
                        {
                            "type": cc(
                                "http://terminology.hl7.org/CodeSystem/coverage-copay-type",
                                "gpvisit",
                                "GP Office Visit",
                            ),
                            "valueMoney": usd(25.0 if plan == "PPO" else 15.0),
                        }
                    ],
                },
            )
        )
    return out


# ------------------------------------------------------------------------------ 03 appointments

# (n, patient, practitioner, day offset from TODAY, start, minutes, status, appointment type, reason)
APPOINTMENTS: list[tuple[int, int, str, int, str, int, str, str, tuple[str, str, str]]] = [
    (1, 1, "demo-prac-1", -6, "0900", 30, "fulfilled", "FOLLOWUP", (ICD10, "E11.9", "Type 2 diabetes mellitus without complications")),
    (2, 3, "demo-prac-3", -5, "0930", 30, "fulfilled", "WALKIN", (ICD10, "J02.9", "Acute pharyngitis, unspecified")),
    (3, 6, "demo-prac-2", -4, "1000", 30, "fulfilled", "FOLLOWUP", (ICD10, "I10", "Essential (primary) hypertension")),
    (4, 10, "demo-prac-1", -4, "1400", 30, "noshow", "ROUTINE", (ICD10, "E66.9", "Obesity, unspecified")),
    (5, 7, "demo-prac-2", -3, "1300", 30, "fulfilled", "FOLLOWUP", (ICD10, "R00.2", "Palpitations")),
    (6, 2, "demo-prac-1", 0, "0900", 60, "booked", "CHECKUP", (SNOMED, "185349003", "Encounter for check up")),
    (7, 4, "demo-prac-2", 0, "1030", 30, "booked", "FOLLOWUP", (ICD10, "E78.5", "Hyperlipidemia, unspecified")),
    (8, 12, "demo-prac-3", 1, "0900", 30, "booked", "CHECKUP", (SNOMED, "410620009", "Well child visit")),
    (9, 5, "demo-prac-1", 1, "1400", 60, "booked", "ROUTINE", (SNOMED, "185349003", "Encounter for check up")),
    (10, 8, "demo-prac-2", 2, "1100", 30, "booked", "ROUTINE", (ICD10, "M54.50", "Low back pain, unspecified")),
    (11, 9, "demo-prac-3", 3, "0930", 30, "cancelled", "ROUTINE", (ICD10, "J30.9", "Allergic rhinitis, unspecified")),
    (12, 11, "demo-prac-2", 3, "1300", 30, "booked", "ROUTINE", (ICD10, "R51.9", "Headache, unspecified")),
    (13, 3, "demo-prac-3", 4, "0900", 30, "booked", "FOLLOWUP", (ICD10, "J02.9", "Acute pharyngitis, unspecified")),
    (14, 1, "demo-prac-1", 7, "0900", 30, "booked", "FOLLOWUP", (ICD10, "E11.9", "Type 2 diabetes mellitus without complications")),
    (15, 6, "demo-prac-2", 8, "1000", 30, "booked", "FOLLOWUP", (ICD10, "I10", "Essential (primary) hypertension")),
    (16, 10, "demo-prac-1", 9, "1500", 30, "booked", "ROUTINE", (ICD10, "E66.9", "Obesity, unspecified")),
    (17, 9, "demo-prac-3", 10, "0930", 30, "booked", "ROUTINE", (ICD10, "J30.9", "Allergic rhinitis, unspecified")),
    (18, 7, "demo-prac-2", 11, "1100", 30, "booked", "FOLLOWUP", (ICD10, "R00.2", "Palpitations")),
]  # fmt: skip

APPT_TYPES = {
    "CHECKUP": "A routine check-up, such as an annual physical",
    "FOLLOWUP": "A follow up visit from a previous appointment",
    "ROUTINE": "Routine appointment - default if not valued",
    "WALKIN": "A previously unscheduled walk-in visit",
}

# appointment n -> encounter type for the fulfilled visits
ENCOUNTER_TYPES = {
    1: ("390906007", "Follow-up encounter"),
    2: ("185345009", "Encounter for symptom"),
    3: ("390906007", "Follow-up encounter"),
    5: ("390906007", "Follow-up encounter"),
}


def appointment_slots(n: int) -> list[str]:
    _, _, pid, offset, start, minutes, *_ = APPOINTMENTS[n - 1]
    day = TODAY + dt.timedelta(days=offset)
    return [slot_id(pid, day, add_minutes(start, k)) for k in range(0, minutes, 30)]


def busy_slots() -> set[str]:
    busy: set[str] = set()
    for appt in APPOINTMENTS:
        if appt[6] != "cancelled":
            busy.update(appointment_slots(appt[0]))
    return busy


def appointment_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    encounters: list[dict[str, Any]] = []
    for n, pat, pid, offset, start, minutes, status, atype, reason in APPOINTMENTS:
        day = TODAY + dt.timedelta(days=offset)
        lid = PRACTITIONERS[pid]["location"]
        created = (day - dt.timedelta(days=3 if atype == "WALKIN" else 14 + n % 5)).isoformat()
        if atype == "WALKIN":
            created = f"{day.isoformat()}T{start[:2]}:{start[2:]}:00{TZ}"
        pstatus = "declined" if status == "cancelled" else "accepted"
        body: dict[str, Any] = {
            "status": status,
            "serviceCategory": [cc(SERVICE_CATEGORY, "17", "General Practice")],
            "serviceType": [cc(SERVICE_TYPE, "124", "General Practice")],
            "specialty": [cc(SNOMED, PRACTITIONERS[pid]["specialty"][0], PRACTITIONERS[pid]["specialty"][1])],
            "appointmentType": cc(V2_0276, atype, APPT_TYPES[atype]),
            "reasonCode": [cc(reason[0], reason[1], reason[2], reason[2])],
            "description": f"{reason[2]} - {prac_display(pid)}",
            "start": instant(day, start),
            "end": instant(day, add_minutes(start, minutes)),
            "minutesDuration": minutes,
            "slot": [ref("Slot", s) for s in appointment_slots(n)],
            "created": created,
            "patientInstruction": "Please arrive 10 minutes early and bring your insurance card and a list of your medicines.",
            "participant": [
                {
                    "actor": ref("Patient", f"demo-pat-{pat}", patient_name(pat)),
                    "required": "required",
                    "status": pstatus,
                },
                {
                    "type": [cc(V3_PARTICIPATION, "PPRF", "primary performer")],
                    "actor": ref("Practitioner", pid, prac_display(pid)),
                    "required": "required",
                    "status": "accepted",
                },
                {
                    "actor": ref("Location", lid, LOCATIONS[lid][0]),
                    "required": "required",
                    "status": "accepted",
                },
            ],
        }
        if status == "cancelled":
            body["cancelationReason"] = cc(
                "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                "pat-fb",
                "Patient: Feeling Better",
            )
            body["comment"] = "Cancelled by the patient by phone; rebooked for a later date."
            body["slot"] = []  # the slot was released
        if pat == 12:
            body["comment"] = "Accompanied by his mother, Priya Namuna (demo-pat-11)."
        out.append(resource("Appointment", f"demo-appt-{n}", {k: v for k, v in body.items() if v != []}))
        if status == "fulfilled":
            etype = ENCOUNTER_TYPES[n]
            period = {
                "start": instant(day, add_minutes(start, 5)),
                "end": instant(day, add_minutes(start, minutes)),
            }
            encounters.append(
                resource(
                    "Encounter",
                    f"demo-enc-{n}",
                    {
                        "identifier": [
                            {
                                "system": "urn:fhirhub:demo:visit",
                                "value": f"V{day.strftime('%Y%m%d')}-{n:03d}",
                            }
                        ],
                        "status": "finished",
                        "class": {"system": V3_ACT, "code": "AMB", "display": "ambulatory"},
                        "type": [cc(SNOMED, etype[0], etype[1])],
                        "serviceType": cc(SERVICE_TYPE, "124", "General Practice"),
                        "subject": ref("Patient", f"demo-pat-{pat}", patient_name(pat)),
                        "participant": [
                            {
                                "type": [cc(V3_PARTICIPATION, "PPRF", "primary performer")],
                                "period": period,
                                "individual": ref("Practitioner", pid, prac_display(pid)),
                            }
                        ],
                        "appointment": [local("Appointment", f"demo-appt-{n}")],
                        "period": period,
                        "reasonCode": [cc(reason[0], reason[1], reason[2], reason[2])],
                        "location": [
                            {"location": ref("Location", lid, LOCATIONS[lid][0]), "status": "completed"}
                        ],
                        "serviceProvider": ref("Organization", "demo-org-clinic", CLINIC),
                    },
                )
            )
    return out + encounters


# ---------------------------------------------------------------------------------- 04 intake


def q_item(link_id: str, text: str, qtype: str, **extra: Any) -> dict[str, Any]:
    return {"linkId": link_id, "text": text, "type": qtype, **extra}


def patient_def(path: str) -> str:
    return f"http://hl7.org/fhir/StructureDefinition/Patient#Patient.{path}"


def coverage_def(path: str) -> str:
    return f"http://hl7.org/fhir/StructureDefinition/Coverage#Coverage.{path}"


def intake_resources() -> list[dict[str, Any]]:
    has_insurance = [{"question": "has-insurance", "operator": "=", "answerBoolean": True}]
    relationship_system = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
    questionnaire = resource(
        "Questionnaire",
        "new-patient-intake",
        {
            "url": "https://fhirhub.dev/Questionnaire/new-patient-intake",
            "identifier": [{"system": "urn:fhirhub:demo:form", "value": "new-patient-intake"}],
            "version": "1.0.0",
            "name": "NewPatientIntake",
            "title": "New patient intake",
            "status": "active",
            "experimental": True,
            "subjectType": ["Patient"],
            "date": "2026-11-15",
            "publisher": "fhirhub demo clinic",
            "description": "Demographics, contact preferences and insurance asked of every new patient of the "
            "Maplebrook Family Practice demo clinic before the first visit.",
            "purpose": "Register a new patient and capture the insurance needed to bill the first visit.",
            "item": [
                q_item(
                    "demographics",
                    "About you",
                    "group",
                    required=True,
                    item=[
                        q_item(
                            "given-name",
                            "First name",
                            "string",
                            required=True,
                            definition=patient_def("name.given"),
                        ),
                        q_item(
                            "family-name",
                            "Last name",
                            "string",
                            required=True,
                            definition=patient_def("name.family"),
                        ),
                        q_item(
                            "birth-date",
                            "Date of birth",
                            "date",
                            required=True,
                            definition=patient_def("birthDate"),
                        ),
                        q_item(
                            "gender",
                            "Gender",
                            "choice",
                            required=True,
                            definition=patient_def("gender"),
                            answerValueSet="http://hl7.org/fhir/ValueSet/administrative-gender",
                        ),
                        q_item(
                            "preferred-language",
                            "Preferred language",
                            "choice",
                            definition=patient_def("communication.language"),
                            answerOption=[
                                {"valueCoding": {"system": BCP47, "code": code, "display": display}}
                                for code, display in LANGUAGES.items()
                            ],
                        ),
                        q_item(
                            "address",
                            "Home address",
                            "group",
                            item=[
                                q_item(
                                    "address-line",
                                    "Street address",
                                    "string",
                                    definition=patient_def("address.line"),
                                ),
                                q_item(
                                    "address-city", "City", "string", definition=patient_def("address.city")
                                ),
                                q_item(
                                    "address-state",
                                    "State",
                                    "string",
                                    maxLength=2,
                                    definition=patient_def("address.state"),
                                ),
                                q_item(
                                    "address-postal-code",
                                    "ZIP code",
                                    "string",
                                    maxLength=10,
                                    definition=patient_def("address.postalCode"),
                                ),
                            ],
                        ),
                    ],
                ),
                q_item(
                    "contact",
                    "How can we reach you?",
                    "group",
                    item=[
                        q_item(
                            "phone", "Mobile phone number", "string", definition=patient_def("telecom.value")
                        ),
                        q_item(
                            "sms-ok",
                            "May we send appointment reminders to this number by text message (SMS)?",
                            "boolean",
                        ),
                        q_item("email", "E-mail address", "string", definition=patient_def("telecom.value")),
                        q_item(
                            "preferred-contact",
                            "How do you prefer to be contacted?",
                            "choice",
                            answerOption=[
                                {
                                    "valueCoding": {
                                        "system": "http://hl7.org/fhir/contact-point-system",
                                        "code": c,
                                        "display": d,
                                    }
                                }
                                for c, d in [("phone", "Phone"), ("sms", "SMS"), ("email", "Email")]
                            ],
                        ),
                    ],
                ),
                q_item(
                    "insurance",
                    "Insurance",
                    "group",
                    required=True,
                    item=[
                        q_item("has-insurance", "Do you have health insurance?", "boolean", required=True),
                        q_item(
                            "payer-name",
                            "Insurance company",
                            "open-choice",
                            required=True,
                            enableWhen=has_insurance,
                            definition=coverage_def("payor"),
                            answerOption=[{"valueString": name} for name, _, _ in PAYERS.values()],
                        ),
                        q_item(
                            "member-id",
                            "Member ID (from your insurance card)",
                            "string",
                            required=True,
                            enableWhen=has_insurance,
                            definition=coverage_def("subscriberId"),
                        ),
                        q_item(
                            "group-number",
                            "Group number",
                            "string",
                            enableWhen=has_insurance,
                            definition=coverage_def("class.value"),
                        ),
                        q_item(
                            "subscriber-relationship",
                            "Your relationship to the policy holder",
                            "choice",
                            required=True,
                            enableWhen=has_insurance,
                            definition=coverage_def("relationship"),
                            answerOption=[
                                {"valueCoding": {"system": relationship_system, "code": c, "display": d}}
                                for c, d in [
                                    ("self", "Self"),
                                    ("spouse", "Spouse"),
                                    ("child", "Child"),
                                    ("other", "Other"),
                                ]
                            ],
                        ),
                        q_item(
                            "subscriber",
                            "Policy holder",
                            "group",
                            enableWhen=[
                                {
                                    "question": "subscriber-relationship",
                                    "operator": "!=",
                                    "answerCoding": {"system": relationship_system, "code": "self"},
                                }
                            ],
                            item=[
                                q_item(
                                    "subscriber-name", "Policy holder's full name", "string", required=True
                                ),
                                q_item(
                                    "subscriber-birth-date",
                                    "Policy holder's date of birth",
                                    "date",
                                    required=True,
                                ),
                            ],
                        ),
                        q_item(
                            "insurance-card",
                            "Photo of the front of your insurance card",
                            "attachment",
                            enableWhen=has_insurance,
                        ),
                    ],
                ),
                q_item(
                    "visit",
                    "Your visit",
                    "group",
                    item=[
                        q_item("reason-for-visit", "What is the main reason for your visit?", "text"),
                        q_item(
                            "consent-to-treat",
                            "I consent to examination and treatment.",
                            "boolean",
                            required=True,
                        ),
                    ],
                ),
            ],
        },
    )
    return [questionnaire]


# ---------------------------------------------------------------------------------- 05 claims

# claim n: the fulfilled appointment it bills, its lines (CPT, display, charge, diagnosis sequences) and
# its ICD-10-CM diagnoses; the patient, coverage, payer and practitioner follow from the appointment.
CLAIMS: dict[int, dict[str, Any]] = {
    1: {
        "appt": 1,
        "items": [
            (
                "99214",
                "Office or other outpatient visit, established patient, moderate complexity",
                185.0,
                [1, 2],
            ),
            ("80053", "Comprehensive metabolic panel", 48.0, [1]),
            ("36415", "Collection of venous blood by venipuncture", 15.0, [1]),
        ],
        "diagnoses": [
            ("E11.9", "Type 2 diabetes mellitus without complications"),
            ("E78.5", "Hyperlipidemia, unspecified"),
        ],
    },
    2: {
        "appt": 2,
        "items": [
            ("99213", "Office or other outpatient visit, established patient, low complexity", 130.0, [1]),
            ("90686", "Influenza virus vaccine, quadrivalent, preservative free, intramuscular", 32.0, [2]),
            ("90471", "Immunization administration, one vaccine", 25.0, [2]),
        ],
        "diagnoses": [
            ("J02.9", "Acute pharyngitis, unspecified"),
            ("Z23", "Encounter for immunization"),
        ],
    },
    # deliberately has no diagnosis: the claim follow-up workflow must flag it before submission
    3: {
        "appt": 3,
        "items": [
            ("99213", "Office or other outpatient visit, established patient, low complexity", 130.0, [])
        ],
        "diagnoses": [],
    },
    4: {
        "appt": 5,
        "items": [
            ("99213", "Office or other outpatient visit, established patient, low complexity", 130.0, [1, 2]),
            ("93000", "Electrocardiogram, routine, with interpretation and report", 60.0, [2]),
        ],
        "diagnoses": [("I10", "Essential (primary) hypertension"), ("R00.2", "Palpitations")],
    },
}


def claim_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n, c in CLAIMS.items():
        _, pat, pid, offset, start, minutes, *_ = APPOINTMENTS[c["appt"] - 1]
        day = TODAY + dt.timedelta(days=offset)
        cov = PATIENTS[pat - 1]["coverage"]
        assert cov, f"claim {n}: patient {pat} has no coverage"
        payer = cov[0]
        lid = PRACTITIONERS[pid]["location"]
        items = []
        for seq, (code, display, charge, dx) in enumerate(c["items"], start=1):
            item: dict[str, Any] = {"sequence": seq, "careTeamSequence": [1]}
            if dx:
                item["diagnosisSequence"] = dx
            item.update(
                {
                    "productOrService": cc(CPT, code, display),
                    "servicedDate": day.isoformat(),
                    "locationCodeableConcept": cc(
                        "http://terminology.hl7.org/CodeSystem/ex-serviceplace", "11", "Office"
                    ),
                    "quantity": {"value": 1},
                    "unitPrice": usd(charge),
                    "net": usd(charge),
                    "encounter": [ref("Encounter", f"demo-enc-{c['appt']}")],
                }
            )
            items.append(item)
        body: dict[str, Any] = {
            "identifier": [{"system": "urn:fhirhub:demo:claim", "value": f"CLM-2026-{n:04d}"}],
            "status": "active",
            "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
            "use": "claim",
            "patient": ref("Patient", f"demo-pat-{pat}", patient_name(pat)),
            "billablePeriod": {"start": day.isoformat(), "end": day.isoformat()},
            "created": instant(day + dt.timedelta(days=1), "0800"),
            "insurer": ref("Organization", payer, PAYERS[payer][0]),
            "provider": ref("Organization", "demo-org-clinic", CLINIC),
            "priority": cc("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
            "careTeam": [
                {
                    "sequence": 1,
                    "provider": ref("Practitioner", pid, prac_display(pid)),
                    "role": cc(
                        "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                        "primary",
                        "Primary provider",
                    ),
                }
            ],
            "diagnosis": [
                {
                    "sequence": seq,
                    "diagnosisCodeableConcept": cc(ICD10, code, display),
                    **(
                        {
                            "type": [
                                cc(
                                    "http://terminology.hl7.org/CodeSystem/ex-diagnosistype",
                                    "principal",
                                    "Principal Diagnosis",
                                )
                            ]
                        }
                        if seq == 1
                        else {}
                    ),
                }
                for seq, (code, display) in enumerate(c["diagnoses"], start=1)
            ],
            "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage", f"demo-cov-{pat}")}],
            "item": items,
            "total": usd(sum(i[2] for i in c["items"])),
        }
        if not body["diagnosis"]:
            del body["diagnosis"]
        body["facility"] = ref("Location", lid, LOCATIONS[lid][0])
        out.append(resource("Claim", f"demo-claim-{n}", body))

    # The payer's answer to claim 1: the venipuncture line is denied, the rest is paid.
    claim = CLAIMS[1]
    _, pat, pid, offset, *_ = APPOINTMENTS[claim["appt"] - 1]
    payer = PATIENTS[pat - 1]["coverage"][0]
    adjud = "http://terminology.hl7.org/CodeSystem/adjudication"
    copay = 25.0
    resp_items = []
    paid_total = 0.0
    for seq, (_, _, charge, _) in enumerate(claim["items"], start=1):
        if seq == 3:
            resp_items.append(
                {
                    "itemSequence": seq,
                    "adjudication": [
                        {"category": cc(adjud, "submitted", "Submitted Amount"), "amount": usd(charge)},
                        {
                            "category": cc(adjud, "benefit", "Benefit Amount"),
                            "reason": cc(
                                "http://terminology.hl7.org/CodeSystem/adjudication-reason",
                                "ar001",
                                "Not covered",
                            ),
                            "amount": usd(0.0),
                        },
                    ],
                }
            )
            continue
        eligible = round(charge * 0.8, 2)
        benefit = round(eligible - (copay if seq == 1 else 0.0), 2)
        paid_total += benefit
        adjudication = [
            {"category": cc(adjud, "submitted", "Submitted Amount"), "amount": usd(charge)},
            {"category": cc(adjud, "eligible", "Eligible Amount"), "amount": usd(eligible)},
        ]
        if seq == 1:
            adjudication.append({"category": cc(adjud, "copay", "CoPay"), "amount": usd(copay)})
        adjudication.append({"category": cc(adjud, "benefit", "Benefit Amount"), "amount": usd(benefit)})
        resp_items.append({"itemSequence": seq, "adjudication": adjudication})
    submitted = sum(i[2] for i in claim["items"])
    paid_total = round(paid_total, 2)
    day = TODAY + dt.timedelta(days=offset)
    out.append(
        resource(
            "ClaimResponse",
            "demo-claimresponse-1",
            {
                "identifier": [
                    {
                        "system": f"urn:fhirhub:demo:payer:{PAYERS[payer][1].lower()}:claim",
                        "value": "BB-ADJ-900017",
                    }
                ],
                "status": "active",
                "type": cc(
                    "http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"
                ),
                "use": "claim",
                "patient": ref("Patient", f"demo-pat-{pat}", patient_name(pat)),
                "created": instant(TODAY - dt.timedelta(days=1), "1015"),
                "insurer": ref("Organization", payer, PAYERS[payer][0]),
                "requestor": ref("Organization", "demo-org-clinic", CLINIC),
                "request": local("Claim", "demo-claim-1"),
                "outcome": "partial",
                "disposition": "Claim partially paid: line 3 (CPT 36415) denied - service not covered under the plan.",
                "item": resp_items,
                "total": [
                    {"category": cc(adjud, "submitted", "Submitted Amount"), "amount": usd(submitted)},
                    {"category": cc(adjud, "benefit", "Benefit Amount"), "amount": usd(paid_total)},
                ],
                "payment": {
                    "type": cc("http://terminology.hl7.org/CodeSystem/ex-paymenttype", "partial", "Partial"),
                    "date": (TODAY - dt.timedelta(days=1)).isoformat(),
                    "amount": usd(paid_total),
                    "identifier": {
                        "system": "urn:fhirhub:demo:payer:bbshp:eft",
                        "value": "EFT-20261206-0042",
                    },
                },
                "processNote": [
                    {
                        "number": 1,
                        "type": "display",
                        "text": f"Line 3 denied: venipuncture is bundled into the lab fee under this plan ({day.isoformat()}).",
                    }
                ],
            },
        )
    )
    return out


# ------------------------------------------------------------------------------------- main


def build() -> dict[str, bytes]:
    files = {
        "01-clinic.json": bundle(clinic_resources(busy_slots())),
        "02-patients.json": bundle(patient_resources()),
        "03-appointments.json": bundle(appointment_resources()),
        "04-intake.json": bundle(intake_resources()),
        "05-claims.json": bundle(claim_resources()),
    }
    return {
        name: (json.dumps(b, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        for name, b in files.items()
    }


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (out_dir / name).write_bytes(data)
        count = len(json.loads(data)["entry"])
        print(f"{out_dir / name}: {count} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
