"""The demo clinic linked to a second hub that plays its EHR (see README.md beside this file).

    python examples/ehr-link/ehr_link.py setup     # keys for the clinic hub; registers it (and a staff client) on the EHR's database
    python examples/ehr-link/ehr_link.py seed      # the EHR's own records: 2 demo patients it shares (same MRN) and 2 new ones
    python examples/ehr-link/ehr_link.py show      # what each side has, and the connector's status

The EHR is a fhirhub at http://127.0.0.1:8090/fhir with its own database (var/ehr-link/ehr.db) and
auth on; the clinic is `make run`'s hub at http://127.0.0.1:8080/fhir with the connector
examples/ehr-link/connectors/fhir-ehr.yaml.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hub.security import assertion as smart  # noqa: E402

VAR = ROOT / "var" / "ehr-link"
EHR_DB = f"sqlite:///{VAR / 'ehr.db'}"
EHR = "http://127.0.0.1:8090/fhir"
CLINIC = "http://127.0.0.1:8080/fhir"
MRN = "urn:fhirhub:demo:mrn"
SCOPES = "system/Patient.cruds system/Appointment.cruds"


def _register(name: str, jwks: Path, scopes: str) -> None:
    env = {**os.environ, "FHIRHUB_DATABASE_URL": EHR_DB}
    listed = subprocess.run([sys.executable, "-m", "hub", "clients", "list"], cwd=ROOT, env=env, capture_output=True, text=True)
    if name in listed.stdout:
        print(f"{name} is already registered on the EHR")
        return
    subprocess.run([sys.executable, "-m", "hub", "clients", "add", "--name", name, "--client-id", name, "--jwks", str(jwks),
                    "--scopes", scopes], cwd=ROOT, env=env, check=True, capture_output=True)
    print(f"registered {name} on the EHR ({scopes})")


def setup() -> None:
    VAR.mkdir(parents=True, exist_ok=True)
    for name in ("clinic-hub", "ehr-staff"):
        pem = VAR / f"{name}.pem"
        if not pem.exists():
            key = smart.generate_key("ES384")
            pem.write_bytes(smart.private_pem(key))
            pem.chmod(0o600)
            (VAR / f"{name}.jwks.json").write_text(json.dumps(smart.public_jwks(key, "k1", "ES384"), indent=2))
    _register("clinic-hub", VAR / "clinic-hub.jwks.json", SCOPES)
    _register("ehr-staff", VAR / "ehr-staff.jwks.json", "system/*.cruds")
    print(f"the clinic hub's private key: {VAR / 'clinic-hub.pem'} (the connector file points to it)")


def _ehr_headers() -> dict[str, str]:
    key = smart.load_private_key((VAR / "ehr-staff.pem").read_bytes())
    token_url = httpx.get(f"{EHR}/.well-known/smart-configuration").json()["token_endpoint"]
    answer = httpx.post(token_url, data=smart.token_request("ehr-staff", token_url, key, "ES384", "k1", "system/*.cruds"))
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}", "Content-Type": "application/fhir+json"}


def _patient(mrn: str, family: str, given: str, born: str, phone: str) -> dict[str, object]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"use": "official", "family": family, "given": [given]}], "birthDate": born,
            "telecom": [{"system": "phone", "value": phone, "use": "mobile"}], "gender": "unknown"}


def seed() -> None:
    headers = _ehr_headers()
    people = [
        _patient("MB100001", "Sampleton", "Avery", "1984-03-02", "555-0100"),  # also in the demo clinic: matched
        _patient("MB100002", "Testori", "Bruno", "1957-11-19", "555-0101"),   # also in the demo clinic: matched
        _patient("EHR-9001", "Exampleton", "Robin", "1990-06-15", "555-0188"),  # only in the EHR: created in the hub
        _patient("EHR-9002", "Sampleford", "Kim", "2002-01-30", "555-0189"),    # only in the EHR: created in the hub
    ]
    for p in people:
        mrn = p["identifier"][0]["value"]  # type: ignore[index]
        r = httpx.post(f"{EHR}/Patient", json=p, headers={**headers, "If-None-Exist": f"identifier={MRN}|{mrn}"})
        r.raise_for_status()
        print(f"EHR Patient {r.json()['id']} ({mrn}): {r.status_code}")


def show() -> None:
    headers = _ehr_headers()
    for label, base, h in (("EHR", EHR, headers), ("clinic hub", CLINIC, {})):
        for res_type in ("Patient", "Appointment"):
            bundle = httpx.get(f"{base}/{res_type}", params={"_count": "100", "_summary": "count"}, headers=h).json()
            print(f"{label}: {bundle.get('total')} {res_type}")
    print(subprocess.run([sys.executable, "-m", "hub", "connectors", "status"], cwd=ROOT, text=True, capture_output=True,
                         env={**os.environ, "FHIRHUB_SYNC_CONNECTORS_DIR": str(ROOT / "examples/ehr-link/connectors")}).stdout)


if __name__ == "__main__":
    commands = {"setup": setup, "seed": seed, "show": show}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[sys.argv[1]]()
