"""The ``mllp-sender`` connector: FHIR changes out as HL7v2, through a durable queue.

Two loops per connector:

* the **outbox consumer** reads committed changes after its cursor (``outbox_consumer``
  ``mllp-sender:<name>``), turns each Appointment / Patient change into an SIU / ADT message
  (``mappings/outbound``), and queues it in the message store (``direction = 'out'``), advancing
  the cursor in the same transaction: a crash neither loses nor doubles a message. Changes
  whose origin is a listener of the same system (or in ``skip_origins``) are not sent: no echo.
  :meth:`SenderService.send_v2` queues a ready-made message (workflows use it).
* the **sender** keeps one persistent connection, sends the head of the queue, waits for
  the ACK whose MSA-2 matches the MSH-10 sent (``ack_timeout``), and marks it ``sent``
  (AA/CA). A timeout, a broken connection or AR/CR retries with exponential backoff; AE/CE
  (the receiver cannot accept this content) or ``retry.attempts`` failures make it ``dead``
  (the dead-letter state: kept, listed, ``fhirhub messages requeue`` sends it again). The
  queue is strictly ordered: a message waits while the one before it is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from hub.hl7 import store
from hub.hl7.ack import read_header
from hub.hl7.connectors import Sender
from hub.hl7.errors import Hl7Error
from hub.hl7.listener import party
from hub.hl7.mllp import Frame, FrameDecoder, frame
from hub.hl7.outbound import appointment_event, to_v2
from hub.hl7.parse import parse
from hub.store import outbox
from hub.store.repository import now_micros

if TYPE_CHECKING:
    from hub.hl7.service import Runtime

log = logging.getLogger("hub.hl7.sender")
POLL = 5.0  # seconds between outbox polls when nothing woke the consumer (changes made by other processes)
TYPES = ("Appointment", "Patient")


class SendFailure(Exception):
    def __init__(self, code: str, detail: str, *, final: bool = False, ack: bytes | None = None,
                 ack_code: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.final = final
        self.ack = ack
        self.ack_code = ack_code


class SenderService:
    """One ``mllp-sender`` connector (a :class:`hub.app.Service`)."""

    def __init__(self, runtime: Runtime, connector: Sender) -> None:
        self.runtime = runtime
        self.connector = connector
        self.name = f"mllp-sender:{connector.name}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changes: asyncio.Event | None = None
        self._queued: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(connector.max_message_bytes)
        self._pending_frames: list[bytes] = []
        self.sent = 0
        self.stopping = False
        self.types = frozenset(t for t in connector.resources if t in TYPES)

    # -- lifecycle
    async def start(self) -> None:
        self.runtime.start()
        self.loop = asyncio.get_running_loop()
        self._changes = asyncio.Event()
        self._queued = asyncio.Event()
        if self.types:
            # the cursor exists from the start: with start_at=head, every change after this is sent
            await self.loop.run_in_executor(None, self._init_cursor)
            self.runtime.changes.subscribe(self)
            self._changes.set()
            self._spawn(self._consume_loop())
        self._spawn(self._send_loop())
        log.info("mllp %s: sending to %s:%d%s (%s)", self.connector.name, self.connector.host, self.connector.port,
                 " over TLS" if self.connector.tls else "", ", ".join(sorted(self.types)) or "send_v2 only")

    async def stop(self) -> None:
        self.stopping = True
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._disconnect()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake(self) -> None:
        """Called by ``ChangeSignal`` from the writer's thread after every commit."""
        if self.loop is not None and self._changes is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._changes.set)

    def queued(self) -> None:
        """A message was queued (``send_v2``): send it now."""
        if self.loop is not None and self._queued is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._queued.set)

    # -- outbox -> queue
    async def _consume_loop(self) -> None:
        assert self._changes is not None and self._queued is not None
        loop = asyncio.get_running_loop()
        while not self.stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changes.wait(), POLL)
            self._changes.clear()
            try:
                while await loop.run_in_executor(None, self.consume) > 0:
                    self._queued.set()
            except Exception as exc:  # noqa: BLE001 - retry on the next wake; the cursor did not move
                log.error("mllp %s: reading the outbox failed (%s)", self.connector.name, type(exc).__name__)
                log.debug("outbox failure", exc_info=exc)
                await asyncio.sleep(1.0)

    def _init_cursor(self) -> None:
        with self.runtime.db.write() as conn:
            outbox.cursor(conn, self.connector.consumer, start_at_head=self.connector.start_at == "head")

    def consume(self, limit: int = 200) -> int:
        """Queue the messages for the changes after the cursor; returns how many outbox rows were read."""
        with self.runtime.db.write() as conn:
            cursor = outbox.cursor(conn, self.connector.consumer, start_at_head=self.connector.start_at == "head")
            rows = outbox.read_after(conn, cursor, limit, self.types)
            for row in rows:
                self._queue_change(conn, row)
            if rows:
                outbox.advance(conn, self.connector.consumer, rows[-1].pk)
        return len(rows)

    def _queue_change(self, conn: Connection, row: outbox.OutboxRow) -> None:
        c = self.connector
        if row.origin and row.origin in c.skip_origins:
            return  # arrived from this system: no echo
        if row.interaction == "delete":
            return
        repo = self.runtime.repo
        current = repo.vread(conn, row.res_type, row.res_id, row.version)
        if current is None or current.data is None:
            return
        resource = current.resource()
        related: dict[str, dict[str, Any]] = {}
        if row.res_type == "Appointment":
            previous = None
            if row.version > 1:
                prev = repo.vread(conn, row.res_type, row.res_id, row.version - 1)
                previous = prev.resource() if prev is not None and prev.data is not None else None
            event = appointment_event(previous, resource)
            wanted = c.resources.get("Appointment", {}).get("events")
            if wanted and event not in wanted:
                return
            for p in resource.get("participant") or []:
                ref = str(((p or {}).get("actor") or {}).get("reference") or "")
                parts = ref.split("/")
                if len(parts) == 2 and ref not in related:
                    found = repo.read(conn, parts[0], parts[1])
                    if found is not None and found.data is not None and not found.deleted:
                        related[ref] = found.resource()
        else:
            event = str(c.resources.get("Patient", {}).get("event", "A08"))
        control_id = f"FH{row.pk}"
        source = f"{row.res_type}/{row.res_id}/_history/{row.version}"
        try:
            message = to_v2(
                resource, event, related, self.runtime.mappings.get(c.mappings), control_id=control_id,
                timestamp=time.strftime("%Y%m%d%H%M%S+0000", time.gmtime()), sending_application=c.sending_application,
                sending_facility=c.sending_facility, receiving_application=c.receiving_application,
                receiving_facility=c.receiving_facility,
            )
        except Hl7Error as err:
            log.warning("mllp %s: %s not sent: %s", c.name, source, err.code)
            return
        header = read_header(message)
        store.enqueue(conn, c.name, message.encode("utf-8"), control_id=control_id,
                      message_type=f"{header.message_code}^{header.trigger}",
                      sender=party(c.sending_application, c.sending_facility),
                      receiver=party(c.receiving_application, c.receiving_facility), source=source)

    # -- queue -> wire
    async def _send_loop(self) -> None:
        assert self._queued is not None
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                row = await loop.run_in_executor(None, self._head)
            except Exception as exc:  # noqa: BLE001
                log.error("mllp %s: reading the queue failed (%s)", self.connector.name, type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if row is None:
                self._queued.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), POLL)
                continue
            wait = (int(row.next_attempt or 0) - now_micros()) / 1e6
            if wait > 0:
                await asyncio.sleep(min(wait, POLL))
                continue
            await self._send_one(row)

    def _head(self) -> Any:
        with self.runtime.db.read() as conn:
            return store.next_queued(conn, self.connector.name)

    async def _send_one(self, row: Any) -> None:
        c = self.connector
        pk, raw, control_id, attempts = int(row.pk), bytes(row.raw), str(row.control_id or ""), int(row.attempts)
        try:
            ack, code = await self._exchange(raw, control_id)
        except SendFailure as fail:
            attempts += 1
            dead = fail.final or attempts >= c.retry_attempts
            delay = c.backoff(attempts)
            if dead:
                log.error("mllp %s: message %d (MSH-10 %s) dead after %d attempt(s): %s", c.name, pk, control_id,
                          attempts, fail.code)
            else:
                log.warning("mllp %s: message %d (MSH-10 %s) not delivered (%s); retry in %.0f s", c.name, pk,
                            control_id, fail.code, delay)
            failure = fail
            await self.runtime.writer.acall(
                lambda conn: store.mark_failed(conn, pk, dead=dead, next_attempt=now_micros() + int(delay * 1e6),
                                               error_code=failure.code, detail=failure.detail, ack=failure.ack,
                                               ack_code=failure.ack_code))
            return
        await self.runtime.writer.acall(lambda conn: store.mark_sent(conn, pk, ack, code))
        self.sent += 1

    async def _exchange(self, raw: bytes, control_id: str) -> tuple[bytes, str]:
        """Send one framed message and wait for its ACK; SendFailure on anything else."""
        c = self.connector
        try:
            await self._connect()
            assert self._writer is not None and self._reader is not None
            self._writer.write(frame(raw))
            await asyncio.wait_for(self._writer.drain(), c.ack_timeout)
            deadline = time.monotonic() + c.ack_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                ack = await asyncio.wait_for(self._next_frame(), left)
                header_code, msa2 = _msa(ack)
                if msa2 != control_id:
                    log.warning("mllp %s: an ACK for another message (MSA-2 does not match) was ignored", c.name)
                    continue
                break
        except TimeoutError:
            await self._disconnect()
            raise SendFailure("HL7-ACK-TIMEOUT", f"no ACK within {c.ack_timeout:.0f} s") from None
        except (OSError, ConnectionError, EOFError, ssl.SSLError) as exc:
            await self._disconnect()
            raise SendFailure("HL7-CONNECTION", f"connection failed ({type(exc).__name__})") from None
        if header_code in ("AA", "CA"):
            return ack, header_code
        if header_code in ("AE", "CE"):
            raise SendFailure(f"HL7-NACK-{header_code}", "the receiver cannot accept this message", final=True,
                              ack=ack, ack_code=header_code)
        raise SendFailure(f"HL7-NACK-{header_code or 'NONE'}", "the receiver rejected the message", ack=ack,
                          ack_code=header_code or None)

    async def _next_frame(self) -> bytes:
        assert self._reader is not None
        while True:
            data = await self._reader.read(65536)
            if not data:
                raise EOFError("connection closed")
            for event in self._decoder.feed(data):
                if isinstance(event, Frame):
                    self._pending_frames.append(event.payload)
            if self._pending_frames:
                return self._pending_frames.pop(0)

    async def _connect(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        c = self.connector
        ctx = None
        if c.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(c.tls.ca) if c.tls.ca else None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if c.tls.certfile is not None and c.tls.keyfile is not None:
                ctx.load_cert_chain(str(c.tls.certfile), str(c.tls.keyfile))
        self._decoder = FrameDecoder(c.max_message_bytes)
        self._pending_frames = []
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(c.host, c.port, ssl=ctx,
                                    server_hostname=(c.tls.server_hostname or c.host) if c.tls and ctx else None),
            c.connect_timeout,
        )
        log.info("mllp %s: connected to %s:%d", c.name, c.host, c.port)

    async def _disconnect(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    # -- for workflows
    def send_v2(self, message: str | bytes) -> int:
        """Queue a ready-made HL7v2 message for this connector; returns its message-store key."""
        pk = queue_message(self.runtime.db, self.connector, message)
        self.queued()
        return pk


def _msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK, leniently."""
    try:
        msg = parse(ack, parser="split")
    except Hl7Error:
        return "", ""
    msa = msg.first("MSA")
    if msa is None:
        return "", ""
    return msa.value(1).upper(), msa.value(2)


def queue_message(db: Any, connector: Sender, message: str | bytes) -> int:
    """Queue a message for ``connector`` in the message store (any process may; the sender picks it up).

    Idempotent on MSH-10: queueing a message whose control id (from the same MSH-3/4) is already
    in this connector's queue returns the key it got then.
    """
    raw = message.encode("utf-8") if isinstance(message, str) else message
    header = read_header(raw)
    if not header.control_id:
        raise ValueError("the message has no MSH-10 control id")
    if len(raw) > connector.max_message_bytes:
        raise ValueError(f"the message exceeds max_message_bytes ({connector.max_message_bytes})")
    parse(raw, parser="split")  # a broken message is refused here, not by the receiver
    sender = party(header.sending_application, header.sending_facility)
    with db.write() as conn:
        existing = store.find_outbound(conn, connector.name, sender, header.control_id)
        if existing is not None:  # queued before (a workflow retrying): the same message, once
            return existing
        return store.enqueue(conn, connector.name, raw, control_id=header.control_id,
                             message_type=f"{header.message_code}^{header.trigger}".rstrip("^"),
                             sender=sender, receiver=party(header.receiving_application, header.receiving_facility))
