"""The background services this package runs in ``fhirhub serve``: MLLP listeners and senders.

``services(hub)`` loads ``connectors/*.yaml`` (checked with jsonschema; a broken file stops the
start with its file and line), loads the mapping sets they use (same), and returns:

1. ``hl7`` - the :class:`Runtime` the connectors share: the group-commit message-store writer,
   the mapping-file watcher (reload on change, keep the old set on a bad edit) and the
   retention purge;
2. one :class:`~hub.hl7.listener.ListenerService` per enabled ``mllp-listener``;
3. one :class:`~hub.hl7.sender.SenderService` per enabled ``mllp-sender``.

For workflows: ``runtime_of(hub).send_v2(connector_name, message) -> queued id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from hub.hl7 import store
from hub.hl7.connectors import Connectors, load
from hub.hl7.pipeline import MappingCache
from hub.hl7.settings import Hl7Settings
from hub.hl7.store import StoreWriter
from hub.store.repository import now_micros

if TYPE_CHECKING:
    from hub.app import Hub, Service
    from hub.hl7.listener import ListenerService
    from hub.hl7.sender import SenderService
    from hub.subscriptions.workflows.connectors import OutboundMessage

log = logging.getLogger("hub.hl7")


class Runtime:
    """What the HL7 connectors of one hub share (a :class:`hub.app.Service` named ``hl7``)."""

    name = "hl7"

    def __init__(self, hub: Hub, connectors: Connectors, settings: Hl7Settings | None = None) -> None:
        self.hub = hub
        self.settings = settings or Hl7Settings()
        self.connectors = connectors
        self.router = hub.router
        self.db = hub.ctx.db
        self.repo = hub.ctx.repo
        self.audit = hub.ctx.audit
        self.changes = hub.ctx.changes
        self.base_url = hub.settings.base_url or f"http://{hub.settings.host}:{hub.settings.port}/fhir"
        self.mappings = MappingCache()
        self.writer = StoreWriter(self.db)
        self.listeners: dict[str, ListenerService] = {}
        self.senders: dict[str, SenderService] = {}
        self._started = False
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._ready: dict[str, asyncio.Event] = {}

    # -- the services
    def connector_services(self) -> list[Service]:
        """One service per enabled connector (built once)."""
        from hub.hl7.listener import ListenerService
        from hub.hl7.sender import SenderService

        if not self.listeners and not self.senders:
            for c in self.connectors.listeners:
                self.listeners[c.name] = ListenerService(self, c)
            for s in self.connectors.senders:
                self.senders[s.name] = SenderService(self, s)
        return [*self.listeners.values(), *self.senders.values()]

    def start(self) -> None:
        """Idempotent: the writer thread (connectors call it too)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self.writer.start()

    def stop(self) -> None:
        self.writer.stop()
        with self._lock:
            self._started = False

    async def _start(self) -> None:
        self.start()
        self._task = asyncio.ensure_future(self._housekeeping())

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    async def _housekeeping(self) -> None:
        """Mapping reloads (every FHIRHUB_MAPPINGS_RELOAD_SECONDS) and the retention purge (hourly)."""
        loop = asyncio.get_running_loop()
        interval = self.settings.mappings_reload_seconds
        last_purge = 0.0
        while True:
            await asyncio.sleep(interval if interval > 0 else 60)
            if interval > 0:
                try:
                    await loop.run_in_executor(None, self.mappings.check)
                except Exception as exc:  # noqa: BLE001 - keep watching
                    log.error("mapping reload check failed (%s)", type(exc).__name__)
            days = self.settings.hl7_retention_days
            if days > 0 and loop.time() - last_purge > 3600:
                last_purge = loop.time()
                before = now_micros() - int(days * 86400 * 1e6)
                try:
                    n = await self.writer.acall(partial(store.purge, before=before))
                    if n:
                        log.info("message store: %d messages older than %g days purged", n, days)
                except Exception as exc:  # noqa: BLE001
                    log.error("message store purge failed (%s)", type(exc).__name__)

    # -- listener readiness (tests, status)
    def ready(self, listener: ListenerService) -> None:
        self._event(listener.connector.name).set()

    async def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._event(name).wait(), timeout)

    def _event(self, name: str) -> asyncio.Event:
        if name not in self._ready:
            self._ready[name] = asyncio.Event()
        return self._ready[name]

    # -- for workflows
    def send_v2(self, connector_name: str, message: str | bytes) -> int:
        """Queue an HL7v2 message for the ``mllp-sender`` named ``connector_name``; returns its
        message-store key (``/admin/messages/{key}`` shows its delivery). Durable at return;
        blocking (a database write): from a coroutine, call it through ``asyncio.to_thread``."""
        from hub.hl7.sender import queue_message

        running = self.senders.get(connector_name)
        if running is not None:
            return running.send_v2(message)
        config = self.connectors.sender(connector_name)
        if config is None:
            raise KeyError(f"no enabled mllp-sender named {connector_name!r}")
        return queue_message(self.db, config, message)


