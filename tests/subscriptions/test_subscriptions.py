"""Subscriptions in process, against a real local HTTP receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from hub.app import Hub
from hub.subscriptions import notify, spec
from hub.subscriptions.service import SubscriptionService
from tests.subscriptions.helpers import Receiver, call, make_hub, ok

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest_asyncio.fixture
async def running(db_url: str) -> AsyncIterator[tuple[Hub, SubscriptionService]]:
    hub = make_hub(db_url, subscription_retry_initial=0.05, subscription_retry_max=0.2, subscription_retry_for=3.0,
                   subscription_error_after=3, subscription_timeout=2.0, workflows_dir="/nonexistent")
    service = SubscriptionService(hub, timers=False)
    await service.start()
    try:
        yield hub, service
    finally:
        await service.stop()
        hub.close()


def subscription(endpoint: str, criteria: str, **extra: Any) -> dict[str, Any]:
    channel = {"type": "rest-hook", "endpoint": endpoint, **extra.pop("channel", {})}
    return {"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria,
            "channel": channel, **extra}


async def post(hub: Hub, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(lambda: ok(call(hub, "POST", path, body)))


async def put(hub: Hub, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(lambda: ok(call(hub, "PUT", path, body)))


async def get(hub: Hub, path: str) -> dict[str, Any]:
    return await asyncio.to_thread(lambda: ok(call(hub, "GET", path)))


async def test_rest_hook_with_payload_is_an_update_signed_and_keyed(running: tuple[Hub, SubscriptionService],
                                                                    http_receiver: Receiver) -> None:
    hub, service = running
    sub = await post(hub, "Subscription", subscription(http_receiver.url + "/base", "Patient?gender=female",
                                                         channel={"payload": "application/fhir+json", "header": ["X-Team: front-desk"]}))
    await service.drain()
    stored = await get(hub, f"Subscription/{sub['id']}")
    assert stored["status"] == "active"
    secret = next(e["valueString"] for e in stored["extension"] if e["url"] == spec.EXT_SECRET)
    patient = await post(hub, "Patient", {"resourceType": "Patient", "gender": "female", "name": [{"family": "Sample"}]})
    await post(hub, "Patient", {"resourceType": "Patient", "gender": "male"})  # does not match
    await service.drain()
    [got] = await asyncio.to_thread(http_receiver.count, 1)
    assert (got.method, got.path) == ("PUT", f"/base/Patient/{patient['id']}")
    assert orjson.loads(got.body)["id"] == patient["id"]
    assert got.headers["x-team"] == "front-desk"
    assert got.headers["idempotency-key"] == notify.event_id(sub["id"], _outbox_pk(hub, patient["id"]))
    assert notify.verify(secret, got.headers["x-fhirhub-signature"], got.headers["idempotency-key"], got.body, tolerance=60)
    assert not notify.verify("wrong", got.headers["x-fhirhub-signature"], got.headers["idempotency-key"], got.body)


def _outbox_pk(hub: Hub, res_id: str) -> int:
    from sqlalchemy import select

    from hub.store.tables import outbox_t

    with hub.ctx.db.read() as conn:
        return int(conn.execute(select(outbox_t.c.pk).where(outbox_t.c.res_id == res_id)).scalar_one())


async def test_no_payload_is_an_empty_post(running: tuple[Hub, SubscriptionService], http_receiver: Receiver) -> None:
    hub, service = running
    await post(hub, "Subscription", subscription(http_receiver.url + "/ping", "Organization?"))
    await service.drain()
    org = await post(hub, "Organization", {"resourceType": "Organization", "name": "x"})
    await service.drain()
    [got] = await asyncio.to_thread(http_receiver.count, 1)
    assert (got.method, got.path, got.body) == ("POST", "/ping", b"")
    assert got.headers["x-fhirhub-event"] == f"Organization/{org['id']}/_history/1"


async def test_every_version_arrives_in_order_through_failures(running: tuple[Hub, SubscriptionService],
                                                               http_receiver: Receiver) -> None:
    hub, service = running
    failures = {"left": 12}

    def flaky(_: Any) -> int:
        if failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return 200

    http_receiver.answer = flaky
    await post(hub, "Subscription", subscription(http_receiver.url, "Patient?", channel={"payload": "application/fhir+json"}))
    await service.drain()
    ids = [(await post(hub, "Patient", {"resourceType": "Patient", "active": True}))["id"] for _ in range(4)]
    for version in range(2, 6):
        for pid in ids:
            await put(hub, f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "active": True, "birthDate": f"200{version}"})
    await service.drain()
    got = await asyncio.to_thread(http_receiver.count, 20)
    for pid in ids:
        versions = [orjson.loads(r.body)["meta"]["versionId"] for r in got if r.path.endswith(pid)]
        assert versions == ["1", "2", "3", "4", "5"], (pid, versions)


async def test_dead_deliveries_are_parked_shown_and_resent(running: tuple[Hub, SubscriptionService],
                                                           http_receiver: Receiver) -> None:
    hub, service = running
    http_receiver.status = 500
    sub = await post(hub, "Subscription", subscription(http_receiver.url, "Location?"))
    await service.drain()
    for n in range(3):
        await post(hub, "Location", {"resourceType": "Location", "name": f"room {n}"})
    await service.drain()  # retries for 3 s, then parks them dead
    status = (await get(hub, f"Subscription/{sub['id']}/$status"))["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    assert params["status"]["valueCode"] == "error"
    assert params["dead"]["valueInteger"] == 3 and params["backlog"]["valueInteger"] == 0
    assert params["last-error"]["valueString"] == "HTTP 500"
    await _wait_resource_status(hub, sub["id"], "error")
    assert "deliveries keep failing" in (await get(hub, f"Subscription/{sub['id']}"))["error"]

    http_receiver.status = 200
    resent = await asyncio.to_thread(lambda: ok(call(hub, "POST", f"Subscription/{sub['id']}/$resend",
                                                     {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "dead"}]})))
    assert resent["parameter"][0]["valueInteger"] == 3
    await asyncio.to_thread(http_receiver.count, 3)
    await service.drain()
    await _wait_resource_status(hub, sub["id"], "active")
    status = (await get(hub, f"Subscription/{sub['id']}/$status"))["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    assert (params["dead"]["valueInteger"], params["backlog"]["valueInteger"]) == (0, 0)


async def _wait_resource_status(hub: Hub, sub_id: str, status: str) -> None:
    for _ in range(500):
        if (await get(hub, f"Subscription/{sub_id}"))["status"] == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"Subscription/{sub_id} never became {status}")


async def test_change_trigger_and_interactions_extensions(running: tuple[Hub, SubscriptionService],
                                                          http_receiver: Receiver) -> None:
    hub, service = running
    await post(hub, "Subscription", subscription(http_receiver.url + "/noshow", "Appointment?", extension=[
        {"url": spec.EXT_CONDITION, "valueString": "%previous.status != 'noshow' and %current.status = 'noshow'"}]))
    await post(hub, "Subscription", subscription(http_receiver.url + "/deleted", "Appointment?", extension=[
        {"url": spec.EXT_INTERACTION, "valueCode": "delete"}]))
    await service.drain()
    appt = {"resourceType": "Appointment", "status": "booked", "start": "2026-12-08T09:00:00Z", "end": "2026-12-08T09:30:00Z",
            "participant": [{"actor": {"display": "x"}, "status": "accepted"}]}
    created = await post(hub, "Appointment", appt)
    await put(hub, f"Appointment/{created['id']}", {**appt, "id": created["id"], "status": "noshow"})
    await put(hub, f"Appointment/{created['id']}", {**appt, "id": created["id"], "status": "noshow", "comment": "called"})
    await asyncio.to_thread(lambda: call(hub, "DELETE", f"Appointment/{created['id']}"))
    await service.drain()
    got = await asyncio.to_thread(http_receiver.count, 2)
    assert sorted((r.path, r.headers["x-fhirhub-event"].split("/_history/")[1], r.headers["x-fhirhub-interaction"]) for r in got) == [
        ("/deleted", "4", "delete"), ("/noshow", "2", "update")]


async def test_bad_subscriptions_go_to_error_with_the_reason(running: tuple[Hub, SubscriptionService]) -> None:
    hub, service = running
    bad = await post(hub, "Subscription", subscription("http://127.0.0.1:9/x", "Patient?nonsense-param=1"))
    chained = await post(hub, "Subscription", subscription("http://127.0.0.1:9/x", "Observation?subject.name=x"))
    topic = await post(hub, "Subscription", subscription("http://127.0.0.1:9/x", "https://example.org/no-such-topic"))
    await service.drain()
    for sid, words in ((bad["id"], "nonsense-param"), (chained["id"], "criteria"), (topic["id"], "unknown subscription topic")):
        await _wait_resource_status(hub, sid, "error")
        assert words in (await get(hub, f"Subscription/{sid}"))["error"]


async def test_topic_subscription_handshake_events_heartbeat_status(running: tuple[Hub, SubscriptionService],
                                                                     http_receiver: Receiver) -> None:
    hub, service = running
    sub = await post(hub, "Subscription", {
        "resourceType": "Subscription", "status": "requested", "reason": "booked appointments of one patient",
        "meta": {"profile": [spec.PROFILE_BACKPORT]},
        "criteria": "https://fhirhub.dev/SubscriptionTopic/appointment-booked",
        "_criteria": {"extension": [{"url": spec.EXT_FILTER, "valueString": "Appointment?patient=Patient/p1"}]},
        "channel": {"type": "rest-hook", "endpoint": http_receiver.url + "/notify", "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": spec.EXT_CONTENT, "valueCode": "full-resource"}]},
                    "extension": [{"url": spec.EXT_HEARTBEAT, "valueUnsignedInt": 1}]},
    })
    await service.drain()
    first = (await asyncio.to_thread(http_receiver.count, 1))[0]
    assert _param(first.json()["entry"][0]["resource"], "type") == "handshake"
    await _wait_resource_status(hub, sub["id"], "active")

    def appt(pid: str, status: str) -> dict[str, Any]:
        return {"resourceType": "Appointment", "status": status, "start": "2026-12-08T09:00:00Z", "end": "2026-12-08T09:30:00Z",
                "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]}

    await put(hub, "Patient/p1", {"resourceType": "Patient", "id": "p1"})
    await put(hub, "Patient/p2", {"resourceType": "Patient", "id": "p2"})
    first = await post(hub, "Appointment", appt("p1", "booked"))
    await post(hub, "Appointment", appt("p2", "booked"))  # filtered out
    second = await post(hub, "Appointment", appt("p1", "proposed"))  # not booked: no event
    await put(hub, f"Appointment/{second['id']}", {**appt("p1", "booked"), "id": second["id"]})  # became booked
    await service.drain()
    got = await asyncio.to_thread(http_receiver.wait_for,
                                  lambda rs: len([r for r in rs if _kind(r) == "event-notification"]) >= 2)
    # order is kept per resource, not across resources: two resources' notifications may arrive either way round,
    # and their numbers (eventsSinceSubscriptionStart) tell the receiver the order of the changes
    events = sorted((r.json() for r in got if _kind(r) == "event-notification"),
                    key=lambda b: int(_param(b["entry"][0]["resource"], "events-since-subscription-start")))
    assert [_param(b["entry"][0]["resource"], "events-since-subscription-start") for b in events] == ["1", "2"]
    assert [b["entry"][1]["resource"]["id"] for b in events] == [first["id"], second["id"]]
    assert [b["entry"][1]["request"]["method"] for b in events] == ["POST", "PUT"]
    # a heartbeat follows when nothing happens for the heartbeat period
    await asyncio.to_thread(http_receiver.wait_for, lambda rs: any(_kind(r) == "heartbeat" for r in rs), 10)
    # $events replays them, $status tells the count
    replay = await get(hub, f"Subscription/{sub['id']}/$events?eventsSinceNumber=2&content=id-only")
    assert _param(replay["entry"][0]["resource"], "type") == "query-event"
    assert [e["fullUrl"].rsplit("/", 1)[1] for e in replay["entry"][1:]] == [second["id"]]
    assert "resource" not in replay["entry"][1]
    status = (await get(hub, f"Subscription/{sub['id']}/$status"))["entry"][0]["resource"]
    assert _param(status, "events-since-subscription-start") == "2"
    assert _param(status, "topic") == "https://fhirhub.dev/SubscriptionTopic/appointment-booked"


def _kind(r: Any) -> str:
    return str(_param(r.json()["entry"][0]["resource"], "type"))


def _param(params: dict[str, Any], name: str) -> Any:
    for p in params["parameter"]:
        if p["name"] == name:
            return next(v for k, v in p.items() if k.startswith("value"))
    return None


async def test_one_failing_endpoint_does_not_hold_up_another(running: tuple[Hub, SubscriptionService],
                                                             http_receiver: Receiver) -> None:
    from tests.subscriptions.helpers import receiver

    hub, service = running
    with receiver() as slow:
        slow.delay = 3.0  # longer than the 2 s timeout: every attempt times out
        await post(hub, "Subscription", subscription(slow.url, "Patient?"))
        await post(hub, "Subscription", subscription(http_receiver.url, "Patient?"))
        await service.drain()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(30):
            await post(hub, "Patient", {"resourceType": "Patient"})
        await service.dispatch_all()
        await asyncio.to_thread(http_receiver.count, 30, 10)
        assert loop.time() - started < 5.0
        assert len(slow.requests) == 0


async def test_a_dispatcher_whose_cursor_moved_under_it_writes_nothing(running: tuple[Hub, SubscriptionService],
                                                                       http_receiver: Receiver) -> None:
    """Two services on one database: the cursor is compare-and-set, so a batch is applied once."""
    from sqlalchemy import func, select

    from hub.subscriptions.dispatcher import CursorMoved, Dispatcher
    from hub.subscriptions.tables import delivery_t

    hub, service = running
    await post(hub, "Subscription", subscription(http_receiver.url, "Patient?"))
    await service.drain()
    stale = Dispatcher(service)
    await asyncio.to_thread(stale.load_cursor)  # where the other process believes the cursor is
    for n in range(3):
        await post(hub, "Patient", {"resourceType": "Patient", "birthDate": f"199{n}-01-01"})
    await service.drain()  # this one applies the batch and moves the cursor

    def deliveries() -> int:
        with hub.ctx.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(delivery_t)).scalar_one())

    before = await asyncio.to_thread(deliveries)
    assert before == 3
    stale.persisted_at = 0.0
    with pytest.raises(CursorMoved):
        await asyncio.to_thread(stale.step)
    assert await asyncio.to_thread(deliveries) == before  # rolled back: no row twice
