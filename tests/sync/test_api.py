"""The connector administration routes behind the fhirhub/admin scope, and the CLI reading the same state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from hub.app import Content, build_hub, create_app
from hub.security import assertion as smart
from hub.security.tokens import ClientStore
from hub.settings import Settings
from hub.store.schema import upgrade
from hub.sync import store
from tests.server import ROOT, free_port

pytestmark = pytest.mark.timeout(120)

CONNECTOR = """\
kind: fhir-rest
name: ehr
base_url: https://ehr.example.org/fhir
auth: {method: none}
pull: {types: [Patient]}
push: {types: [Appointment]}
"""


@pytest.fixture
def served(db_url: str, content: Content, tmp_path: Path) -> Iterator[tuple[str, str]]:
    folder = tmp_path / "connectors"
    folder.mkdir()
    (folder / "fhir-ehr.yaml").write_text(CONNECTOR)
    hub = build_hub(Settings(database_url=db_url, auth="on", rate_limit=0, sync_connectors_dir=folder), content=content)
    upgrade(hub.ctx.db)
    with hub.ctx.db.write() as conn:
        store.add_dead_letter(conn, "ehr", store.DeadLetter("push", "Appointment", "FHIRHUB-SYNC-REMOTE-REFUSED", "answered 422",
                                                            local_id="a1", http_status=422))
        store.save_state(conn, "ehr", "Patient", "pull", add_count=3, success=True, watermark="2026-01-01T00:00:00Z")
    app = create_app(hub)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", db_url
    srv.should_exit = True
    thread.join(10)
    hub.close()


def token(base: str, db_url: str, scopes: str) -> str:
    from hub.store.db import Database

    key = smart.generate_key("ES384")
    db = Database(db_url)
    client = ClientStore(db).add("admin test", scopes.split(), jwks=smart.public_jwks(key, "k1", "ES384"))
    db.dispose()
    url = f"{base}/auth/token"
    r = httpx.post(url, data=smart.token_request(client.client_id, url, key, "ES384", "k1", scopes))
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_status_and_dead_letters_need_the_admin_scope(served: tuple[str, str]) -> None:
    base, db_url = served
    assert httpx.get(f"{base}/admin/connectors").status_code == 401
    reader = token(base, db_url, "system/Patient.rs")
    r = httpx.get(f"{base}/admin/connectors", headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    admin = {"Authorization": f"Bearer {token(base, db_url, 'fhirhub/admin')}"}
    (status,) = httpx.get(f"{base}/admin/connectors", headers=admin).json()["connectors"]
    assert status["name"] == "ehr" and status["running"] is False
    assert status["pull"][0]["count"] == 3 and status["pull"][0]["watermark"] == "2026-01-01T00:00:00Z"
    assert status["deadLetters"] == {"dead": 1, "replay": 0, "resolved": 0}
    assert httpx.get(f"{base}/admin/connectors/nope", headers=admin).status_code == 404
    (letter,) = httpx.get(f"{base}/admin/connectors/ehr/dead-letters", headers=admin).json()["deadLetters"]
    assert letter["httpStatus"] == 422 and letter["localId"] == "a1"
    r = httpx.post(f"{base}/admin/connectors/ehr/replay", params={"id": str(letter["id"]), "resolve": "local-wins"}, headers=admin)
    assert r.status_code == 202 and r.json() == {"markedForReplay": 1}
    assert httpx.get(f"{base}/admin/connectors/ehr", headers=admin).json()["deadLetters"]["replay"] == 1
    # pull now needs the running connector: this server runs without background services
    assert httpx.post(f"{base}/admin/connectors/ehr/pull", headers=admin).status_code == 404
    # a notification for a connector that is not running here cannot be authenticated
    assert httpx.post(f"{base}/sync/ehr/notify", headers={"Authorization": "Bearer anything"}).status_code == 401


def test_the_cli_shows_the_same_status(served: tuple[str, str], tmp_path: Path) -> None:
    _, db_url = served
    env = {**os.environ, "FHIRHUB_DATABASE_URL": db_url, "FHIRHUB_SYNC_CONNECTORS_DIR": str(tmp_path / "connectors"),
           "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "hub", "connectors", "status", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (status,) = json.loads(done.stdout)["connectors"]
    assert status["pull"][0]["count"] == 3 and status["deadLetters"]["dead"] == 1
    table = subprocess.run([sys.executable, "-m", "hub", "connectors", "dead-letters", "ehr"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "FHIRHUB-SYNC-REMOTE-REF" in table.stdout
    replay = subprocess.run([sys.executable, "-m", "hub", "connectors", "replay", "ehr"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0 and "1 dead letter(s) marked for replay" in replay.stdout
