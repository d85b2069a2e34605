"""The subscription service: dispatcher, delivery engine, status write-back and the workflow runner.

``services(hub)`` returns it for ``fhirhub serve`` (the app lifespan starts and stops it in
uvicorn's event loop). Database work runs in worker threads; everything else in the loop.
The hub's :class:`~hub.store.outbox.ChangeSignal` wakes the dispatcher right after each commit;
a slow poll (``FHIRHUB_SUBSCRIPTION_POLL``) remains for changes made by other processes and as
recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy import select

from hub.errors import FhirError
from hub.interactions.request import FhirRequest
from hub.security.scopes import Principal
from hub.settings import Settings
from hub.store.db import Database
from hub.store.outbox import OutboxRow
from hub.subscriptions import notify
from hub.subscriptions import spec as specs
from hub.subscriptions.clock import Clock, system_clock
from hub.subscriptions.delivery import DeliveryEngine, Outcome, cancel_all
from hub.subscriptions.dispatcher import BATCH, CursorMoved, Dispatcher
from hub.subscriptions.tables import sub_state_t

if TYPE_CHECKING:
    from hub.app import Hub, Service
    from hub.subscriptions.workflows.connectors import MessageSender
    from hub.subscriptions.workflows.engine import WorkflowEngine
    from hub.subscriptions.workflows.model import Workflow

log = logging.getLogger("hub.subscriptions")
T = TypeVar("T")
SYSTEM = "subscriptions"


@dataclass
class SubState:
    sub_id: str
    version: int
    kind: str
    status: str  # requested | active | error | off | deleted
    spec: specs.Spec | None
    error: str | None = None
    endpoint_key: str | None = None
    events: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: int | None = None
    last_delivered_at: int | None = None
    handshake: bool = False  # a topic subscription waiting for its handshake

    @property
    def deliverable(self) -> bool:
        return self.spec is not None and self.status in ("active", "error") and not self.handshake


def services(hub: Hub) -> list[Service]:
    if hub.settings.subscriptions != "on":
        return []
    return [SubscriptionService(hub)]


DISPATCH_EVERY = 0.025  # seconds: the shortest spacing of dispatcher runs while changes keep coming


class SubscriptionService:
    name = "subscriptions"

    def __init__(self, hub: Hub, clock: Clock = system_clock, *, timers: bool = True,
                 workflows: list[Workflow] | None = None) -> None:
        from hub.subscriptions.workflows.loader import load_workflows

        self.hub = hub
        self.settings: Settings = hub.settings
        self.db: Database = hub.ctx.db
        self.clock = clock
        self.topics = specs.TopicCatalog.load(self.settings.profiles_dir)
        if hub.ctx.search is None:
            raise RuntimeError("subscriptions need the search engine")
        self.matcher = specs.Matcher(hub.ctx.search)
        self.workflows: list[Workflow] = workflows if workflows is not None else load_workflows(
            self.settings.workflows_dir, self.matcher)
        self.base_url = self.settings.base_url or f"http://{self.settings.host}:{self.settings.port}/fhir"
        self.states: dict[str, SubState] = {}
        self.dispatcher = Dispatcher(self)
        self.delivery: DeliveryEngine | None = None
        self.runner: WorkflowEngine | None = None
        self._timers = timers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty: set[str] = set()
        self._transitions: dict[str, tuple[str, str]] = {}  # sub -> (from, to) status
        self._sync_queue: asyncio.Queue[str] | None = None
        self._last_sent: dict[str, float] = {}
        self._dispatching = False
        self._dispatch_lock: asyncio.Lock | None = None
        self._syncing = False
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="subscriptions")
        self.senders: dict[str, MessageSender] = {}
        from hub.subscriptions import operations

        operations.register(hub.router, self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from hub.subscriptions.workflows.engine import WorkflowEngine

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._sync_queue = asyncio.Queue()
        await self.offload(self._load)
        self.delivery = DeliveryEngine(self)
        await self.delivery.start()
        self.runner = WorkflowEngine(self, timers=self._timers)
        await self.runner.start()
        self.hub.ctx.changes.subscribe(self)
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="subscription dispatcher"),
            asyncio.create_task(self._sync_loop(), name="subscription status"),
            asyncio.create_task(self._heartbeat_loop(), name="subscription heartbeats"),
            asyncio.create_task(self._retention_loop(), name="subscription retention"),
        ]
        for st in self.states.values():
            if st.handshake and st.spec is not None:
                self._tasks.append(asyncio.create_task(self._handshake(st.sub_id)))
            self._queue_sync(st.sub_id)

    def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run blocking (database) work on the service's own threads, so that stop() can wait for it."""
        return asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self.runner is not None:
            await self.runner.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))

    def wake(self) -> None:
        """Called by the hub's ChangeSignal from the writer's thread after each commit."""
        loop, ev = self._loop, self._wake
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)

    def _load(self) -> None:
        self.dispatcher.load_cursor()
        s = sub_state_t.c
        with self.db.read() as conn:
            for r in conn.execute(select(sub_state_t).where(s.status != "deleted")):
                sp = specs.Spec.from_json(r.spec) if r.spec else None
                self.states[r.sub_id] = SubState(r.sub_id, r.version, r.kind, r.status, sp, r.error, r.endpoint_key,
                                                 r.events, r.failures, r.last_error, r.last_error_at, r.last_delivered_at,
                                                 handshake=r.kind == "topic" and r.status == "requested")

    def subscription(self, sub_id: str) -> SubState | None:
        st = self.states.get(sub_id)
        return None if st is None or st.status == "deleted" else st

    # ------------------------------------------------------------------ dispatching
    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.subscription_poll)
            # Paced: the first change after a quiet spell is dispatched at once; while changes keep coming,
            # the dispatcher starts at most every DISPATCH_EVERY seconds and takes all that came meanwhile.
            # A step is two transactions whatever its size (at 200 creates a second, one step per change
            # cost the services process ~2 ms of CPU per change and as much again in PostgreSQL).
            pause = last + DISPATCH_EVERY - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            last = loop.time()
            await self.dispatch_all()

    async def dispatch_all(self) -> int:
        """Process the outbox up to its head; returns the number of changes read."""
        if self._dispatch_lock is None:
            self._dispatch_lock = asyncio.Lock()
        async with self._dispatch_lock:
            return await self._dispatch_all()

    async def _dispatch_all(self) -> int:
        total = 0
        self._dispatching = True
        try:
            while True:
                try:
                    batch = await self.offload(self.dispatcher.step)
                except CursorMoved:
                    log.warning("another process advanced the subscription cursor; reloading")
                    self.states.clear()
                    await self.offload(self._load)
                    continue
                except Exception as exc:  # noqa: BLE001 - keep the loop alive; the poll retries
                    log.error("dispatching failed: %s", type(exc).__name__)
                    log.debug("dispatch failure", exc_info=exc)
                    return total
                if batch is None:
                    return total
                total += batch.rows
                self.dispatcher.cursor = batch.cursor
                self._apply(batch)
                if batch.rows < BATCH:
                    # The outbox's head was reached: a change committed since then woke the loop again (the
                    # wake was cleared before this run), so reading once more now would only find nothing.
                    return total
        finally:
            self._dispatching = False

    def _apply(self, batch: Any) -> None:
        for sid, st in batch.states.items():
            old = self.states.get(sid)
            self.states[sid] = st
            if st.status == "deleted":
                if self.delivery is not None:
                    self.delivery.forget(sid)
                continue
            if st.handshake and (old is None or not old.handshake or not st.spec or not st.spec.same_config(old.spec)):
                self._tasks.append(asyncio.create_task(self._handshake(sid)))
            elif st.deliverable and self.delivery is not None and st.spec is not None:
                self.delivery.release(sid, st.spec.endpoint_key)
            self._queue_sync(sid)
        if batch.items and self.delivery is not None:
            for item in batch.items:
                st = self.states.get(item.ev.sub_id)
                if st is not None and st.kind == "topic" and item.ev.event_number is not None:
                    st.events = max(st.events, item.ev.event_number)
            self.delivery.offer(batch.items)
        if batch.runs and self.runner is not None:
            self.runner.notify(batch.runs)

    def decide(self, prev: SubState | None, row: OutboxRow, resource: dict[str, Any] | None, now: int) -> SubState:
        """The status a Subscription change leads to (runs in the dispatcher's thread, pure)."""
        if resource is None:
            return SubState(row.res_id, row.version, prev.kind if prev else "r4", "deleted", None,
                            endpoint_key=prev.endpoint_key if prev else None, events=prev.events if prev else 0)
        kind = "topic" if specs.is_topic_based(resource) else "r4"
        asked = str(resource.get("status") or "requested")
        events = prev.events if prev is not None and prev.kind == kind else 0
        base = SubState(row.res_id, row.version, kind, "active", None, events=events,
                        failures=prev.failures if prev else 0, last_error=prev.last_error if prev else None,
                        last_error_at=prev.last_error_at if prev else None,
                        last_delivered_at=prev.last_delivered_at if prev else None)
        try:
            sp = specs.parse(resource, self.topics, self.matcher.check)
        except specs.SpecError as exc:
            base.status, base.error = ("off" if asked == "off" else "error"), str(exc)
            base.endpoint_key = prev.endpoint_key if prev else None
            return base
        if prev is not None and prev.spec is not None and sp.secret_generated:
            sp.secret, sp.secret_generated = prev.spec.secret, prev.spec.secret_generated  # keep the one handed out
        base.spec = sp
        base.endpoint_key = sp.endpoint_key
        if asked == "off":
            base.status = "off"
            return base
        activate = (
            prev is None or prev.spec is None or prev.status in ("off", "deleted")
            or (asked != prev.status and asked in ("requested", "active") and not (prev.handshake and asked == "requested"))
            or (kind == "topic" and prev.spec.endpoint != sp.endpoint)
        )
        if activate:
            base.failures, base.error = 0, None
            if kind == "topic":
                base.status, base.handshake = "requested", True
            else:
                base.status = "active"
        else:
            assert prev is not None
            base.status, base.error, base.handshake = prev.status, prev.error, prev.handshake
        return base

    # ------------------------------------------------------------------ delivery feedback
    def on_outcome(self, outcome: Outcome) -> None:
        st = self.states.get(outcome.item.ev.sub_id)
        if st is None:
            return
        self._dirty.add(st.sub_id)
        self._last_sent[st.sub_id] = asyncio.get_running_loop().time()
        if outcome.status == "delivered":
            st.failures = 0
            st.last_delivered_at = outcome.at
            if st.status == "error" and st.error and st.error.startswith("deliveries"):
                self._transition(st, "active", None)
        elif outcome.status in ("pending", "dead"):
            st.failures += 1
            st.last_error, st.last_error_at = outcome.error, outcome.at
            if st.status == "active" and (st.failures >= self.settings.subscription_error_after or outcome.status == "dead"):
                self._transition(st, "error", f"deliveries keep failing: {outcome.error} ({st.failures} failed attempts in a row)")

    def _transition(self, st: SubState, status: str, error: str | None) -> None:
        old = st.status
        st.status, st.error = status, error
        first = self._transitions.get(st.sub_id, (old, status))[0]
        self._transitions[st.sub_id] = (first, status)
        log.info("subscription %s: %s -> %s", st.sub_id, old, status)
        self._queue_sync(st.sub_id)

    def state_rows(self) -> list[dict[str, Any]]:
        """sub_state updates for the delivery engine's next write (counters, and active<->error)."""
        rows = []
        now = self.clock()
        for sid in self._dirty:
            st = self.states.get(sid)
            if st is None or st.status in ("off", "deleted"):
                continue
            rows.append({"b_sub": sid, "status": st.status, "error": st.error, "failures": st.failures,
                         "last_error": (st.last_error or "")[:1000] or None, "last_error_at": st.last_error_at,
                         "last_delivered_at": st.last_delivered_at, "updated_at": now})
        self._dirty.clear()
        self._transitions.clear()
        return rows

    # ------------------------------------------------------------------ handshake and heartbeat
    async def _handshake(self, sub_id: str) -> None:
        assert self.delivery is not None
        attempt = 0
        while True:
            st = self.states.get(sub_id)
            if st is None or not st.handshake or st.spec is None or st.status in ("off", "deleted"):
                return
            attempt += 1
            req = notify.control_request(st.spec, self.base_url, "handshake", "requested", st.events, self.clock())
            _, error = await self.delivery.send(st.spec.endpoint_key, req, st.spec.timeout)
            st = self.states.get(sub_id)
            if st is None or not st.handshake:
                return
            if error is None:
                st.handshake = False
                self._transition(st, "active", None)
                self._dirty.add(sub_id)
                await self.offload(self._write_status, sub_id)
                self.delivery.release(sub_id, st.spec.endpoint_key if st.spec else "")
                return
            if attempt >= 5:
                st.handshake = False
                self._transition(st, "error", f"handshake failed: {error}")
                self._dirty.add(sub_id)
                await self.offload(self._write_status, sub_id)
                if st.spec is not None:
                    self.delivery.release(sub_id, st.spec.endpoint_key)  # keep delivering: events must not be lost
                return
            await asyncio.sleep(min(30.0, self.settings.subscription_retry_initial * 2 ** attempt))

    def _write_status(self, sub_id: str) -> None:
        st = self.states.get(sub_id)
        if st is None:
            return
        s = sub_state_t.c
        from sqlalchemy import update

        with self.db.write() as conn:
            conn.execute(update(sub_state_t).where(s.sub_id == sub_id, s.status != "deleted")
                         .values(status=st.status, error=st.error, updated_at=self.clock()))

    async def _heartbeat_loop(self) -> None:
        assert self.delivery is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for st in list(self.states.values()):
                sp = st.spec
                if sp is None or sp.kind != "topic" or not sp.heartbeat or not st.deliverable:
                    continue
                last = self._last_sent.get(st.sub_id)
                if last is None:
                    self._last_sent[st.sub_id] = now
                    continue
                if now - last >= sp.heartbeat:
                    self._last_sent[st.sub_id] = now
                    req = notify.control_request(sp, self.base_url, "heartbeat", st.status, st.events, self.clock())
                    self._tasks.append(asyncio.create_task(self._fire(sp.endpoint_key, req)))

    async def _fire(self, endpoint_key: str, req: notify.Request) -> None:
        assert self.delivery is not None
        await self.delivery.send(endpoint_key, req)

    async def _retention_loop(self) -> None:
        from sqlalchemy import delete

        from hub.subscriptions.tables import delivery_t

        while True:
            await asyncio.sleep(3600)
            cutoff = self.clock() - int(self.settings.subscription_retention_days * 86400 * 1_000_000)

            def purge(before: int) -> None:
                d = delivery_t.c
                with self.db.write() as conn:
                    conn.execute(delete(delivery_t).where(d.status.in_(("delivered", "resent", "cancelled")), d.done_at < before))

            with contextlib.suppress(Exception):
                await self.offload(purge, cutoff)

    # ------------------------------------------------------------------ status write-back
    def _queue_sync(self, sub_id: str) -> None:
        if self._sync_queue is not None:
            self._sync_queue.put_nowait(sub_id)

    async def _sync_loop(self) -> None:
        assert self._sync_queue is not None
        while True:
            sub_id = await self._sync_queue.get()
            self._syncing = True
            try:
                await self.offload(self.sync_resource, sub_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("writing the status of subscription %s failed: %s", sub_id, type(exc).__name__)
            finally:
                self._syncing = False

    def sync_resource(self, sub_id: str) -> None:
        """Write the decided status, error and signing secret back into the Subscription resource."""
        for _ in range(5):
            st = self.states.get(sub_id)
            if st is None or st.status == "deleted":
                return
            with self.db.read() as conn:
                stored = self.hub.ctx.repo.read(conn, "Subscription", sub_id)
            if stored is None or stored.deleted or stored.data is None:
                return
            res = orjson.loads(stored.data)
            want = dict(res)
            want["status"] = st.status if st.status != "requested" or st.kind == "topic" else "requested"
            if st.status == "error" and st.error:
                want["error"] = st.error[:1000]
            else:
                want.pop("error", None)
            if st.spec is not None and st.spec.secret_generated:
                exts = [e for e in want.get("extension", []) if e.get("url") != specs.EXT_SECRET]
                exts.append({"url": specs.EXT_SECRET, "valueString": st.spec.secret})
                want["extension"] = exts
            if want == res:
                return
            meta = {k: v for k, v in (res.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
            want.pop("meta", None)
            if meta:
                want["meta"] = meta
            resp = self.hub.router.dispatch(FhirRequest(
                "PUT", f"Subscription/{sub_id}", headers={"if-match": f'W/"{stored.version}"', "prefer": "return=minimal"},
                body=want, base_url=self.base_url, origin=SYSTEM, principal=Principal.system(SYSTEM)))
            if resp.status == 412:
                continue
            if resp.status >= 300:
                log.warning("status write-back of subscription %s answered %d", sub_id, resp.status)
                log.debug("status write-back answer: %s", resp.body)
            return

    # ------------------------------------------------------------------ helpers for others
    def register_sender(self, connector: str, sender: MessageSender) -> None:
        """The HL7v2 side registers an outbound connector for workflow ``message`` steps (before start)."""
        self.senders[connector] = sender

    def kick(self, endpoint_keys: set[str]) -> None:
        """Thread-safe: rows were added to the delivery table ($resend); let those endpoints refill."""
        loop, engine = self._loop, self.delivery
        if loop is None or engine is None or not endpoint_keys:
            return
        keys = sorted(endpoint_keys)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(engine.kick, keys)

    def version_data(self, res_type: str, res_id: str, version: int) -> bytes | None:
        with self.db.read() as conn:
            stored = self.hub.ctx.repo.vread(conn, res_type, res_id, version)
        return stored.data if stored is not None else None

    async def drain(self, timeout: float = 30.0) -> None:
        """Tests: dispatch everything, then wait until deliveries and workflow runs are idle."""
        async def settle() -> None:
            while True:
                n = await self.dispatch_all()
                ran = await self.runner.run_due() if self.runner is not None else 0
                if self.delivery is not None:
                    await self.delivery.settled()
                while self._syncing or (self._sync_queue is not None and not self._sync_queue.empty()):
                    await asyncio.sleep(0.005)
                if n == 0 and ran == 0:
                    return

        await asyncio.wait_for(settle(), timeout)


def check_subscription(resource: dict[str, Any], hub: Hub) -> None:
    """Raise a 422-style FhirError when ``resource`` (a Subscription) cannot be served (for a write hook)."""
    from hub.errors import Category

    topics = specs.TopicCatalog.load(hub.settings.profiles_dir)
    if hub.ctx.search is None:
        return
    try:
        specs.parse(resource, topics, specs.Matcher(hub.ctx.search).check)
    except specs.SpecError as exc:
        raise FhirError(Category.UNPROCESSABLE, "FHIRHUB-SUBSCRIPTION-INVALID", str(exc)) from None