class WorkflowSender:
    """A workflow ``message`` step's way out (``hub.subscriptions.workflows.connectors.MessageSender``): the
    resource is mapped with the ``mllp-sender``'s outbound mapping files and queued on it durably
    (:meth:`Runtime.send_v2`). The step's idempotency key is the message's identity: MSH-10 is derived
    from it, so a retried step queues one message."""

    def __init__(self, runtime: Runtime, connector: str) -> None:
        self.runtime = runtime
        self.connector = connector

    @staticmethod
    def control_id(idempotency_key: str) -> str:
        return "WF" + hashlib.blake2b(idempotency_key.encode(), digest_size=9).hexdigest()  # 20 characters (ST)

    async def send(self, message: OutboundMessage) -> str:
        from hub.hl7.errors import Hl7Error
        from hub.hl7.outbound import to_v2
        from hub.subscriptions.workflows.connectors import MessageError

        config = self.runtime.connectors.sender(self.connector)
        if config is None:
            raise MessageError(f"no enabled mllp-sender named {self.connector!r}", transient=False)
        control_id = self.control_id(message.idempotency_key)
        try:
            text = to_v2(message.resource, message.event or "auto", message.related,
                         self.runtime.mappings.get(config.mappings), control_id=control_id,
                         timestamp=time.strftime("%Y%m%d%H%M%S+0000", time.gmtime()),
                         sending_application=config.sending_application, sending_facility=config.sending_facility,
                         receiving_application=config.receiving_application,
                         receiving_facility=config.receiving_facility)
        except Hl7Error as err:  # the resource cannot be expressed in v2 by these mapping files: the step fails
            raise MessageError(f"{err.code}: {err.message}", transient=False) from None
        try:
            pk = await asyncio.to_thread(self.runtime.send_v2, self.connector, text)
        except ValueError as exc:
            raise MessageError(str(exc), transient=False) from None
        except Exception as exc:  # noqa: BLE001 - the store is unavailable: the workflow retries
            raise MessageError(f"the message could not be queued ({type(exc).__name__})", transient=True) from None
        log.info("workflow message %s queued on %s (message %d)", control_id, self.connector, pk)
        return control_id


def register_workflow_senders(hub: Hub, runtime: Runtime) -> list[str]:
    """Make every enabled ``mllp-sender`` available to workflow ``message`` steps (the subscription
    service's ``register_sender``), when the hub runs one. Returns the names registered."""
    names: list[str] = []
    for service in hub.services:
        register = getattr(service, "register_sender", None)
        if callable(register):
            for c in runtime.connectors.senders:
                register(c.name, WorkflowSender(runtime, c.name))
                names.append(c.name)
    return names


class RuntimeService:
    """The runtime as a :class:`hub.app.Service` (started first, stopped last)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.name = "hl7"

    async def start(self) -> None:
        await self.runtime._start()

    async def stop(self) -> None:
        await self.runtime._stop()


def runtime_of(hub: Hub) -> Runtime | None:
    """The HL7 runtime among the hub's services (None when the hub runs without them)."""
    for service in hub.services:
        runtime = getattr(service, "runtime", None)
        if isinstance(runtime, Runtime):
            return runtime
    return None


def services(hub: Hub) -> list[Service]:
    """The HL7 runtime, then one service per enabled MLLP connector (none if ``connectors/`` has none)."""
    settings = Hl7Settings()
    connectors = load(settings)
    if not connectors.listeners and not connectors.senders:
        return []
    runtime = Runtime(hub, connectors, settings)
    register_workflow_senders(hub, runtime)  # the subscription service comes first in hub.services
    for directory in [c.mappings for c in connectors.listeners] + [c.mappings for c in connectors.senders]:
        runtime.mappings.get(directory)  # a broken mapping file stops the start, with file and line
    return [RuntimeService(runtime), *runtime.connector_services()]
