"""The one write path, through the router, on SQLite and PostgreSQL (validation and search twinned out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from hub.app import Content, Hub, build_hub
from hub.fhir.definitions import Definitions
from hub.interactions.request import FhirRequest, FhirResponse
from hub.settings import Settings
from hub.store.schema import upgrade
from hub.store.tables import outbox_t, resource_t, version_t
from tests.twins import AcceptAllValidator

BASE = "http://hub.test/fhir"


@pytest.fixture(scope="session")
def definitions() -> Definitions:
    return Definitions.load(Settings().profiles_dir)


@pytest.fixture
def hub(db_url: str, definitions: Definitions) -> Iterator[Hub]:
    h = build_hub(Settings(database_url=db_url), content=Content(definitions, AcceptAllValidator(definitions.resource_types), None))
    upgrade(h.ctx.db)
    yield h
    h.close()


def call(hub: Hub, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         params: list[tuple[str, str]] | None = None) -> FhirResponse:
    return hub.router.dispatch(FhirRequest(method, path, params or [], headers or {}, body, BASE))


def counts(hub: Hub) -> tuple[int, int, int]:
    with hub.ctx.db.read() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in (resource_t, version_t, outbox_t))  # type: ignore[return-value]


def test_create_writes_resource_version_and_outbox_together(hub: Hub) -> None:
    r = call(hub, "POST", "Patient", {"resourceType": "Patient", "id": "ignored", "active": True})
    assert r.status == 201
    body = orjson.loads(r.body or b"")
    assert body["id"] != "ignored"
    assert counts(hub) == (1, 1, 1)
    with hub.ctx.db.read() as conn:
        row = conn.execute(sa.select(outbox_t)).one()
    assert (row.res_type, row.res_id, row.version, row.interaction) == ("Patient", body["id"], 1, "create")


def test_stored_bytes_are_served_unchanged(hub: Hub) -> None:
    created = call(hub, "PUT", "Patient/p1", {"resourceType": "Patient", "id": "p1", "active": True})
    read = call(hub, "GET", "Patient/p1")
    assert read.body == created.body
    assert read.headers["ETag"] == 'W/"1"'


def test_update_as_create_then_noop_update_keeps_version(hub: Hub) -> None:
    first = call(hub, "PUT", "Patient/same", {"resourceType": "Patient", "id": "same", "active": True})
    assert first.status == 201
    again = call(hub, "PUT", "Patient/same", {"resourceType": "Patient", "id": "same", "active": True})
    assert again.status == 200 and again.headers["ETag"] == 'W/"1"'
    assert counts(hub) == (1, 1, 1)  # no new version, no outbox row for a no-op
    changed = call(hub, "PUT", "Patient/same", {"resourceType": "Patient", "id": "same", "active": False})
    assert changed.headers["ETag"] == 'W/"2"'
    assert counts(hub) == (1, 2, 2)


def test_update_id_rules(hub: Hub) -> None:
    assert call(hub, "PUT", "Patient/a", {"resourceType": "Patient"}).status == 400
    assert call(hub, "PUT", "Patient/a", {"resourceType": "Patient", "id": "b"}).status == 400
    assert call(hub, "PUT", "Patient/a", {"resourceType": "Observation", "id": "a"}).status == 400
    assert call(hub, "PUT", "Patient/bad$id", {"resourceType": "Patient", "id": "bad$id"}).status == 400
    assert counts(hub) == (0, 0, 0)


def test_stale_if_match_changes_nothing(hub: Hub) -> None:
    call(hub, "PUT", "Patient/v", {"resourceType": "Patient", "id": "v", "active": True})
    call(hub, "PUT", "Patient/v", {"resourceType": "Patient", "id": "v", "active": False})
    r = call(hub, "PUT", "Patient/v", {"resourceType": "Patient", "id": "v"}, {"if-match": 'W/"1"'})
    assert r.status == 412
    assert counts(hub) == (1, 2, 2)
    ok = call(hub, "PUT", "Patient/v", {"resourceType": "Patient", "id": "v"}, {"if-match": 'W/"2"'})
    assert ok.status == 200 and ok.headers["ETag"] == 'W/"3"'


def test_delete_is_a_versioned_tombstone(hub: Hub) -> None:
    call(hub, "PUT", "Patient/d", {"resourceType": "Patient", "id": "d"})
    assert call(hub, "DELETE", "Patient/d").status == 204
    assert call(hub, "GET", "Patient/d").status == 410
    assert call(hub, "DELETE", "Patient/d").status == 204  # idempotent, writes nothing more
    assert counts(hub) == (1, 2, 2)
    with hub.ctx.db.read() as conn:
        kinds = [r.interaction for r in conn.execute(sa.select(outbox_t.c.interaction).order_by(outbox_t.c.pk))]
    assert kinds == ["create", "delete"]
    # re-create after delete
    again = call(hub, "PUT", "Patient/d", {"resourceType": "Patient", "id": "d"})
    assert again.status == 201 and again.headers["ETag"] == 'W/"3"'


def test_failed_transaction_writes_nothing(hub: Hub) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:missing"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = call(hub, "POST", "", bundle)
    assert r.status == 400
    assert "Bundle.entry[1]" in r.body.decode()  # type: ignore[union-attr]
    assert counts(hub) == (0, 0, 0)


def test_transaction_order_and_reference_rewriting(hub: Hub) -> None:
    call(hub, "PUT", "Patient/old", {"resourceType": "Patient", "id": "old"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/old"}},
            {
                "fullUrl": "urn:uuid:obs",
                "resource": {
                    "resourceType": "Observation",
                    "subject": {"reference": "urn:uuid:pat"},
                    "hasMember": [{"reference": "urn:uuid:obs"}],
                    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><a href="urn:uuid:pat">p</a></div>'},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"fullUrl": "urn:uuid:pat", "resource": {"resourceType": "Patient", "id": "given"}, "request": {"method": "PUT", "url": "Patient/given"}},
            {"request": {"method": "DELETE", "url": "Patient/old"}},
        ],
    }
    r = call(hub, "POST", "", bundle)
    assert r.status == 200, r.body
    out = orjson.loads(r.body or b"")
    statuses = [e["response"]["status"] for e in out["entry"]]
    # the GET runs after the DELETE (spec order), so it sees the deletion
    assert statuses == ["410 Gone", "201 Created", "201 Created", "204 No Content"]
    obs_id = out["entry"][1]["response"]["location"].split("/")[1]
    obs = orjson.loads(call(hub, "GET", f"Observation/{obs_id}").body or b"")
    assert obs["subject"]["reference"] == "Patient/given"
    assert obs["hasMember"][0]["reference"] == f"Observation/{obs_id}"
    assert 'href="Patient/given"' in obs["text"]["div"]


def test_transaction_rejects_the_same_resource_twice(hub: Hub) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x"}},
            {"resource": {"resourceType": "Patient", "id": "x", "active": True}, "request": {"method": "PUT", "url": "Patient/x"}},
        ],
    }
    assert call(hub, "POST", "", bundle).status == 400
    assert counts(hub) == (0, 0, 0)


def test_transaction_patch_as_binary(hub: Hub) -> None:
    import base64

    call(hub, "PUT", "Patient/p", {"resourceType": "Patient", "id": "p", "active": True})
    doc = base64.b64encode(orjson.dumps([{"op": "replace", "path": "/active", "value": False}])).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": doc},
                "request": {"method": "PATCH", "url": "Patient/p"},
            }
        ],
    }
    r = call(hub, "POST", "", bundle)
    assert r.status == 200, r.body
    assert orjson.loads(call(hub, "GET", "Patient/p").body or b"")["active"] is False


def test_history_levels_since_and_paging(hub: Hub) -> None:
    for i in range(5):
        call(hub, "PUT", f"Patient/h{i}", {"resourceType": "Patient", "id": f"h{i}"})
    call(hub, "PUT", "Organization/o", {"resourceType": "Organization", "id": "o"})
    system = orjson.loads(call(hub, "GET", "_history", params=[("_count", "2")]).body or b"")
    ids = []
    page = system
    while True:
        ids += [e["fullUrl"].rsplit("/", 2)[-2] + "/" + e["fullUrl"].rsplit("/", 1)[-1] for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        query = nxt[0].split("?", 1)[1]
        page = orjson.loads(call(hub, "GET", "_history", params=[tuple(p.split("=", 1)) for p in query.split("&")]).body or b"")  # type: ignore[misc]
        prev = [link["url"] for link in page["link"] if link["relation"] == "previous"]
        assert prev, "a later page links back"
    assert ids == ["Organization/o"] + [f"Patient/h{i}" for i in reversed(range(5))]
    typed = orjson.loads(call(hub, "GET", "Patient/_history").body or b"")
    assert len(typed["entry"]) == 5
    future = orjson.loads(call(hub, "GET", "_history", params=[("_since", "2999-01-01T00:00:00Z")]).body or b"")
    assert future.get("entry", []) == []
    assert call(hub, "GET", "_history", params=[("_since", "not-a-date")]).status == 400
    assert call(hub, "GET", "Patient/nobody/_history").status == 404


def test_conditional_operations_need_search(hub: Hub) -> None:
    # with the search engine off, conditional operations say so instead of guessing
    r = call(hub, "POST", "Patient", {"resourceType": "Patient"}, {"if-none-exist": "identifier=a|b"})
    assert r.status == 501
    assert counts(hub) == (0, 0, 0)


def test_the_audit_event_of_a_write_is_inserted_before_its_outbox_row(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL the outbox step takes the lock that orders the writers' commits and holds it to COMMIT;
    the write's AuditEvent goes in before it (``write_many(before_outbox=…)``), not one round trip after."""
    from hub.store import sql

    inserted: list[str] = []
    insert_many = sql.insert_many

    def recording(conn: sa.Connection, table: sa.Table, columns: Any, rows: Any) -> None:
        inserted.append(table.name)
        insert_many(conn, table, columns, rows)

    monkeypatch.setattr(sql, "insert_many", recording)
    assert call(hub, "PUT", "Patient/p1", {"resourceType": "Patient", "id": "p1", "active": True}).status == 201
    assert call(hub, "PUT", "Patient/p1", {"resourceType": "Patient", "id": "p1", "active": False}).status == 200
    assert call(hub, "DELETE", "Patient/p1").status in (200, 204)
    assert call(hub, "POST", "Patient", {"resourceType": "Patient", "active": True}).status == 201
    order = [t for t in inserted if t in ("audit_event", "outbox")]
    assert order == ["audit_event", "outbox"] * 4, inserted
    assert counts(hub)[2] == 4
