"""Processes: API workers beside one services process (``fhirhub serve --workers N``, ``FHIRHUB_WORKERS``).

One Python process runs one core's worth of Python. With ``workers`` above 1, ``fhirhub serve`` becomes:

* the **primary** (this process): it migrates the database, runs the background services (subscription
  dispatcher and deliveries, workflows, MLLP listeners and senders, EHR sync) and serves the whole app on a
  private Unix socket, for the requests only it can answer;
* **N API workers** (``python -m hub serve --worker-fd FD --primary PATH``): each serves the REST API on the
  public address, on a listening socket of its own that it inherits from the primary (``bind``: one per
  worker on the same port, ``SO_REUSEPORT``; the kernel spreads new connections over them). They run no
  background service. Requests for what the services own (the subscription operations ``$status``,
  ``$events``, ``$resend``, ``$workflow-runs``, and ``/admin/…`` and ``/sync/…``) are forwarded to the
  primary over its socket, with the caller's token, address and scheme.

Every process writes through the same repository function; on SQLite they queue on one file lock
(:class:`hub.store.db.WriteLock`). The primary learns of commits made by the workers (SQLite: ``PRAGMA
data_version``, looked at every ``POLL`` seconds; PostgreSQL: the ``NOTIFY`` each worker sends after its commits,
:class:`CommitAnnouncer`) and wakes its consumers as for its own commits. A worker whose primary is gone shuts itself down; the primary restarts a worker that exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

if TYPE_CHECKING:
    from hub.app import Hub
    from hub.store.db import Database

log = logging.getLogger("hub.workers")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

POLL = 0.005  # SQLite: seconds between the primary's looks for commits of other processes
OUTBOX_CHANNEL = "fhirhub_outbox"  # PostgreSQL: API workers NOTIFY here after they commit (payload: the schema)
SERVICE_OPERATIONS = frozenset({"$status", "$events", "$resend", "$workflow-runs"})  # hub.subscriptions.operations
SERVICE_PREFIXES = ("/admin/", "/sync/")  # hub.hl7.api, hub.sync.api
FORWARDED_CLIENT = b"x-fhirhub-forwarded-for"
FORWARDED_PROTO = b"x-fhirhub-forwarded-proto"
HOP_HEADERS = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade", FORWARDED_CLIENT, FORWARDED_PROTO}


def is_service_path(path: str) -> bool:
    """Whether only the primary (where the background services run) can answer a request for ``path``."""
    if path.startswith(SERVICE_PREFIXES):
        return True
    if path.startswith("/fhir/"):
        return path.rstrip("/").rsplit("/", 1)[-1] in SERVICE_OPERATIONS
    return False


class ForwardToPrimary:
    """ASGI middleware of an API worker: service-owned requests go to the primary, the rest to the app."""

    def __init__(self, app: ASGIApp, uds: str, max_body: int) -> None:
        self.app = app
        self.uds = uds
        self.max_body = max_body
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_service_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _answer(send, 413, "FHIRHUB-BODY-TOO-LARGE", "The request body is too large")
                return
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_HEADERS]
        client = scope.get("client")
        headers.append((FORWARDED_CLIENT, (client[0] if client else "").encode()))
        headers.append((FORWARDED_PROTO, scope.get("scheme", "http").encode()))
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        if self._client is None:
            self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.uds), timeout=120)
        try:
            resp = await self._client.request(scope["method"], "http://primary" + target.decode("latin-1"),
                                              headers=headers, content=bytes(body))
        except httpx.HTTPError as exc:
            log.error("forwarding to the primary failed (%s)", type(exc).__name__)
            await _answer(send, 503, "FHIRHUB-PRIMARY-UNAVAILABLE", "The hub's services process is not answering; try again")
            return
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.multi_items()
               if k.lower().encode() not in HOP_HEADERS and k.lower() != "content-encoding"]
        out.append((b"content-length", str(len(resp.content)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
        await send({"type": "http.response.body", "body": resp.content})


async def _answer(send: Send, status: int, code: str, text: str) -> None:
    from hub.errors import Category, FhirError

    category = Category.TOO_LARGE if status == 413 else Category.TRANSIENT
    body = orjson.dumps(FhirError(category, code, text).outcome())
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/fhir+json; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def advertise_service_operations(router: Any) -> None:
    """In an API worker: list the services' operations in the CapabilityStatement, as the primary does. Their
    requests never reach the worker's router (:class:`ForwardToPrimary` sends them on first)."""
    from hub.errors import Category, FhirError

    def forwarded(_req: Any, _route: Any) -> Any:
        raise FhirError(Category.TRANSIENT, "FHIRHUB-PRIMARY-ONLY", "This operation is answered by the services process")

    for name in SERVICE_OPERATIONS:
        router.operations.setdefault(name, forwarded)


