"""The delivery engine: sends recorded deliveries, per endpoint, in order per resource, with retries.

* Isolation: one :class:`Endpoint` per ``scheme://host:port``, with its own HTTP connection pool
  and ``FHIRHUB_SUBSCRIPTION_CONCURRENCY`` senders. A slow or failing endpoint only uses its own.
  The HTTP attempts themselves go through a :mod:`~hub.subscriptions.transport`: in this process, or in
  ``FHIRHUB_SUBSCRIPTION_SENDERS`` sender processes.
* Order: an endpoint keeps a FIFO per (subscription, resource); only its head is sent, and the
  next waits until the head is delivered or parked dead. Different resources go in parallel.
* Retries: a failed attempt is retried after an exponential backoff with jitter (tenacity's wait
  strategies), for ``FHIRHUB_SUBSCRIPTION_RETRY_FOR`` seconds after the first attempt; then the
  delivery is parked as ``dead`` (``$resend`` replays it) and the next one of the resource goes.
* Durability: the database is the queue. The dispatcher hands fresh rows straight to the endpoint
  (the fast path); an endpoint that holds ``FHIRHUB_SUBSCRIPTION_QUEUE`` rows in memory stops taking
  them and refills from the database by key order when it has room; at start every endpoint
  refills. Outcomes are written back in small batches; a crash before that write sends the
  delivery again (at least once; the ``Idempotency-Key`` header lets receivers drop repeats).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import tenacity
from sqlalchemy import and_, bindparam, select, update
from tenacity.wait import wait_base

from hub.store import sql
from hub.store.tables import version_t
from hub.subscriptions import notify
from hub.subscriptions.notify import Event
from hub.subscriptions.spec import Spec
from hub.subscriptions.tables import delivery_t, sub_state_t
from hub.subscriptions.transport import Result, SenderProcesses, Sessions, Transport

if TYPE_CHECKING:
    from hub.subscriptions.service import SubscriptionService

async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again any that is still running.

    A cancellation can be swallowed: one that lands while aiohttp's own timeout fires comes out of the
    request as a timeout error, which a retry loop catches and goes on. Waiting once for a task that
    swallowed its cancellation would wait for ever (stop() hung in the tests); cancelling again ends it.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)


log = logging.getLogger("hub.subscriptions.delivery")
Key = tuple[str, str, str]  # (subscription, type, id)
FLUSH_EVERY = 0.05  # seconds between outcome writes while there are outcomes (a crash re-sends at most these;
#                     each write is a transaction: at 0.02 s they were 50 a second under load)
OUTCOME_COLS = ("status", "attempts", "next_at", "first_attempt_at", "done_at", "last_status", "last_error")


def backoff_strategy(initial: float, maximum: float) -> wait_base:
    """Equal jitter: half the exponential delay fixed, half random (tenacity strategies)."""
    return tenacity.wait_exponential(multiplier=initial / 2, max=maximum / 2) + tenacity.wait_random_exponential(
        multiplier=initial / 2, max=maximum / 2
    )


def backoff_seconds(strategy: wait_base, attempt: int) -> float:
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(strategy(state))


@dataclass
class Item:
    ev: Event
    endpoint_key: str
    attempts: int
    next_at: int
    first_attempt_at: int | None

    @property
    def key(self) -> Key:
        return (self.ev.sub_id, self.ev.res_type, self.ev.res_id)


@dataclass
class Outcome:
    item: Item
    status: str  # pending | delivered | dead | cancelled
    http_status: int | None
    error: str | None
    at: int


@dataclass
class Endpoint:
    key: str
    engine: DeliveryEngine
    queues: dict[Key, deque[Item]] = field(default_factory=dict)
    ready: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    held: dict[str, set[Key]] = field(default_factory=dict)
    timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    known: set[int] = field(default_factory=set)
    hwm: int = 0
    spilled: bool = True
    refilling: bool = False
    buffered: list[Item] = field(default_factory=list)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    in_flight: int = 0

    # ------------------------------------------------------------------ queueing
    def add(self, items: Iterable[Item]) -> None:
        for item in items:
            pk = item.ev.pk
            if pk in self.known:
                continue
            self.known.add(pk)
            self.hwm = max(self.hwm, pk)
            q = self.queues.get(item.key)
            if q is None:
                q = self.queues[item.key] = deque()
            q.append(item)
            if len(q) == 1:
                self._schedule(item.key)

    def offer(self, items: list[Item]) -> None:
        """Fresh rows from the dispatcher (already committed)."""
        if self.refilling:
            self.buffered.extend(items)
            return
        if self.spilled or len(self.known) + len(items) > self.engine.capacity:
            self.spilled = True
            self.room.set()
            return
        self.add(items)

    def _schedule(self, key: Key) -> None:
        q = self.queues.get(key)
        if not q:
            return
        head = q[0]
        delay = (head.next_at - self.engine.clock()) / 1_000_000
        old = self.timers.pop(key, None)
        if old is not None:
            old.cancel()
        if delay <= 0:
            self.ready.put_nowait(key)
        else:
            loop = asyncio.get_running_loop()
            self.timers[key] = loop.call_later(delay, self._due, key)

    def _due(self, key: Key) -> None:
        self.timers.pop(key, None)
        self.ready.put_nowait(key)

    def release(self, sub_id: str) -> None:
        for key in self.held.pop(sub_id, set()):
            self._schedule(key)

    def _finish_head(self, key: Key) -> None:
        q = self.queues.get(key)
        if not q:
            return
        item = q.popleft()
        self.known.discard(item.ev.pk)
        if q:
            self._schedule(key)
        else:
            del self.queues[key]
        if self.spilled and len(self.known) <= self.engine.capacity // 2:
            self.room.set()

    def drop_subscription(self, sub_id: str) -> list[Item]:
        """A deleted subscription: forget its queued items (they are cancelled in the database)."""
        gone: list[Item] = []
        for key in [k for k in self.queues if k[0] == sub_id]:
            for item in self.queues.pop(key):
                self.known.discard(item.ev.pk)
                gone.append(item)
            t = self.timers.pop(key, None)
            if t is not None:
                t.cancel()
        self.held.pop(sub_id, None)
        return gone

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        eng = self.engine
        self.tasks = [asyncio.create_task(self._sender(), name=f"deliver {self.key} #{i}") for i in range(eng.concurrency)]
        self.tasks.append(asyncio.create_task(self._refiller(), name=f"refill {self.key}"))
        self.room.set()

    async def stop(self) -> None:
        for timer in self.timers.values():  # first: a timer firing now would start another send
            timer.cancel()
        await cancel_all(self.tasks)
        for timer in self.timers.values():
            timer.cancel()

    async def _refiller(self) -> None:
        while True:
            await self.room.wait()
            self.room.clear()
            if not self.spilled:
                continue
            self.refilling = True
            try:
                limit = max(1, self.engine.capacity - len(self.known))
                rows = await self.engine.service.offload(self.engine.load_pending, self.key, self.hwm, limit)
                self.add(rows)
                if len(rows) < limit:
                    self.spilled = False
                    self.add(sorted(self.buffered, key=lambda i: i.ev.pk))
                self.buffered.clear()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("refill of %s failed: %s; retrying", self.key, type(exc).__name__)
                await asyncio.sleep(1.0)
                self.room.set()
            finally:
                self.refilling = False
            if self.spilled and len(self.known) <= self.engine.capacity // 2:
                self.room.set()

    async def _sender(self) -> None:
        eng = self.engine
        while True:
            key = await self.ready.get()
            q = self.queues.get(key)
            if not q:
                continue
            item = q[0]
            if item.next_at > eng.clock() + 1000:  # re-queued early (e.g. after a release); wait for its time
                self._schedule(key)
                continue
            sub_id = item.ev.sub_id
            state = eng.service.subscription(sub_id)
            if state is None:
                eng.record(Outcome(item, "cancelled", None, "subscription deleted", eng.clock()))
                self._finish_head(key)
                continue
            if not state.deliverable or state.spec is None:
                self.held.setdefault(sub_id, set()).add(key)
                continue
            self.in_flight += 1
            try:
                outcome = await eng.attempt(item, state.spec, state.status)
            finally:
                self.in_flight -= 1
            eng.record(outcome)
            if outcome.status == "pending":
                self._schedule(key)
            else:
                self._finish_head(key)


class DeliveryEngine:
    def __init__(self, service: SubscriptionService) -> None:
        s = service.settings
        self.service = service
        self.clock: Callable[[], int] = service.clock
        self.concurrency = max(1, s.subscription_concurrency)
        self.timeout = s.subscription_timeout
        self.capacity = max(10, s.subscription_queue)
        self.retry_for = int(s.subscription_retry_for * 1_000_000)
        self.error_after = max(1, s.subscription_error_after)
        self.strategy = backoff_strategy(s.subscription_retry_initial, s.subscription_retry_max)
        senders = s.subscription_senders or 0
        self.transport: Transport = (SenderProcesses(senders, self.concurrency, self.timeout) if senders > 0
                                     else Sessions(self.concurrency, self.timeout))
        self.endpoints: dict[str, Endpoint] = {}
        self.outcomes: list[Outcome] = []
        self._flush_wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.transport.start()
        keys = await self.service.offload(self._pending_endpoints)
        for key in keys:
            self.endpoint(key)
        self._flusher = asyncio.create_task(self._flush_loop(), name="delivery outcomes")

    async def stop(self) -> None:
        for ep in list(self.endpoints.values()):
            await ep.stop()
        if self._flusher is not None:
            await cancel_all([self._flusher])
        if self.outcomes:
            await self.service.offload(self._write, self._take())
        await self.transport.close()

    def endpoint(self, key: str) -> Endpoint:
        ep = self.endpoints.get(key)
        if ep is None:
            ep = self.endpoints[key] = Endpoint(key, self)
            ep.start()
        return ep

    # ------------------------------------------------------------------ input
    def offer(self, items: list[Item]) -> None:
        by_ep: dict[str, list[Item]] = {}
        for item in items:
            by_ep.setdefault(item.endpoint_key, []).append(item)
        for key, group in by_ep.items():
            ep = self.endpoints.get(key)
            if ep is None:
                ep = self.endpoint(key)  # new endpoints start spilled: their first refill reads the database
            ep.offer(group)

    def kick(self, endpoint_keys: Iterable[str]) -> None:
        """Rows were added behind the engine's back ($resend): refill these endpoints from the database."""
        for key in endpoint_keys:
            ep = self.endpoint(key)
            ep.spilled = True
            ep.room.set()

    def release(self, sub_id: str, endpoint_key: str) -> None:
        ep = self.endpoints.get(endpoint_key)
        if ep is not None:
            ep.release(sub_id)

    def forget(self, sub_id: str) -> None:
        for ep in self.endpoints.values():
            ep.drop_subscription(sub_id)

    # ------------------------------------------------------------------ sending
    async def attempt(self, item: Item, spec: Spec, status: str) -> Outcome:
        now = self.clock()
        if item.first_attempt_at is None:
            item.first_attempt_at = now
        item.attempts += 1
        ev = item.ev
        if ev.data is None and ev.interaction != "delete" and (spec.kind == "topic" and spec.content == "full-resource"
                                                               or spec.kind == "r4" and spec.payload):
            ev.data = await self.service.offload(self.service.version_data, ev.res_type, ev.res_id, ev.version)
        req = notify.event_request(spec, ev, self.service.base_url, status, now, item.attempts)
        http_status, error = await self.send(item.endpoint_key, req, spec.timeout)
        done = self.clock()
        if error is None:
            return Outcome(item, "delivered", http_status, None, done)
        if done - (item.first_attempt_at or done) >= self.retry_for:
            log.warning("delivery parked dead subscription=%s attempts=%d error=%s", spec.sub_id, item.attempts, error)
            return Outcome(item, "dead", http_status, error, done)
        delay = backoff_seconds(self.strategy, item.attempts)
        item.next_at = done + int(delay * 1_000_000)
        return Outcome(item, "pending", http_status, error, done)

    async def send(self, endpoint_key: str, req: notify.Request, timeout: float | None = None) -> Result:
        """One HTTP attempt: (status, None) on 2xx, else (status or None, error text without PHI)."""
        return await self.transport.send(endpoint_key, req, timeout)

    # ------------------------------------------------------------------ outcomes
    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self._idle.clear()
        self.service.on_outcome(outcome)
        self._flush_wake.set()

    def _take(self) -> list[Outcome]:
        out, self.outcomes = self.outcomes, []
        return out

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wake.wait()
            self._flush_wake.clear()
            await asyncio.sleep(FLUSH_EVERY)  # gather a batch
            batch = self._take()
            if not batch:
                self._idle.set()
                continue
            try:
                await self.service.offload(self._write, batch)
            except Exception as exc:  # noqa: BLE001 - keep the outcomes and try again
                log.warning("writing delivery outcomes failed: %s; retrying", type(exc).__name__)
                self.outcomes[:0] = batch
                await asyncio.sleep(0.5)
                self._flush_wake.set()
                continue
            if not self.outcomes:
                self._idle.set()
            else:
                self._flush_wake.set()

    async def flushed(self) -> None:
        """Wait until every recorded outcome is in the database (tests, shutdown)."""
        while self.outcomes or not self._idle.is_set():
            self._flush_wake.set()
            await self._idle.wait()

    async def settled(self, timeout: float = 60.0) -> None:
        """Wait until nothing is queued, in flight or unwritten (tests; retries in backoff count as queued)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.busy():
            if loop.time() > deadline:
                raise TimeoutError("deliveries did not settle")
            await asyncio.sleep(0.01)
        await self.flushed()

    def _write(self, batch: list[Outcome]) -> None:
        rows = [
            (o.status, o.item.attempts, o.item.next_at, o.item.first_attempt_at, o.at if o.status != "pending" else None,
             o.http_status, (o.error or "")[:500] or None, o.item.ev.pk)
            for o in batch
        ]
        states = self.service.state_rows()
        with self.service.db.write() as conn, sql.pipeline(conn):  # PostgreSQL: BEGIN and both updates in one round trip
            sql.update_by_pk(conn, delivery_t, OUTCOME_COLS, rows)
            if states:
                s = sub_state_t.c
                conn.execute(
                    update(sub_state_t).where(s.sub_id == bindparam("b_sub")).values(
                        status=bindparam("status"), error=bindparam("error"), failures=bindparam("failures"),
                        last_error=bindparam("last_error"), last_error_at=bindparam("last_error_at"),
                        last_delivered_at=bindparam("last_delivered_at"), updated_at=bindparam("updated_at"),
                    ),
                    states,
                )

    # ------------------------------------------------------------------ database reads
    def _pending_endpoints(self) -> list[str]:
        d = delivery_t.c
        with self.service.db.read() as conn:
            return [r[0] for r in conn.execute(select(d.endpoint_key).where(d.status == "pending").distinct())]

    def load_pending(self, endpoint_key: str, after_pk: int, limit: int) -> list[Item]:
        d, v = delivery_t.c, version_t.c
        stmt = (
            select(d.pk, d.sub_id, d.outbox_pk, d.event_number, d.res_type, d.res_id, d.version, d.interaction,
                   d.created_at, d.attempts, d.next_at, d.first_attempt_at, v.data)
            .select_from(delivery_t.outerjoin(version_t, and_(v.res_type == d.res_type, v.res_id == d.res_id,
                                                              v.version == d.version)))
            .where(d.endpoint_key == endpoint_key, d.status == "pending", d.pk > after_pk)
            .order_by(d.pk)
            .limit(limit)
        )
        with self.service.db.read() as conn:
            rows = conn.execute(stmt).all()
        return [
            Item(Event(r.pk, r.sub_id, r.outbox_pk, r.event_number, r.res_type, r.res_id, r.version, r.interaction,
                       r.created_at, r.data), endpoint_key, r.attempts, r.next_at, r.first_attempt_at)
            for r in rows
        ]

    # ------------------------------------------------------------------ introspection
    def busy(self) -> bool:
        return any(ep.queues or ep.in_flight or ep.spilled or ep.refilling for ep in self.endpoints.values())

    def jitter(self) -> float:
        return random.random()
