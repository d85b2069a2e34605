"""A SMART Backend Services client for fhirhub, end to end.

    python examples/smart_client.py keygen var/my-client          # writes var/my-client.pem and var/my-client.jwks.json
    fhirhub clients add --name "My app" --jwks var/my-client.jwks.json --scopes "system/Patient.rs system/Appointment.cruds"
    python examples/smart_client.py call var/my-client <client-id> http://127.0.0.1:8080/fhir Patient

The second step prints the client id. The last step signs a client assertion (ES384),
trades it for an access token at the hub's token endpoint (found through
``.well-known/smart-configuration``), and searches ``Patient`` with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from hub.security import assertion as smart

SCOPES = "system/Patient.rs system/Appointment.cruds"


def keygen(stem: Path) -> None:
    key = smart.generate_key("ES384")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".pem").write_bytes(smart.private_pem(key))
    stem.with_suffix(".jwks.json").write_text(json.dumps(smart.public_jwks(key, "key-1", "ES384"), indent=2))
    print(f"private key: {stem.with_suffix('.pem')}\npublic JWKS to register: {stem.with_suffix('.jwks.json')}")


def call(stem: Path, client_id: str, fhir_base: str, path: str) -> None:
    key = smart.load_private_key(stem.with_suffix(".pem").read_bytes())
    config = httpx.get(f"{fhir_base}/.well-known/smart-configuration").json()
    token_url = config["token_endpoint"]
    form = smart.token_request(client_id, token_url, key, "ES384", "key-1", SCOPES)
    answer = httpx.post(token_url, data=form)
    answer.raise_for_status()
    token = answer.json()
    print(f"granted: {token['scope']} for {token['expires_in']} s")
    result = httpx.get(f"{fhir_base}/{path}", headers={"Authorization": f"Bearer {token['access_token']}"})
    print(result.status_code, json.dumps(result.json(), indent=2)[:2000])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "keygen":
        keygen(Path(sys.argv[2]))
    elif len(sys.argv) == 6 and sys.argv[1] == "call":
        call(Path(sys.argv[2]), sys.argv[3], sys.argv[4].rstrip("/"), sys.argv[5])
    else:
        print(__doc__)
        sys.exit(2)
