"""The ``mllp-listener`` connector: an asyncio MLLP server feeding the inbound pipeline.

Per frame, in this order:

1. the raw bytes are stored durably (``hl7_message``, through the group-commit
   :class:`~hub.hl7.store.StoreWriter`); a repeated MSH-10 of the same sender is found here;
2. enhanced mode: the accept ACK (CA) goes out now (MSH-15 permitting);
3. parse, filter, map and commit run in the listener's worker threads
   (:class:`~hub.hl7.pipeline.Pipeline`), in order per connection, or per patient;
4. the outcome is stored, then the (application) ACK goes out: AA only after the commit.
   In enhanced mode an application ACK whose connection has gone is recorded on the message
   (``ack_delivery = undelivered``) and sent when the same sender (MSH-3/MSH-4, same peer host)
   connects again and sends its first message there (``redelivered``).

Framing and transport faults never take the listener down: bytes between frames are
discarded, half frames are dropped when a new frame starts or the frame timeout passes, an
oversized frame is answered AR/CR and skipped, an idle or slow client is closed, a client
that does not read its ACKs is closed. Each fault is logged with the peer address, the
connector and sizes, never content.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from hub.hl7 import store
from hub.hl7.ack import Header, read_header
from hub.hl7.connectors import Listener
from hub.hl7.errors import Hl7Error
from hub.hl7.known import Known
from hub.hl7.mapper import Mapper, ThreadMapper, mapper_for
from hub.hl7.mllp import Abandoned, FrameDecoder, Garbage, Oversized, frame
from hub.hl7.pipeline import Pipeline, Prepared, Result, error_from_row, oversized_error, unavailable_error
from hub.hl7.store import Incoming, Receipt, StoreWriter
from hub.security.audit import AuditRecord

if TYPE_CHECKING:
    from hub.hl7.service import Runtime

log = logging.getLogger("hub.hl7.mllp")
MAX_UNREAD_ACK_BYTES = 1 << 20  # a client that leaves this much of its ACKs unread is closed
WAIT_PENDING = 60.0  # seconds a resend waits for the first copy's outcome
BIND_RETRY = 5.0  # seconds between attempts to listen on a port that was not free
MAX_BATCH = 64  # most messages one database transaction commits
AHEAD = 2 * MAX_BATCH  # messages mapped and waiting for their commit, at most
COMMITTERS_POSTGRESQL = 1  # batches committing at once on PostgreSQL (see ListenerService.__init__)
REDELIVER_MAX = 1000  # owed application ACKs sent on one new connection, at most


class Stopping(Exception):
    """The listener stops: a stored message is left for the next start."""


def party(application: str, facility: str) -> str:
    """MSH-3/MSH-4 (or MSH-5/MSH-6) as one text: ``APP/FACILITY``."""
    return "/".join(x for x in (application, facility) if x)


# ------------------------------------------------------------------------------------ ordering


class Ticket:
    """A place in a line: ``wait()`` until everything before it released, then ``release()``."""

    __slots__ = ("_prev", "_done")

    def __init__(self, prev: asyncio.Future[None] | None, done: asyncio.Future[None]) -> None:
        self._prev = prev
        self._done = done

    async def wait(self) -> None:
        if self._prev is not None and not self._prev.done():
            await asyncio.shield(self._prev)

    def release(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


class Sequencer:
    """Keyed lines: work with the same key runs in the order its tickets were taken."""

    def __init__(self) -> None:
        self._tails: dict[Any, asyncio.Future[None]] = {}

    def reserve(self, key: Any) -> Ticket:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        prev = self._tails.get(key)
        self._tails[key] = done

        def cleanup(_: asyncio.Future[None]) -> None:
            if self._tails.get(key) is done:
                del self._tails[key]

        done.add_done_callback(cleanup)
        return Ticket(prev, done)

    def __len__(self) -> int:
        return len(self._tails)


# ------------------------------------------------------------------------------------ a connection


@dataclass
class _Slot:
    """One ACK to write, in order. An application ACK (enhanced mode) knows its message, so that an ACK
    whose connection is gone is recorded as undelivered (and one that redelivers is recorded as sent)."""

    future: asyncio.Future[bytes | None]
    pk: int | None = None  # the message it answers (application ACKs)
    sender: str = ""  # its MSH-3/MSH-4
    resend: bool = False  # the answer to a resend, or a stored ACK sent again: mark it redelivered once written


@dataclass
class _Job:
    """A received frame on its way through the listener."""

    conn: Connection
    payload: bytes
    header: Header
    ticket: Ticket
    first: asyncio.Future[bytes | None]
    second: asyncio.Future[bytes | None] | None
    app: _Slot | None = None  # the slot of ``second``


@dataclass
class _Stats:
    frames: int = 0
    garbage: int = 0
    abandoned: int = 0
    oversized: int = 0


class Connection(asyncio.Protocol):
    def __init__(self, service: ListenerService) -> None:
        self.service = service
        self.connector = service.connector
        self.decoder = FrameDecoder(self.connector.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.key = object()  # the ordering key of this connection
        self.acks: deque[_Slot] = deque()  # accept ACKs (enhanced) or the only ACKs (original)
        self.app_acks: deque[_Slot] = deque()  # enhanced mode: application ACKs
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_activity = time.monotonic()
        self.frame_started: float | None = None
        self.closed = False
        self.stats = _Stats()
        self.paused = False
        self.greeted: set[str] = set()  # senders (MSH-3/MSH-4) whose owed application ACKs were looked up

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None
        if not self.service.admit(self):
            log.warning("mllp %s: connection from %s refused: %d connections open (max_connections)",
                        self.connector.name, self.peer, len(self.service.connections))
            transport.close()
            self.closed = True
            return
        self.transport.set_write_buffer_limits(high=256 * 1024)
        log.info("mllp %s: connection from %s", self.connector.name, self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = time.monotonic()
        self.last_activity = now
        was_in_frame = self.decoder.in_frame
        for event in self.decoder.feed(data):
            if isinstance(event, Garbage):
                self.stats.garbage += event.size
            elif isinstance(event, Abandoned):
                self.stats.abandoned += 1
                log.warning("mllp %s: half frame of %d bytes from %s dropped (a new frame started)",
                            self.connector.name, event.size, self.peer)
            elif isinstance(event, Oversized):
                self.stats.oversized += 1
                log.warning("mllp %s: frame of %d bytes from %s exceeds max_message_bytes (%d): rejected",
                            self.connector.name, event.size, self.peer, self.connector.max_message_bytes)
                self._refuse(event.head, oversized_error(self.connector.max_message_bytes))
            else:
                self.stats.frames += 1
                self._accept(event.payload, now)
        if self.decoder.in_frame:
            if not was_in_frame or self.frame_started is None:
                self.frame_started = now
        else:
            self.frame_started = None
        if self.transport is not None and self.transport.get_write_buffer_size() > MAX_UNREAD_ACK_BYTES:
            log.warning("mllp %s: %s does not read its ACKs: closing", self.connector.name, self.peer)
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.decoder.in_frame:
            log.warning("mllp %s: %s closed the connection inside a frame (%d bytes dropped)",
                        self.connector.name, self.peer, self.decoder.buffered)
        if self.stats.garbage:
            log.warning("mllp %s: %d bytes outside MLLP frames from %s were discarded",
                        self.connector.name, self.stats.garbage, self.peer)
        log.info("mllp %s: connection from %s closed after %d messages", self.connector.name, self.peer, self.stats.frames)
        self.service.forget(self)

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # -- frames
    def _slot(self, app: bool = False) -> _Slot:
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        slot = _Slot(fut)
        (self.app_acks if app else self.acks).append(slot)
        fut.add_done_callback(self._flush)
        return slot

    def _accept(self, payload: bytes, now: float) -> None:
        svc = self.service
        svc.received(now)
        header = read_header(payload)
        first = self._slot().future
        app = self._slot(app=True) if self.connector.ack_mode == "enhanced" else None
        svc.accept(self, payload, header, svc.sequencer.reserve(self.key), first, app.future if app else None, app)

    def hold(self, before: _Slot) -> _Slot:
        """A place in the application-ACK line just ahead of ``before``, for ACKs still to be looked up
        (:meth:`owed` fills it; until then nothing behind it goes out)."""
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        place = _Slot(fut)
        try:
            self.app_acks.insert(self.app_acks.index(before), place)
        except ValueError:  # already written (cannot happen: it waits for its message)
            self.app_acks.appendleft(place)
        fut.add_done_callback(self._flush)
        return place

    def owed(self, place: _Slot, acks: list[tuple[int, str, bytes]]) -> None:
        """Stored application ACKs owed to this connection's sender (``(pk, sender, ack)``): they take the
        place :meth:`hold` kept, ahead of the application ACK of the message that brought the sender back."""
        loop = asyncio.get_running_loop()
        slots = []
        for pk, sender, ack in acks:
            fut: asyncio.Future[bytes | None] = loop.create_future()
            fut.set_result(ack)
            slots.append(_Slot(fut, pk, sender, resend=True))
        if slots:
            try:
                at = self.app_acks.index(place)
            except ValueError:
                at = 0
            for k, slot in enumerate(slots):
                self.app_acks.insert(at + k, slot)
        if not place.future.done():
            place.future.set_result(None)  # flushes

    def _refuse(self, head: bytes, err: Hl7Error) -> None:
        enhanced = self.connector.ack_mode == "enhanced"
        ack, audit = self.service.pipeline.refuse(head, self.peer, err, enhanced_accept=enhanced)
        self.service.audit(audit)
        self._slot().future.set_result(ack)

    def _flush(self, _: object = None) -> None:
        """Write the ACKs that are ready, in the order their messages arrived (accept and
        application ACKs each in their own order). An application ACK whose connection is gone is
        recorded as undelivered (sent again when its sender connects again)."""
        sent: list[int] = []
        lost: list[_Slot] = []
        for line in (self.acks, self.app_acks):
            while line and line[0].future.done():
                slot = line.popleft()
                data = None if slot.future.cancelled() else slot.future.result()
                if data is None:
                    continue
                if self.transport is not None and not self.closed and not self.transport.is_closing():
                    self.transport.write(frame(data))
                    if slot.resend and slot.pk is not None:
                        sent.append(slot.pk)
                elif slot.pk is not None:
                    lost.append(slot)
        if sent or lost:
            self.service.ack_delivery(self, sent, lost)


# ------------------------------------------------------------------------------------ the service


class ListenerService:
    """One ``mllp-listener`` connector (a :class:`hub.app.Service`)."""

    def __init__(self, runtime: Runtime, connector: Listener) -> None:
        self.runtime = runtime
        self.connector = connector
        self.name = f"mllp-listener:{connector.name}"
        self.pipeline = Pipeline(runtime.router, connector, runtime.mappings, runtime.base_url, runtime.writer.gate,
                                 Known(runtime.db))
        self.writer: StoreWriter = runtime.writer
        self.executor = concurrent.futures.ThreadPoolExecutor(connector.workers, thread_name_prefix=f"hl7-{connector.name}")
        self.mapper: Mapper = ThreadMapper(self.pipeline, self.executor)  # mapping processes, if any, start with start()
        self.sequencer = Sequencer()
        self.connections: set[Connection] = set()
        self.inflight: dict[int, asyncio.Future[tuple[str, Hl7Error | None]]] = {}
        self.backlog = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._work: set[asyncio.Task[None]] = set()  # messages being processed
        self.processed = 0
        self.stopping = False
        self.last_receipt = 0.0
        self._idle = asyncio.Event()
        self._idle.set()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._deferred: deque[tuple[_Job, Receipt]] = deque()
        self._ready: list[tuple[Prepared, asyncio.Future[Result]]] = []  # prepared, waiting for a commit
        self._committing = 0
        self._ahead = asyncio.Semaphore(AHEAD)
        # One batch commits at a time. SQLite has one writer anyway. On PostgreSQL two at once were tried: each batch
        # waits on round trips, but the two committers then share the listener's interpreter lock with the event
        # loop and the receipt writers, their batches shrink and each message costs more (300 msg/s offered,
        # 2026-12-07: 97-107 msg/s applied with two, 133-137 with one)
        self._parallel = COMMITTERS_POSTGRESQL if runtime.db.dialect == "postgresql" else 1
        # its own threads: a commit never queues behind the mapping of a backlog
        self.committer = concurrent.futures.ThreadPoolExecutor(self._parallel, thread_name_prefix=f"hl7-{connector.name}-commit")
        self.batches = 0
        # enhanced mode: senders owed application ACKs that found their connection gone (loaded at start), and
        # the messages whose stored ACK is on its way on a new connection
        self._owed: set[str] = set()
        self._claimed: set[int] = set()

    # -- lifecycle
    async def start(self) -> None:
        """Bind the port (serving starts after the recovery of stored messages). A port that cannot be
        bound (in use, not allowed) does not stop the hub: it is logged and tried again every few seconds."""
        self.runtime.start()
        self.mapper = mapper_for(self.connector, self.pipeline, self.executor, self.runtime.settings.mappings_reload_seconds)
        await self.mapper.start()
        if not await self._bind(first=True):
            self._spawn(self._bind_later())
        self._spawn(self._reaper())

    async def _bind(self, first: bool = False) -> bool:
        ctx = self._ssl()
        try:
            self.server = await asyncio.get_running_loop().create_server(
                lambda: Connection(self), self.connector.host, self.connector.port, ssl=ctx, start_serving=False,
                reuse_address=True, backlog=256,
            )
        except OSError as exc:
            if first:
                log.error("mllp %s: cannot listen on %s:%d (%s); trying again every %.0f s", self.connector.name,
                          self.connector.host, self.connector.port, exc.strerror or type(exc).__name__, BIND_RETRY)
            return False
        log.info("mllp %s: listening on %s:%d (%s mode, ordering per %s%s)", self.connector.name, self.connector.host,
                 self.connector.port, self.connector.ack_mode, self.connector.ordering, ", TLS" if ctx else "")
        self._spawn(self._recover_then_serve())
        return True

    async def _bind_later(self) -> None:
        while not self.stopping:
            await asyncio.sleep(BIND_RETRY)
            if await self._bind():
                return

    async def stop(self) -> None:
        self.stopping = True
        self._idle.set()  # what waits for a quiet moment stays stored (received) for the next start
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        while self._deferred:
            self._done(self._deferred.popleft()[0])
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        if self._work:  # what is being applied finishes (bounded); what waits stays stored for the next start
            done, pending = await asyncio.wait(list(self._work), timeout=10)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self.mapper.close)
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.committer.shutdown(wait=True, cancel_futures=True)

    @property
    def port(self) -> int:
        """The port actually bound (tests bind port 0)."""
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ssl(self) -> ssl.SSLContext | None:
        tls = self.connector.tls
        if tls is None or tls.certfile is None or tls.keyfile is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile))
        if tls.ca is not None:
            ctx.load_verify_locations(str(tls.ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def _recover_then_serve(self) -> None:
        """Process what a crash (or a stop in enhanced mode) left stored but unprocessed, then accept."""
        try:
            n = await asyncio.get_running_loop().run_in_executor(self.executor, self._recover)
            if n:
                log.info("mllp %s: %d stored messages processed after a restart", self.connector.name, n)
        except Exception as exc:  # noqa: BLE001 - keep serving; they stay stored for the next start
            log.error("mllp %s: recovery failed (%s); the stored messages wait for the next start",
                      self.connector.name, type(exc).__name__)
        if self.server is not None and not self.stopping:
            await self.server.start_serving()
            self.runtime.ready(self)

    def _recover(self) -> int:
        done = 0
        after = 0
        enhanced = self.connector.ack_mode == "enhanced"
        while not self.stopping:
            with self.runtime.db.read() as conn:
                rows = store.pending(conn, self.connector.name, 200, after)
            if not rows:
                break
            for row in rows:
                after = int(row.pk)
                result = self.pipeline.process(int(row.pk), bytes(row.raw), row.peer)
                if enhanced and app_ack_wanted(read_header(bytes(row.raw)), result.ack_code):
                    # its sender got the accept ACK before the stop; the application ACK waits for it
                    result.outcome.ack_delivery = "undelivered"
                self.writer.finish(result.outcome).result()
                self.audit(result.audit)
                done += 1
        if enhanced:
            with self.runtime.db.read() as conn:
                self._owed = store.undelivered_senders(conn, self.connector.name)
            if self._owed:
                log.info("mllp %s: application ACKs are owed to %d sender(s); sent when they connect again",
                         self.connector.name, len(self._owed))
        return done

    async def _reaper(self) -> None:
        """Close connections whose frame takes too long (slow or stalled senders) or that idle too long."""
        while True:
            await asyncio.sleep(min(1.0, self.connector.frame_timeout / 4))
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.frame_started is not None and now - conn.frame_started > self.connector.frame_timeout:
                    log.warning("mllp %s: %s sent no complete frame within %.0f s (%d bytes): closing",
                                self.connector.name, conn.peer, self.connector.frame_timeout, conn.decoder.buffered)
                    conn.close()
                elif not conn.tasks and now - conn.last_activity > self.connector.idle_timeout:
                    log.info("mllp %s: %s idle for %.0f s: closing", self.connector.name, conn.peer,
                             self.connector.idle_timeout)
                    conn.close()

    # -- connections
    def admit(self, conn: Connection) -> bool:
        if self.stopping or len(self.connections) >= self.connector.max_connections:
            return False
        self.connections.add(conn)
        if self.backlog >= self.connector.max_backlog:
            conn.pause_reading()
        return True

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def _backlog(self, delta: int) -> None:
        self.backlog += delta
        if delta > 0 and self.backlog >= self.connector.max_backlog:
            for c in self.connections:
                c.pause_reading()
        elif delta < 0 and self.backlog <= self.connector.max_backlog * 0.9:
            for c in self.connections:
                c.resume_reading()

    def audit(self, record: AuditRecord) -> None:
        trail = self.runtime.audit
        if trail is not None:
            trail.enqueue(record)

    # -- one message
    def accept(self, conn: Connection, payload: bytes, header: Header, ticket: Ticket,
               first: asyncio.Future[bytes | None], second: asyncio.Future[bytes | None] | None,
               app: _Slot | None = None) -> None:
        """A frame arrived (in the event loop): store it. ``first`` gets the (accept) ACK, ``second`` the
        application ACK (enhanced mode; ``app`` its slot). No task is made until the message is durable."""
        self._backlog(1)
        code = header.message_code
        sender = party(header.sending_application, header.sending_facility)
        incoming = Incoming(
            self.connector.name, sender,
            party(header.receiving_application, header.receiving_facility), header.control_id or None,
            f"{code}^{header.trigger}" if header.trigger else code, payload, conn.peer,
        )
        if app is not None:
            app.sender = sender
            if sender in self._owed and sender not in conn.greeted:
                conn.greeted.add(sender)
                self._redeliver(conn, sender, conn.hold(app))
        job = _Job(conn, payload, header, ticket, first, second, app)
        self.writer.areceive_future(incoming).add_done_callback(partial(self._stored, job))

    # -- enhanced mode: application ACKs whose connection was gone
    def _redeliver(self, conn: Connection, sender: str, place: _Slot) -> None:
        """The first message of a sender that is owed application ACKs arrived on a new connection: send it the
        stored ACKs (same connector, same MSH-3/MSH-4, same peer host)."""
        def load() -> list[Any]:
            with self.runtime.db.read() as c:
                return store.undelivered(c, self.connector.name, sender, REDELIVER_MAX)

        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self.executor, load)
        except RuntimeError:  # stopping
            conn.owed(place, [])
            return
        fut.add_done_callback(partial(self._send_owed, conn, sender, place))

    def _send_owed(self, conn: Connection, sender: str, place: _Slot, fut: asyncio.Future[list[Any]]) -> None:
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None:
            log.error("mllp %s: owed application ACKs could not be read (%s)", self.connector.name, type(exc).__name__)
            conn.greeted.discard(sender)
            conn.owed(place, [])
            return
        rows = fut.result()
        host = peer_host(conn.peer)
        mine = [r for r in rows if peer_host(r.peer) == host and int(r.pk) not in self._claimed]
        if len(rows) < REDELIVER_MAX and len(mine) == len(rows):
            self._owed.discard(sender)  # all of them go now (a failure adds the sender again)
        if not mine or conn.closed:
            if conn.closed:
                self._owed.add(sender)
            conn.greeted.discard(sender)
            conn.owed(place, [])
            return
        self._claimed.update(int(r.pk) for r in mine)
        log.info("mllp %s: %d application ACK(s) owed to %s sent on its new connection from %s (messages %s)",
                 self.connector.name, len(mine), sender, conn.peer, " ".join(str(r.pk) for r in mine[:20]))
        conn.owed(place, [(int(r.pk), sender, bytes(r.ack)) for r in mine])

    def ack_delivery(self, conn: Connection, sent: list[int], lost: list[_Slot]) -> None:
        """Record application ACKs that went out late (``redelivered``) or found the connection gone
        (``undelivered``: kept, with the ACK, for the sender's next connection)."""
        loop = asyncio.get_running_loop()
        if lost:
            pks = [s.pk for s in lost if s.pk is not None]
            self._owed.update(s.sender for s in lost)
            log.warning("mllp %s: %s closed the connection before %d application ACK(s) went out (messages %s): "
                        "kept as undelivered, sent when it connects again", self.connector.name, conn.peer, len(pks),
                        " ".join(str(pk) for pk in pks[:20]))
            self._store_delivery(loop, partial(store.mark_undelivered, pks=pks), pks)
        if sent:
            self._store_delivery(loop, partial(store.mark_redelivered, pks=sent), sent)

    def _store_delivery(self, loop: asyncio.AbstractEventLoop, work: Any, pks: list[int]) -> None:
        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.exception() is not None:
                log.error("mllp %s: ACK delivery of messages %s not recorded (%s)", self.connector.name,
                          " ".join(map(str, pks[:20])), type(f.exception()).__name__)
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                loop.call_soon_threadsafe(self._claimed.difference_update, pks)

        self.writer.call(work).add_done_callback(done)

    def _stored(self, job: _Job, fut: asyncio.Future[Receipt]) -> None:
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is not None:  # the store is down: the sender must try again later
            log.error("mllp %s: message could not be stored (%s): AR", self.connector.name, type(exc).__name__)
            ack, audit = self.pipeline.refuse(job.payload, job.conn.peer, unavailable_error(),
                                              enhanced_accept=job.second is not None)
            job.first.set_result(ack)
            self.audit(audit)
            self._done(job)
            return
        receipt = fut.result()
        # the raw message is durable from here on
        if job.second is not None:
            job.first.set_result(self._accept_ack(job.payload, job.header, "CA"))
        if receipt.kind in ("new", "retry") and self.connector.apply == "idle" and not self._idle.is_set():
            self._deferred.append((job, receipt))  # applied when the senders pause
            return
        self._after(job, receipt)

    def _after(self, job: _Job, receipt: Receipt) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(job, receipt))
        job.conn.tasks.add(task)
        task.add_done_callback(job.conn.tasks.discard)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _guarded(self, job: _Job, receipt: Receipt) -> None:
        try:
            await self._handle(job, receipt)
        except Stopping:
            pass
        except Exception as exc:  # noqa: BLE001 - never leave a sender without an answer
            log.error("mllp %s: message handling failed (%s)", self.connector.name, type(exc).__name__)
            log.debug("handling failure", exc_info=exc)
            accept_open = job.second is not None and not job.first.done()
            ack, audit = self.pipeline.refuse(job.payload, job.conn.peer, unavailable_error(), enhanced_accept=accept_open)
            target = job.first if (job.second is None or accept_open) else job.second
            if not target.done():
                target.set_result(ack)
            self.audit(audit)
        finally:
            self._done(job)

    def _done(self, job: _Job) -> None:
        job.ticket.release()
        for fut in (job.first, job.second):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._backlog(-1)

    async def _handle(self, job: _Job, receipt: Receipt) -> None:
        payload, header, peer, ticket, first, second = job.payload, job.header, job.conn.peer, job.ticket, job.first, job.second
        if receipt.kind in ("duplicate", "pending"):
            if not receipt.same_content:
                log.warning("mllp %s: MSH-10 %s from %s was reused for different content: acknowledged, not applied",
                            self.connector.name, header.control_id, party(header.sending_application, header.sending_facility))
            await ticket.wait()
            ticket.release()
            ack_code, error = await self._outcome_of(receipt)
            ack, audit = self.pipeline.duplicate(payload, peer, ack_code, error, header.control_id)
            self.audit(audit)
            if job.app is not None:  # answering the resend also delivers what an undelivered ACK said
                job.app.pk, job.app.resend = receipt.pk, True
            self._answer(first, second, header, ack, ack_code)
            return
        if job.app is not None:
            job.app.pk, job.app.resend = receipt.pk, receipt.kind == "retry"
        fut: asyncio.Future[tuple[str, Hl7Error | None]] = asyncio.get_running_loop().create_future()
        self.inflight[receipt.pk] = fut
        try:
            result = await self._process(receipt.pk, payload, peer, ticket, job.conn.key)
            fut.set_result((result.ack_code, result.error))
        finally:
            self.inflight.pop(receipt.pk, None)
            if not fut.done():
                fut.set_result(("AR", unavailable_error()))
        self.audit(result.audit)
        self.processed += 1
        self._answer(first, second, header, result.ack, result.ack_code)

    def received(self, now: float) -> None:
        """A frame arrived: with ``apply: idle``, application processing waits for a quiet moment."""
        self.last_receipt = now
        if self.connector.apply != "idle":
            return
        self._idle.clear()
        if self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(self.connector.apply_idle, self._check_idle)

    def _check_idle(self) -> None:
        quiet = time.monotonic() - self.last_receipt
        if quiet >= self.connector.apply_idle:
            self._idle_timer = None
            self._idle.set()
            while self._deferred:
                self._after(*self._deferred.popleft())
        else:
            self._idle_timer = asyncio.get_running_loop().call_later(self.connector.apply_idle - quiet, self._check_idle)

    async def _until_idle(self) -> None:
        """``apply: idle``: wait until no message arrived for ``apply_idle`` seconds (receipts go first)."""
        if self.connector.apply == "idle" and not self._idle.is_set() and not self.stopping:
            await self._idle.wait()
        if self.stopping:
            raise Stopping  # stays stored (received); the next start processes it

    async def _process(self, pk: int, payload: bytes, peer: str | None, ticket: Any, conn_key: object) -> Result:
        await ticket.wait()
        await self._until_idle()
        # mapping runs ahead of the commits by at most AHEAD messages: a backlog is not mapped all at once
        # while the commits starve for the interpreter
        async with self._ahead:
            prepared: Prepared = await self.mapper.prepare(pk, payload, peer)
            if self.connector.ordering == "patient":
                lane = self.sequencer.reserve(("patient", prepared.patient_key) if prepared.patient_key else conn_key)
                ticket.release()  # the next message of this connection may be mapped now
                try:
                    await lane.wait()
                    return await self._commit(prepared)
                finally:
                    lane.release()
            # connection order: the ticket is released (by the caller) only once this message's outcome is durable
            return await self._commit(prepared)

    # -- group commit of the FHIR transactions
    async def _commit(self, prepared: Prepared) -> Result:
        """Commit a prepared message together with whatever other messages are ready (each one the head of
        its ordering line, so they are independent): one database transaction, one savepoint per message,
        the outcomes stored in the same transaction (see :meth:`Pipeline.apply_many`). Returns once the
        outcome is durable (crash recovery then only ever re-applies the last message of a line, which
        the conditional writes make a no-op)."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._ready.append((prepared, fut))
        self._kick()
        result = await fut
        if not result.stored:
            await self.writer.afinish(result.outcome)
        return result

    def _kick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ready and self._committing < self._parallel:
            batch, self._ready = self._ready[:MAX_BATCH], self._ready[MAX_BATCH:]
            self._committing += 1
            try:
                done = loop.run_in_executor(self.committer, self.pipeline.apply_many, [p for p, _ in batch])
            except RuntimeError as exc:  # the executor is shut down: the hub stops
                self._committing -= 1
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(Stopping(str(exc)))
                continue
            done.add_done_callback(partial(self._committed, batch))

    def _committed(self, batch: list[tuple[Prepared, asyncio.Future[Result]]], done: asyncio.Future[list[Result]]) -> None:
        self._committing -= 1
        exc = asyncio.CancelledError() if done.cancelled() else done.exception()
        results = done.result() if exc is None else []
        for k, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            if exc is not None or k >= len(results):
                fut.set_exception(exc or RuntimeError("no result"))
            else:
                fut.set_result(results[k])
        self.batches += 1
        if self._ready and not self.stopping:
            self._kick()

    async def _outcome_of(self, receipt: Receipt) -> tuple[str, Hl7Error | None]:
        """The outcome of the first copy of a resent message (waiting while it is processed)."""
        if receipt.kind == "duplicate":
            return "AA", None
        deadline = time.monotonic() + WAIT_PENDING
        while time.monotonic() < deadline:
            fut = self.inflight.get(receipt.pk)
            if fut is not None:
                return await asyncio.shield(fut)
            row = await self.writer.acall(lambda conn: store.status_of(conn, receipt.pk))
            if row is None:
                break
            if row.status != "received":
                code = str(row.ack_code or "AR")
                return code, None if code == "AA" else error_from_row(row.error_code, row.error_location, row.detail, code)
            await asyncio.sleep(0.1)
        return "AR", unavailable_error()

    def _accept_ack(self, payload: bytes, header: Header, code: str) -> bytes | None:
        """Enhanced mode: the commit-level ACK, as MSH-15 asks (AL always, NE never, ER errors, SU success)."""
        wanted = (header.accept_ack_type or "AL").upper()
        if wanted == "NE" or (wanted == "ER" and code == "CA") or (wanted == "SU" and code != "CA"):
            return None
        return self.pipeline.acks.build(header, code)

    def _answer(self, first: asyncio.Future[bytes | None], second: asyncio.Future[bytes | None] | None,
                header: Header, ack: bytes, code: str) -> None:
        if second is None:
            first.set_result(ack)
            return
        second.set_result(ack if app_ack_wanted(header, code) else None)


def app_ack_wanted(header: Header | None, code: str) -> bool:
    """Enhanced mode: whether MSH-16 asks for the application ACK ``code`` (AL always, NE never, ER errors,
    SU success)."""
    wanted = ((header.app_ack_type if header is not None else "") or "AL").upper()
    return not (wanted == "NE" or (wanted == "ER" and code == "AA") or (wanted == "SU" and code != "AA"))


def peer_host(peer: str | None) -> str | None:
    """The host of ``host:port`` (IPv6 included)."""
    return peer.rsplit(":", 1)[0] if peer else None

