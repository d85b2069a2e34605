"""Every route answers 401 without a token, unless it is listed here as public, with the reason.

A route added to the app without a decision fails this test: either it requires a
token, or it is added to PUBLIC with a reason someone can review.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.routing import Route

from hub.app import Content, build_hub, create_app
from hub.settings import Settings
from hub.store.schema import upgrade
from tests.server import free_port

PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/.well-known/smart-configuration"): "SMART discovery is public by the SMART App Launch spec",
    ("GET", "/fhir/.well-known/smart-configuration"): "SMART discovery, relative to the FHIR base",
    ("POST", "/auth/token"): "the token endpoint authenticates the client by its signed assertion",
    ("GET", "/auth/jwks"): "the hub's public signing keys",
    ("GET", "/"): "a redirect to the CapabilityStatement",
    ("GET", "/fhir/metadata"): "the CapabilityStatement describes the server and holds no PHI",
}
# What the catch-all FHIR routes are exercised with: every interaction shape.
FHIR_PATHS = ["", "Patient", "Patient/1", "Patient/1/_history", "Patient/1/_history/1", "Patient/_history",
              "Patient/_search", "_history", "Patient/1/$everything", "Patient/1/Appointment", "AuditEvent", "AuditEvent/1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, content: Content) -> Iterator[tuple[str, list[Route]]]:
    db = tmp_path_factory.mktemp("routes") / "hub.db"
    hub = build_hub(Settings(database_url=f"sqlite:///{db}", auth="on"), content=content)
    upgrade(hub.ctx.db)
    app = create_app(hub)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", [r for r in app.routes if isinstance(r, Route)]
    srv.should_exit = True
    thread.join(10)
    hub.close()


def concrete(path: str) -> list[str]:
    if path == "/fhir/{path:path}":
        return [f"/fhir/{p}" for p in FHIR_PATHS]
    path = path.replace("{name}", "example").replace("{pk:int}", "1")  # connector names, message ids
    assert "{" not in path, f"route {path} has parameters this test does not know: decide how to exercise it"
    return [path]


def test_every_route_needs_a_token_or_a_reason(server: tuple[str, list[Route]]) -> None:
    base, routes = server
    checked = 0
    for route in routes:
        for method in sorted(route.methods or []):
            if method == "HEAD":
                continue
            for path in concrete(route.path):
                if (method, path) in PUBLIC:
                    continue
                r = httpx.request(method, base + path, json={"resourceType": "Patient"} if method in ("POST", "PUT", "PATCH") else None)
                assert r.status_code == 401, f"{method} {path} answered {r.status_code} without a token"
                if path.startswith("/fhir"):
                    assert r.json()["resourceType"] == "OperationOutcome"
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                checked += 1
    assert checked >= 60
    # and the public ones really are public
    for method, path in PUBLIC:
        r = httpx.request(method, base + path, follow_redirects=False)
        assert r.status_code != 401, (method, path)


def test_security_headers_and_no_cors_by_default(server: tuple[str, list[Route]]) -> None:
    base, _ = server
    r = httpx.get(f"{base}/fhir/metadata", headers={"Origin": "https://evil.example"})
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(f"{base}/fhir/Patient", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in pre.headers


def test_discovery_document(server: tuple[str, list[Route]]) -> None:
    base, _ = server
    conf = httpx.get(f"{base}/fhir/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == f"{base}/auth/token"
    assert set(conf["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert "client-confidential-asymmetric" in conf["capabilities"]
    assert conf["grant_types_supported"] == ["client_credentials"]