class FromWorkers:
    """ASGI middleware of the primary: a request that came over the private socket (no peer address) was
    forwarded by a worker, and carries the caller's address and scheme; anything else is taken as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("client"):
            headers = dict(scope["headers"])
            address = headers.get(FORWARDED_CLIENT)
            proto = headers.get(FORWARDED_PROTO)
            if address is not None:
                scope = dict(scope)
                scope["client"] = (address.decode("latin-1"), 0) if address else None
                if proto in (b"http", b"https"):
                    scope["scheme"] = proto.decode()
        await self.app(scope, receive, send)


def bind(host: str, port: int, count: int = 1) -> list[socket.socket]:
    """The public listening sockets, one per API worker, all bound to the same address with ``SO_REUSEPORT``:
    the kernel spreads new connections over them (by a hash of each connection's addresses). With one socket
    shared by every worker, whichever worker woke first took every connection waiting (uvloop accepts until
    the queue is empty): sixteen clients connecting at once could all land on one worker, leaving the other
    idle. A worker that exits leaves its socket here, and what waits in its queue goes to the worker started
    in its place. A plain bind first checks that nobody listens on the port: sockets with ``SO_REUSEPORT``
    would otherwise join those of a hub already running there (same user) and share its connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # OSError (address in use) if anything listens there, our kind included
        port = probe.getsockname()[1]
    socks: list[socket.socket] = []
    try:
        for _ in range(max(1, count)):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class WorkerPool:
    """A service of the primary: starts the API workers, restarts one that exits, stops them first on
    shutdown; and wakes the primary's outbox consumers when a worker commits."""

    name = "API workers"

    def __init__(self, hub: Hub, count: int, socks: list[socket.socket], uds: str) -> None:
        self.hub = hub
        self.count = count
        self.socks = socks  # one per worker (bind): worker i, and whoever replaces it, serves socks[i]
        self.uds = uds
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = False
        self._watch: threading.Thread | None = None
        self._monitor: asyncio.Task[None] | None = None

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        fd = self.socks[slot % len(self.socks)].fileno()
        cmd = [sys.executable, "-m", "hub", "serve", "--worker-fd", str(fd), "--primary", self.uds]
        env = {**os.environ, "FHIRHUB_WORKERS": str(self.count)}  # the worker sizes its share of the pool by it
        return subprocess.Popen(cmd, pass_fds=(fd,), env=env)

    async def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.count)]
        self._watch = threading.Thread(target=self._watch_outbox, name="outbox-watch", daemon=True)
        self._watch.start()
        self._monitor = asyncio.create_task(self._keep_alive(), name="worker monitor")
        log.info("started %d API workers", self.count)

    async def _keep_alive(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stopping:
                    log.error("API worker pid=%d exited with %s; starting another", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn(i)

    def _watch_outbox(self) -> None:
        """Wake the primary's consumers when another process commits.

        SQLite: ``PRAGMA data_version`` on a connection of our own changes when any other connection commits
        (no SQL to plan, no table read), looked at every ``POLL`` seconds. PostgreSQL: ``LISTEN`` for the
        notifications the API workers send after they commit (:class:`CommitAnnouncer`); nothing is polled.
        Other writers (``fhirhub load``) are found by each consumer's recovery poll.
        """
        db = self.hub.ctx.db
        while not self._stopping:
            try:
                if db.is_sqlite:
                    self._poll_data_version()
                else:
                    self._listen()
            except Exception as exc:  # noqa: BLE001 - the slow poll of each consumer remains the fallback
                log.warning("outbox watch failed (%s)", type(exc).__name__)
                time.sleep(1)

    def _poll_data_version(self) -> None:
        db, changes = self.hub.ctx.db, self.hub.ctx.changes
        last: object = None
        with db.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cur = raw.cursor()
            while not self._stopping:
                cur.execute("PRAGMA data_version")
                row = cur.fetchone()
                value = row[0] if row else None
                if value != last:
                    if last is not None:
                        changes.notify()
                    last = value
                time.sleep(POLL)

    def _listen(self) -> None:
        import psycopg

        db, changes = self.hub.ctx.db, self.hub.ctx.changes
        with db.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            try:
                raw.rollback()
                raw.autocommit = True
                row = raw.execute("SELECT current_schema()").fetchone()
                schema = str(row[0]) if row else ""
                raw.execute(f"LISTEN {OUTBOX_CHANNEL}")
                changes.notify()  # what committed before LISTEN (at start, or while reconnecting)
                while not self._stopping:
                    for note in raw.notifies(timeout=1.0):  # for up to a second, then look at _stopping again
                        if note.payload == schema:  # channels are per database: another schema is another hub
                            changes.notify()
            finally:
                conn.invalidate()  # a connection in autocommit, listening: not for the pool

    async def stop(self) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if self._watch is not None:
            self._watch.join(5)


class CommitAnnouncer:
    """In an API worker on PostgreSQL: tell the primary that this process committed (``NOTIFY``), so that its
    consumers (subscriptions, workflows, sync, outbound HL7) read the outbox at once.

    A listener of the worker's own ``ChangeSignal``, which calls ``wake`` from its thread after commits, at
    most once per ``min_interval`` and once more after the last one: a burst of commits costs a few
    notifications, none is sent inside a request's transaction, and none before the commit it announces.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self._conn is None:  # a connection of its own, outside the pool the requests use
                    engine = self.db.engine
                    cargs, cparams = engine.dialect.create_connect_args(engine.url)
                    self._conn = engine.dialect.connect(*cargs, **{**cparams, "autocommit": True})
                self._conn.execute(f"SELECT pg_notify('{OUTBOX_CHANNEL}', current_schema())")
            except Exception as exc:  # noqa: BLE001 - the primary's recovery poll still finds the change
                log.warning("commit notification not sent (%s)", type(exc).__name__)
                self._drop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def exit_with_parent() -> None:
    """In an API worker or an HL7 mapping process: shut down (SIGTERM to ourselves: uvicorn finishes the
    requests in flight) once the parent is gone, also after a SIGKILL of the parent, which can run no
    shutdown code of its own."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("the primary (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def socket_path() -> str:
    """The primary's private socket, in a fresh owner-only (0700) directory."""
    return str(Path(tempfile.mkdtemp(prefix="fhirhub-")) / "primary.sock")
