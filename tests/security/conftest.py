from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from hub.security import assertion as smart
from tests.conftest import DIALECTS, fresh_database
from tests.server import ROOT, HubProcess, running_hub


@dataclass
class SecuredHub:
    hub: HubProcess
    db_url: str
    workdir: Path
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.hub.base.rsplit("/fhir", 1)[0]

    def register(self, scopes: str, alg: str = "ES384") -> tuple[str, smart.PrivateKey]:
        """Register a client through the real CLI; returns its id and private key."""
        key = smart.generate_key(alg)
        jwks_file = self.workdir / f"jwks-{len(list(self.workdir.glob('jwks-*')))}.json"
        jwks_file.write_text(json.dumps(smart.public_jwks(key, "k1", alg)))
        out = subprocess.run(
            [sys.executable, "-m", "hub", "clients", "add", "--name", "test client", "--jwks", str(jwks_file), "--scopes", scopes],
            cwd=ROOT, env={**os.environ, "FHIRHUB_DATABASE_URL": self.db_url}, capture_output=True, text=True, check=True,
        )
        return out.stdout.strip().splitlines()[-1], key

    def token(self, client_id: str, key: smart.PrivateKey, scope: str, alg: str = "ES384") -> str:
        url = f"{self.root}/auth/token"
        r = httpx.post(url, data=smart.token_request(client_id, url, key, alg, "k1", scope))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def client(self, scopes: str) -> httpx.Client:
        client_id, key = self.register(scopes)
        token = self.token(client_id, key, scopes)
        client = httpx.Client(base_url=self.hub.base, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture(scope="module", params=DIALECTS)
def secured_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredHub]:
    """The real server with auth on (the default), once per dialect."""
    workdir = tmp_path_factory.mktemp(f"secured-{request.param}")
    with fresh_database(request.param, workdir) as url, running_hub(url, workdir, {"FHIRHUB_AUTH": "on", "FHIRHUB_RATE_LIMIT": "0"}) as hub:
        secured = SecuredHub(hub, url, workdir)
        yield secured
        secured.close()
