"""Real parts for the subscription tests: an HTTP receiver, an SMTP server, an in-process hub."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiosmtpd.controller import Controller

from hub.app import Hub
from hub.fhir.definitions import Definitions
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest, FhirResponse
from hub.interactions.router import FhirRouter
from hub.security.audit import AuditTrail
from hub.settings import Settings
from hub.store.db import Database
from hub.store.repository import Repository
from hub.store.schema import upgrade

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- HTTP receiver
@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP endpoint that records every request; ``status``/``delay`` decide its answers."""

    server: http.server.ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    status: int = 200
    delay: float = 0.0
    answer: Callable[[Received], int] | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: condition not met within {timeout} s ({len(self.requests)} requests)")
                self.cond.wait(left)
            return list(self.requests)

    def count(self, n: int, timeout: float = 30.0) -> list[Received]:
        return self.wait_for(lambda reqs: len(reqs) >= n, timeout)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def _handle(self) -> None:
        rec: Receiver = self.server.receiver  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        item = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
        if rec.delay:
            time.sleep(rec.delay)
        status = rec.answer(item) if rec.answer is not None else rec.status
        if 200 <= status < 300:
            with rec.cond:
                rec.requests.append(item)
                rec.cond.notify_all()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = _handle


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    rec = Receiver(server)
    server.receiver = rec  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------- SMTP
@dataclass
class Mailbox:
    messages: list[dict[str, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        from email import message_from_bytes

        msg = message_from_bytes(envelope.content)
        body = msg.get_payload(decode=True)
        item = {"to": ",".join(envelope.rcpt_tos), "subject": str(msg["Subject"]), "message_id": str(msg["Message-ID"]),
                "text": body.decode() if isinstance(body, bytes) else str(body)}
        with self.cond:
            self.messages.append(item)
            self.cond.notify_all()
        return "250 OK"

    def wait_for(self, n: int, timeout: float = 30.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"mailbox: {len(self.messages)} of {n} messages within {timeout} s")
                self.cond.wait(left)
            return list(self.messages)


@contextlib.contextmanager
def smtp_server() -> Iterator[Mailbox]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    box.port = controller.port
    try:
        yield box
    finally:
        controller.stop()


# ----------------------------------------------------------------------------- in-process hub
@functools.cache
def _shared() -> tuple[Definitions, Any, Any]:
    from hub.search.params import Registry
    from hub.validation import Validator

    settings = Settings()
    return Definitions.load(settings.profiles_dir), Validator.load(settings.profiles_dir), Registry.load(settings.profiles_dir)


def make_hub(db_url: str, **overrides: Any) -> Hub:
    """A hub like ``build_hub`` builds, sharing the expensive conformance content between tests."""
    from hub.search.engine import SearchEngine
    from hub.search.index import SearchIndexer

    settings = Settings(database_url=db_url, **overrides)
    definitions, validator, registry = _shared()
    db = Database(settings.database_url, 5)
    upgrade(db)
    ctx = Context(settings=settings, db=db, repo=Repository(indexer=SearchIndexer(registry)), definitions=definitions,
                  validator=validator, search=SearchEngine(registry), audit=AuditTrail(db))
    return Hub(settings, ctx, FhirRouter(ctx))


def call(hub: Hub, method: str, path: str, body: Any = None, **headers: str) -> FhirResponse:
    params: list[tuple[str, str]] = []
    if "?" in path:
        from urllib.parse import parse_qsl

        path, _, qs = path.partition("?")
        params = parse_qsl(qs, keep_blank_values=True)
    req = FhirRequest(method, path, params=params, headers={k.lower().replace("_", "-"): v for k, v in headers.items()},
                      body=body, base_url="http://hub.test/fhir")
    return hub.router.dispatch(req)


def ok(resp: FhirResponse) -> dict[str, Any]:
    assert resp.status < 300, (resp.status, resp.body[:2000] if resp.body else None)
    if resp.body:
        parsed: dict[str, Any] = orjson.loads(resp.body)
        return parsed
    assert resp.stored is not None and resp.stored.data is not None
    stored: dict[str, Any] = orjson.loads(resp.stored.data)
    return stored


class FakeClock:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)
