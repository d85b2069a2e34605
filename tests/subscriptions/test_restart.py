"""The real server, killed with SIGKILL during a delivery backlog and during a workflow wait.

Afterwards every change has been delivered at least once (the receiver dedupes by the
Idempotency-Key) and no workflow step has been applied twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import alive, running_hub
from tests.subscriptions.helpers import Mailbox, Receiver

pytestmark = pytest.mark.timeout(300)


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    workflows = tmp_path / "workflows"
    workflows.mkdir(exist_ok=True)
    empty = tmp_path / "no-connectors"
    empty.mkdir(exist_ok=True)
    return {"FHIRHUB_AUTH": "off", "FHIRHUB_RATE_LIMIT": "0", "FHIRHUB_WORKFLOWS_DIR": str(workflows),
            "FHIRHUB_CONNECTORS_DIR": str(empty), "FHIRHUB_SYNC_CONNECTORS_DIR": str(empty),
            "FHIRHUB_SUBSCRIPTION_RETRY_INITIAL": "0.2", "FHIRHUB_SUBSCRIPTION_RETRY_MAX": "1", **extra}


def sender_processes(parent: int) -> list[int]:
    """The hub's sender processes (hub/subscriptions/transport.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"hub.subscriptions.transport" in (entry / "cmdline").read_bytes() \
                    and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("senders", ["0", "1"], ids=["sent-in-process", "sender-process"])
def test_sigkill_during_a_delivery_backlog(db_url: str, tmp_path: Path, http_receiver: Receiver, senders: str) -> None:
    http_receiver.delay = 0.01
    settings = env(tmp_path, FHIRHUB_SUBSCRIPTION_CONCURRENCY="2", FHIRHUB_SUBSCRIPTION_SENDERS=senders)
    with running_hub(db_url, tmp_path, settings) as hub:
        with httpx.Client(base_url=hub.base, timeout=60) as client:
            r = client.post("/Subscription", json={
                "resourceType": "Subscription", "status": "requested", "reason": "t", "criteria": "Patient?",
                "channel": {"type": "rest-hook", "endpoint": http_receiver.url, "payload": "application/fhir+json"}})
            assert r.status_code == 201, r.text
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "birthDate": "1990-01-01"}}
                for _ in range(200)]}
            created = []
            for _ in range(2):
                resp = client.post("", json=bundle)
                assert resp.status_code == 200, resp.text
                created += [e["response"]["location"].split("/")[1] for e in resp.json()["entry"]]
        http_receiver.count(40, 60)  # deliveries are flowing, most of the backlog is still ahead
        assert len(sender_processes(hub.proc.pid)) == int(senders)
        senders_before = sender_processes(hub.proc.pid)
        hub.kill()
    wait_until(lambda: not any(alive(pid) for pid in senders_before), 10,
               "the sender process to end with the hub that started it")
    assert len(http_receiver.requests) < 400
    with running_hub(db_url, tmp_path, settings):
        got = http_receiver.wait_for(lambda rs: {r.path.rsplit("/", 1)[1] for r in rs} >= set(created), 120)
    received = {r.path.rsplit("/", 1)[1] for r in got}
    assert received >= set(created)
    keys: dict[str, set[str]] = {}
    for r in got:
        keys.setdefault(r.path.rsplit("/", 1)[1], set()).add(r.headers["idempotency-key"])
    assert all(len(k) == 1 for k in keys.values()), "a redelivery must carry the same Idempotency-Key"


WORKFLOW = """
trigger:
  resource: Appointment
  interactions: [create]
  criteria: status=booked
context:
  patient: "%resource.participant.actor.reference.where($this.startsWith('Patient/')).first()"
steps:
  - name: before
    create:
      resource: {resourceType: Task, status: requested, intent: order, code: {text: before}, focus: {reference: "Appointment/{{ %resource.id }}"}}
  - name: pause
    wait: {duration: 6s}
  - name: remind
    send:
      to: "%patient"
      text: {en: "See you at {{ %resource.start | time }}"}
  - name: after
    create:
      resource: {resourceType: Task, status: requested, intent: order, code: {text: after}, focus: {reference: "Appointment/{{ %resource.id }}"}}
"""


def test_sigkill_during_a_workflow_wait(db_url: str, tmp_path: Path, mailbox: Mailbox) -> None:
    settings = env(tmp_path, FHIRHUB_SMTP_HOST="127.0.0.1", FHIRHUB_SMTP_PORT=str(mailbox.port))
    (tmp_path / "workflows" / "remind.yaml").write_text(WORKFLOW)
    with running_hub(db_url, tmp_path, settings) as hub, httpx.Client(base_url=hub.base, timeout=60) as client:
        for n in range(5):
            assert client.put(f"/Patient/p{n}", json={"resourceType": "Patient", "id": f"p{n}", "telecom": [
                {"system": "email", "value": f"p{n}@example.org"}]}).status_code in (200, 201)
            assert client.post("/Appointment", json={
                "resourceType": "Appointment", "status": "booked", "start": "2026-12-08T09:00:00Z", "end": "2026-12-08T09:30:00Z",
                "participant": [{"actor": {"reference": f"Patient/p{n}"}, "status": "accepted"}]}).status_code == 201

        def tasks(code: str) -> int:
            return int(client.get("/Task", params={"_summary": "count"}).json()["total"]) if code == "*" else \
                len([e for e in client.get("/Task", params={"_count": "100"}).json().get("entry", [])
                     if e["resource"]["code"]["text"] == code])

        wait_until(lambda: tasks("before") == 5, 60, "the first step of every run")
        # a run commits its first step's Task, then records its wait in a transaction of its own: wait for both
        wait_until(lambda: client.get("/$workflow-runs", params={"status": "waiting"}).json()["total"] == 5, 5,
                   "every run waiting (the wait is 6 s)")
        hub.kill()  # during the wait
    assert mailbox.messages == []
    with running_hub(db_url, tmp_path, settings) as hub, httpx.Client(base_url=hub.base, timeout=60) as client:
        mailbox.wait_for(5, 120)
        wait_until(lambda: client.get("/$workflow-runs", params={"status": "succeeded"}).json()["total"] == 5, 60,
                   "every run to finish")
        entries = [e["resource"] for e in client.get("/Task", params={"_count": "100"}).json()["entry"]]
        assert sorted(t["code"]["text"] for t in entries) == ["after"] * 5 + ["before"] * 5
        comms = client.get("/Communication", params={"_count": "100"}).json()["entry"]
        assert sorted(c["resource"]["status"] for c in comms) == ["completed"] * 5
    assert len(mailbox.messages) == 5
    assert len({m["message_id"] for m in mailbox.messages}) == 5
    assert sorted(m["to"] for m in mailbox.messages) == [f"p{n}@example.org" for n in range(5)]
