"""The HTTP attempt, in this process and in sender processes, against a real local receiver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.subscriptions.notify import Request
from hub.subscriptions.transport import SenderProcesses, Sessions, Transport
from tests.subscriptions.helpers import Receiver

pytestmark = pytest.mark.timeout(60)


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(url: str, n: int, body: bytes | None = None) -> Request:
    return Request("PUT", f"{url}/Patient/p{n}", body if body is not None else b'{"n": %d}' % n,
                   {"Content-Type": "application/fhir+json", "Idempotency-Key": f"key-{n}"})


@contextlib.asynccontextmanager
async def one_sender(timeout: float) -> AsyncIterator[tuple[SenderProcesses, Any, int]]:
    """One sender process, its slot, and the pid it started with; closed after."""
    transport = SenderProcesses(1, 4, timeout)
    await transport.start()
    try:
        child = transport.children[0]
        assert child.proc is not None
        yield transport, child, child.proc.pid
    finally:
        await transport.close()


async def restarted(child: Any, first: int) -> None:
    """Wait until the sender slot runs a new process in place of ``first``."""
    for _ in range(100):
        if child.proc is not None and child.proc.pid != first and child.proc.returncode is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the sender process was not started again")


@pytest.fixture(params=["in-process", "sender-processes"])
def make_transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(kind: str, timeout: float = 5.0) -> Transport:
    return Sessions(4, timeout) if kind == "in-process" else SenderProcesses(2, 4, timeout)


@pytest.mark.asyncio
async def test_every_request_arrives_whole_and_each_answer_goes_to_its_caller(make_transport: str, http_receiver: Receiver) -> None:
    transport = build(make_transport)
    await transport.start()
    try:
        http_receiver.answer = lambda r: 200 if r.path.endswith(("0", "2", "4", "6", "8")) else 500
        binary = bytes(range(256)) * 40  # any bytes, longer than a pipe write
        results = await asyncio.gather(*(transport.send(http_receiver.url, request(http_receiver.url, n, binary + b"%d" % n))
                                         for n in range(40)))
    finally:
        await transport.close()
    for n, result in enumerate(results):
        assert result == ((200, None) if n % 2 == 0 else (500, "HTTP 500")), n
    got = {r.path: r for r in http_receiver.requests}
    assert sorted(got) == sorted(f"/Patient/p{n}" for n in range(0, 40, 2))
    for n in range(0, 40, 2):
        r = got[f"/Patient/p{n}"]
        assert r.method == "PUT" and r.body == binary + b"%d" % n and r.headers["idempotency-key"] == f"key-{n}"


@pytest.mark.asyncio
async def test_failures_are_answers_not_exceptions(make_transport: str, http_receiver: Receiver) -> None:
    transport = build(make_transport, timeout=0.5)
    await transport.start()
    try:
        dead = f"http://127.0.0.1:{refused_port()}"
        status, error = await transport.send(dead, request(dead, 1))
        assert status is None and error is not None and error.startswith("connection failed")
        http_receiver.delay = 1.5
        assert await transport.send(http_receiver.url, request(http_receiver.url, 2)) == (None, "timed out")
        http_receiver.delay = 0
        assert await transport.send(http_receiver.url, request(http_receiver.url, 3)) == (200, None)
    finally:
        await transport.close()


@pytest.mark.asyncio
async def test_a_killed_sender_fails_its_attempts_in_flight_and_is_started_again(http_receiver: Receiver) -> None:
    async with one_sender(10.0) as (transport, child, first):
        http_receiver.delay = 2.0
        waiting = asyncio.ensure_future(transport.send(http_receiver.url, request(http_receiver.url, 1)))
        await asyncio.sleep(0.5)  # the attempt is in the child, waiting for the slow receiver
        os.kill(first, signal.SIGKILL)
        assert await waiting == (None, "sender process exited")  # retried later like any failed attempt
        http_receiver.delay = 0
        await restarted(child, first)
        assert child.proc is not None and child.proc.pid != first
        assert await transport.send(http_receiver.url, request(http_receiver.url, 2)) == (200, None)
    assert child.proc.returncode is not None  # closing ends the child


@pytest.mark.asyncio
async def test_a_sender_that_stops_answering_is_replaced(http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.subscriptions import transport as module

    monkeypatch.setattr(module, "GRACE", 0.5)
    async with one_sender(1.0) as (transport, child, first):
        os.kill(first, signal.SIGSTOP)  # alive, but it will never answer
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await transport.send(http_receiver.url, request(http_receiver.url, 1)) == (None, "sender process exited")
        assert loop.time() - started < 10
        await restarted(child, first)
        assert await transport.send(http_receiver.url, request(http_receiver.url, 2)) == (200, None)
