"""Deterministic FHIR R4 payloads for the benchmarks: realistic Patients (~1 KB) and transaction Bundles.

Every payload is valid R4 (4.0.1): the hub validates each write, so an invalid body would measure the
422 path instead of the write path.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson

GIVEN = {
    "female": ["Ada", "Amara", "Beatriz", "Camila", "Chloe", "Elena", "Emma", "Fatima", "Grace", "Hana", "Ines", "Julia", "Lara", "Mei", "Nadia", "Nora", "Priya", "Rosa", "Sara", "Zoe"],
    "male": ["Aaron", "Adrian", "Ahmed", "Carlos", "Daniel", "David", "Elias", "Ethan", "Felix", "Hugo", "Isaac", "Jonas", "Kenji", "Lucas", "Marco", "Noah", "Omar", "Ravi", "Theo", "Wei"],
}
FAMILY = ["Adeyemi", "Alvarez", "Andersen", "Bakker", "Banerjee", "Becker", "Chen", "Costa", "Diallo", "Dubois", "Fischer", "Garcia", "Haddad", "Hansen", "Ibrahim", "Jansen", "Kaur", "Keller", "Khan", "Kim", "Kowalski", "Larsen", "Lopez", "Meyer", "Murphy", "Nakamura", "Nguyen", "Novak", "Okafor", "Patel", "Rossi", "Santos", "Schmidt", "Silva", "Singh", "Tanaka", "Torres", "Walsh", "Weber", "Zhang"]
STREETS = ["Main St", "Oak Avenue", "Maple Drive", "Cedar Lane", "Elm Street", "Park Road", "Lakeview Blvd", "Hillcrest Way"]
CITIES = [("Springfield", "MA", "01103"), ("Riverside", "CA", "92501"), ("Franklin", "TN", "37064"),
          ("Madison", "WI", "53703"), ("Georgetown", "TX", "78626"), ("Salem", "OR", "97301")]
LANGUAGES = [("en-US", "English (United States)"), ("es", "Spanish"), ("de", "German"), ("fr", "French")]
MARITAL = [("M", "Married"), ("S", "Never Married"), ("D", "Divorced"), ("W", "Widowed")]


def patient(rng: random.Random, n: int) -> dict[str, Any]:
    """A Patient of about 1 KB, shaped like a practice-management record."""
    gender = rng.choice(["female", "male"])
    given = rng.choice(GIVEN[gender])
    middle = rng.choice(GIVEN[gender])
    family = rng.choice(FAMILY)
    street = f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"
    city, state, postal = rng.choice(CITIES)
    lang, lang_name = rng.choice(LANGUAGES)
    marital, marital_name = rng.choice(MARITAL)
    birth = f"{rng.randint(1935, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical record number"}]},
                "system": "urn:oid:2.16.840.1.113883.19.5",
                "value": f"MRN{n:08d}",
            },
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"999-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"},
        ],
        "active": True,
        "name": [
            {"use": "official", "family": family, "given": [given, middle], "prefix": ["Ms." if gender == "female" else "Mr."]},
        ],
        "telecom": [
            {"system": "phone", "value": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}", "use": "home"},
            {"system": "phone", "value": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}", "use": "mobile", "rank": 1},
            {"system": "email", "value": f"{given.lower()}.{family.lower()}{n}@example.org"},
        ],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {"use": "home", "type": "both", "line": [street], "city": city, "state": state, "postalCode": postal, "country": "US"}
        ],
        "maritalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": marital, "display": marital_name}]
        },
        "contact": [
            {
                "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "C", "display": "Emergency Contact"}]}],
                "name": {"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN["female"] + GIVEN["male"])]},
                "telecom": [{"system": "phone", "value": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"}],
            }
        ],
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": lang, "display": lang_name}]}, "preferred": True}
        ],
    }


def appointment(rng: random.Random, patient_ref: str) -> dict[str, Any]:
    day = rng.randint(1, 28)
    hour = rng.randint(8, 16)
    minute = rng.choice([0, 15, 30, 45])
    start = f"2025-{rng.randint(1, 12):02d}-{day:02d}T{hour:02d}:{minute:02d}:00Z"
    end_minute = minute + 15
    end = f"{start[:11]}{hour + end_minute // 60:02d}:{end_minute % 60:02d}:00Z"
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "serviceType": [{"coding": [{"system": "http://snomed.info/sct", "code": "394814009", "display": "General practice"}]}],
        "appointmentType": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "ROUTINE", "display": "Routine appointment"}]
        },
        "description": "Annual check-up",
        "start": start,
        "end": end,
        "minutesDuration": 15,
        "participant": [{"actor": {"reference": patient_ref}, "required": "required", "status": "accepted"}],
    }


def patient_bodies(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(f"bench-patients:{seed}")
    return [orjson.dumps(patient(rng, n)) for n in range(count)]


def transaction_bundle(rng: random.Random, entries: int = 100, start: int = 0) -> dict[str, Any]:
    """A transaction of ``entries`` POSTs: Patients and Appointments that reference them by urn:uuid."""
    out: list[dict[str, Any]] = []
    patients = (entries + 1) // 2
    for k in range(patients):
        full_url = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        out.append({"fullUrl": full_url, "resource": patient(rng, start + k), "request": {"method": "POST", "url": "Patient"}})
        if len(out) < entries:
            out.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                    "resource": appointment(rng, full_url),
                    "request": {"method": "POST", "url": "Appointment"},
                }
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


def patients_bundle(rng: random.Random, count: int, start: int = 0) -> dict[str, Any]:
    """A transaction of ``count`` Patient POSTs (used to pre-load the read workload)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}", "resource": patient(rng, start + k),
             "request": {"method": "POST", "url": "Patient"}}
            for k in range(count)
        ],
    }
