"""Fixtures for the sync tests: a local hub on each database, a fake EHR behind respx, connectors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from hub.app import Content, Hub, build_hub
from hub.interactions.request import FhirRequest, FhirResponse
from hub.security import assertion as smart
from hub.settings import Settings
from hub.store.schema import upgrade
from hub.sync.config import parse
from hub.sync.connector import Connector
from hub.sync.remote import Remote
from tests.sync.fake_ehr import BASE, HOST, FakeEhr


@pytest.fixture(scope="session")
def content() -> Content:
    return Content.load(Settings().profiles_dir)


@pytest.fixture
def local(db_url: str, content: Content) -> Iterator[Hub]:
    hub = build_hub(Settings(database_url=db_url), content=content)
    upgrade(hub.ctx.db)
    yield hub
    hub.close()


@pytest.fixture
def ehr() -> Iterator[FakeEhr]:
    fake = FakeEhr()
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.route(host=HOST).mock(side_effect=fake)
        yield fake


@dataclass
class Clock:
    now: float = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    """What a test drives: the connector, its clock, and the waits tenacity asked for."""

    hub: Hub
    connector: Connector
    clock: Clock
    sleeps: list[float] = field(default_factory=list)
    key: Any = None

    def write(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> FhirResponse:
        """A local change made by a user of the hub (origin: a client, not the connector)."""
        if method == "PUT" and isinstance(body, dict) and "id" not in body:
            body = {**body, "id": path.split("/")[1]}
        resp = self.hub.router.dispatch(FhirRequest(method, path, body=body, headers=headers or {}, origin="front-desk"))
        assert resp.status < 300, resp.body
        return resp

    def read(self, res_type: str, rid: str) -> dict[str, Any] | None:
        with self.hub.ctx.db.read() as conn:
            stored = self.hub.ctx.repo.read(conn, res_type, rid)
        return None if stored is None or stored.deleted else stored.resource()

    def search(self, res_type: str, query: str = "") -> list[dict[str, Any]]:
        from urllib.parse import parse_qsl

        import orjson

        resp = self.hub.router.dispatch(FhirRequest("GET", res_type, params=parse_qsl(query) + [("_count", "1000")]))
        return [e["resource"] for e in orjson.loads(resp.body or b"{}").get("entry") or []]


def connector_doc(key_path: Path, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "fhir-rest",
        "name": "ehr",
        "base_url": BASE,
        "auth": {"method": "smart-backend", "client_id": "clinic-hub", "private_key": {"file": str(key_path)},
                 "kid": "k1", "alg": "ES384", "scopes": "system/Patient.cruds system/Appointment.cruds"},
        "pull": {"types": ["Patient", "Appointment"], "page_size": 10},
        "push": {"types": ["Appointment", "Patient"], "from": "beginning"},
        "match": {"Patient": ["urn:mrn"]},
        "http": {"attempts": 4, "max_wait": 30},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


@pytest.fixture
def make_env(local: Hub, tmp_path: Path) -> Iterator[Any]:
    made: list[Env] = []

    def make(alg: str = "ES384", **overrides: Any) -> Env:
        key = smart.generate_key(alg)
        key_path = tmp_path / f"client-{alg}-{len(made)}.pem"
        key_path.write_bytes(smart.private_pem(key))
        doc = connector_doc(key_path, **overrides)
        doc["auth"] = {**doc["auth"], "alg": alg} if doc["auth"]["method"] == "smart-backend" else doc["auth"]
        cfg = parse(doc, "fhir-ehr.yaml", tmp_path, local.ctx.resource_types)
        clock = Clock()
        env = Env(local, None, clock, key=key)  # type: ignore[arg-type]

        async def sleep(seconds: float) -> None:
            env.sleeps.append(seconds)

        remote = Remote(cfg, http=httpx.AsyncClient(timeout=5), audit=local.ctx.audit, clock=clock, sleep=sleep)
        env.connector = Connector(cfg, local.ctx, local.router, remote)
        made.append(env)
        return env

    yield make
