"""The message-store admin API (``/admin/messages``): auth, search, show, reprocess, purge, requeue."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from hub.api.auth import Authenticator
from hub.app import Hub, create_app
from hub.hl7 import api as hl7_api
from hub.hl7 import store
from hub.hl7.connectors import Connectors
from hub.hl7.service import Runtime
from hub.security import assertion as smart
from hub.security.tokens import ClientStore
from hub.settings import Settings
from tests.hl7.support import MAPPINGS, Client, adt, listener, msa, running, search, uid

SYSTEM = "urn:fhirhub:id:CLINIC"


def app_for(hub: Hub, runtime: Runtime | None = None, auth: str = "off") -> FastAPI:
    """The hub's app with the admin routes, on a copy of ``hub`` with ``auth`` (and the runtime as its service)."""
    settings = Settings(database_url=hub.settings.database_url, auth=auth, rate_limit=0)
    services = [runtime.listeners["test-in"]] if runtime is not None else []  # what build_hub(with_services=True) holds
    view = Hub(settings, hub.ctx, hub.router, hub.tokens, services)  # type: ignore[arg-type]
    app = create_app(view)
    hl7_api.mount(app, view, Authenticator(settings, view.tokens, None))
    return app


@pytest.fixture
def fixable(tmp_path: Path) -> Path:
    """A copy of the mapping files, to be fixed by a test."""
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def http_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.mark.asyncio
async def test_routes_need_a_token_and_the_admin_scope(hub: Hub) -> None:
    app = app_for(hub, auth="on")
    async with http_for(app) as http:
        for method, path in [("GET", "/admin/messages"), ("GET", "/admin/messages/1"), ("POST", "/admin/messages/1/reprocess"),
                             ("POST", "/admin/messages/reprocess?error=X"), ("POST", "/admin/messages/purge?older_than=1d"),
                             ("POST", "/admin/messages/1/requeue")]:
            r = await http.request(method, path)
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["resourceType"] == "OperationOutcome"
        key = smart.generate_key("ES384")
        clients = ClientStore(hub.ctx.db)

        async def token(scope: str) -> str:
            client = clients.add("t", scope.split(), jwks=smart.public_jwks(key, "k1", "ES384"))
            url = "http://testserver/auth/token"
            r = await http.post(url, data=smart.token_request(client.client_id, url, key, "ES384", "k1", scope))
            assert r.status_code == 200, r.text
            return str(r.json()["access_token"])

        reader = await token("system/*.rs")
        r = await http.get("/admin/messages", headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 403 and "fhirhub/admin" in r.text
        admin = await token("fhirhub/admin")
        r = await http.get("/admin/messages", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200 and "messages" in r.json()


@pytest.mark.asyncio
async def test_browse_reprocess_and_purge(hub: Hub, fixable: Path) -> None:
    mrn_ok, mrn_bad, cid_ok, cid_bad, cid_bad2 = uid(), uid(), uid(), uid(), uid()
    conf = listener(mappings=fixable)
    async with running(hub, [conf]) as rt:
        c = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await c.call(adt(cid_ok, mrn_ok)))[0] == "AA"
        assert msa(await c.call(adt(cid_bad, mrn_bad, extra="IN1|1|PLAN1")))[0] == "AE"
        assert msa(await c.call(adt(cid_bad2, uid(), extra="IN1|1|PLAN1")))[0] == "AE"
        await c.close()
    async with http_for(app_for(hub, rt)) as http:
        listing = (await http.get("/admin/messages", params={"control_id": cid_ok})).json()
        assert listing["count"] == 1
        summary = listing["messages"][0]
        assert (summary["type"], summary["status"], summary["ack"], summary["sender"]) == ("ADT^A04", "applied", "AA", "PMS/CLINIC")
        errors = (await http.get("/admin/messages", params={"error": "HL7-MAP-REQUIRED", "status": "error", "type": "ADT"})).json()
        assert {m["controlId"] for m in errors["messages"]} >= {cid_bad, cid_bad2}
        assert all(m["error"]["location"] == "IN1^1^4" for m in errors["messages"])
        assert (await http.get("/admin/messages", params={"sender": "CLINIC", "since": "1h", "_count": 1})).json()["next"]
        assert (await http.get("/admin/messages", params={"since": "not a time"})).status_code == 400

        shown = (await http.get(f"/admin/messages/{summary['id']}", params={"bundle": "true"})).json()
        assert shown["message"].startswith("MSH|") and f"|{cid_ok}|" in shown["message"]
        assert shown["ackMessage"].split("\r")[1] == f"MSA|AA|{cid_ok}"
        assert any(ref.startswith("Patient/") for ref in shown["resources"])
        assert shown["bundle"]["type"] == "transaction"
        assert (await http.get("/admin/messages/999999999")).status_code == 404

        # the fix: no Coverage unless the insurer is named
        a04 = fixable / "messages" / "ADT_A04.yaml"
        a04.write_text(a04.read_text().replace(
            "{name: coverage, template: IN1-Coverage, each: IN1}",
            "{name: coverage, template: IN1-Coverage, each: IN1, when: {any: [{present: IN1-3}, {present: IN1-4}]}}"))
        rt.mappings.check()
        bad_id = next(m["id"] for m in errors["messages"] if m["controlId"] == cid_bad)
        one = (await http.post(f"/admin/messages/{bad_id}/reprocess")).json()
        assert (one["status"], one["ack"]) == ("applied", "AA")
        assert search(hub, "Patient", identifier=f"{SYSTEM}|{mrn_bad}")
        rest = (await http.post("/admin/messages/reprocess", params={"error": "HL7-MAP-REQUIRED", "connector": "test-in"})).json()
        assert rest["outcomes"] == {"applied": rest["count"]} and rest["count"] >= 1
        assert (await http.post("/admin/messages/reprocess")).status_code == 400
        assert (await http.post(f"/admin/messages/{summary['id']}/requeue")).status_code == 409

        assert (await http.post("/admin/messages/purge")).status_code == 400
        assert (await http.post("/admin/messages/purge", params={"older_than": "1d"})).json() == {"deleted": 0}
        gone = (await http.post("/admin/messages/purge", params={"before": "2999-01-01", "connector": "test-in"})).json()
        assert gone["deleted"] >= 3
        assert (await http.get("/admin/messages", params={"control_id": cid_ok})).json()["count"] == 0


def test_purge_never_removes_waiting_messages(hub: Hub) -> None:
    with hub.ctx.db.write() as conn:
        [r] = store.receive(conn, [store.Incoming("other", "A/B", "C/D", uid(), "ADT^A01", b"MSH|x")])
        assert store.purge(conn, 2**62) >= 0
        assert store.get(conn, r.pk) is not None
        conn.execute(store.message_t.delete().where(store.message_t.c.pk == r.pk))


def test_admin_without_services_loads_the_connector_files(hub: Hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FHIRHUB_CONNECTORS_DIR", str(tmp_path))
    from hub.hl7.admin import admin_for

    admin = admin_for(hub)
    assert admin.connectors == Connectors([], [], [])

