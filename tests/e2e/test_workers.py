"""``fhirhub serve`` with FHIRHUB_WORKERS=2: API workers beside the services process (hub/workers.py).

The real server as a subprocess: concurrent writes through both workers all land once; a change written by a
worker reaches a rest-hook subscription, whose dispatcher runs in the primary; the subscription operations are
answered through a worker (forwarded to the primary); and the workers end with the primary, also after a SIGKILL.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server import alive, running_hub
from tests.subscriptions.helpers import receiver

pytestmark = pytest.mark.timeout(300)


def _children(pid: int, kind: bytes = b"--worker-fd") -> list[int]:
    """The hub's API workers (``--worker-fd``), or its subscription sender processes (``hub.subscriptions.transport``)."""
    found = []
    try:
        pids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    for child in pids:
        try:
            if kind in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


SENDER = b"hub.subscriptions.transport"


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _env(tmp_path: Path) -> dict[str, str]:
    workflows = tmp_path / "workflows"
    workflows.mkdir(exist_ok=True)
    return {"FHIRHUB_AUTH": "off", "FHIRHUB_RATE_LIMIT": "0", "FHIRHUB_WORKERS": "2", "FHIRHUB_WORKFLOWS_DIR": str(workflows)}


def test_workers_share_the_write_path_and_the_services(db_url: str, tmp_path: Path) -> None:
    with receiver() as http_receiver, running_hub(db_url, tmp_path, _env(tmp_path)) as hub:
        _wait(lambda: len(_children(hub.proc.pid)) == 2, 30, "two API workers")
        with httpx.Client(base_url=hub.base, timeout=60) as client:
            r = client.post("/Subscription", json={
                "resourceType": "Subscription", "status": "requested", "reason": "t", "criteria": "Patient?gender=female",
                "channel": {"type": "rest-hook", "endpoint": http_receiver.url, "payload": "application/fhir+json"}})
            assert r.status_code == 201, r.text
            sub_id = r.json()["id"]
            # the operation is the services' own: a worker forwards it to the primary
            _wait(lambda: client.get(f"/Subscription/{sub_id}/$status").json().get("total") == 1, 30,
                  "the primary's dispatcher to know the subscription ($status through a worker)")

        def create(n: int) -> str:
            # a connection per call: the kernel spreads them over both workers
            with httpx.Client(base_url=hub.base, timeout=60) as c:
                resp = c.post("/Patient", json={"resourceType": "Patient", "gender": "female" if n % 2 else "male",
                                                "identifier": [{"system": "urn:workers", "value": str(n)}]})
                assert resp.status_code == 201, resp.text
                return str(resp.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(80)))
        assert len(set(ids)) == 80
        with httpx.Client(base_url=hub.base, timeout=60) as client:
            total = client.get("/Patient", params={"identifier": "urn:workers|", "_summary": "count"}).json()["total"]
            assert total == 80
            females = {i for n, i in enumerate(ids) if n % 2}
            got = http_receiver.wait_for(lambda rs: {r.path.rsplit("/", 1)[-1] for r in rs} >= females, 60)
            assert {r.path.rsplit("/", 1)[-1] for r in got} == females  # and nothing for the others
            status = client.get(f"/Subscription/{sub_id}/$status")
            assert status.status_code == 200 and status.headers["content-type"].startswith("application/fhir+json")
            assert status.json()["entry"][0]["resource"]["resourceType"] == "Parameters"
            # every process describes the same server
            for _ in range(6):
                with httpx.Client(base_url=hub.base, timeout=60) as fresh:
                    ops = {o["name"] for o in fresh.get("/metadata").json()["rest"][0].get("operation", [])}
                assert {"status", "events", "resend", "workflow-runs", "everything"} <= ops, ops
            missing = client.get("/Subscription/not-there/$status")
            assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
        workers = _children(hub.proc.pid)
        senders = _children(hub.proc.pid, SENDER)
        assert len(senders) == 1  # with API workers, the deliveries' HTTP goes through one sender process
        hub.proc.send_signal(signal.SIGTERM)
        hub.proc.wait(30)
        _wait(lambda: not any(alive(w) for w in workers + senders), 30, "the workers and the sender to stop with the primary")


def test_workers_end_when_the_primary_is_killed(db_url: str, tmp_path: Path) -> None:
    with running_hub(db_url, tmp_path, _env(tmp_path)) as hub:
        _wait(lambda: len(_children(hub.proc.pid)) == 2, 30, "two API workers")
        _wait(lambda: len(_children(hub.proc.pid, SENDER)) == 1, 30, "the subscription sender process")
        workers = _children(hub.proc.pid) + _children(hub.proc.pid, SENDER)
        hub.kill()
        _wait(lambda: not any(alive(w) for w in workers), 30, "orphaned workers and sender to stop")
