"""The background service ``fhirhub serve`` runs for the ``fhir-rest`` connectors.

Every ``connectors/fhir-*.yaml`` (``FHIRHUB_SYNC_CONNECTORS_DIR``) becomes a :class:`Connector`. The
service runs, in uvicorn's event loop:

* an APScheduler job per connector and pulled type, on the connector's schedule (first run at start);
* a push task per connector, woken at once after every local commit (``hub.ctx.changes``) and on a
  slow poll (``push.poll``) for changes other processes made and for retries after a failure;
* discovery of each remote at start (its warnings are logged and shown by ``status``).

Pull, push and replays of one connector never overlap (the connector's lock); the database work runs
in worker threads, the HTTP calls in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hub.sync.config import ConnectorConfig, load_dir
from hub.sync.connector import Connector
from hub.sync.remote import Remote, RemoteError

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from hub.app import Hub, Service

log = logging.getLogger("hub.sync")


def local_base(hub: Hub) -> str:
    s = hub.settings
    return (s.base_url or f"http://{s.host}:{s.port}/fhir").rstrip("/")


def configs(hub: Hub) -> list[ConnectorConfig]:
    """The enabled connectors of ``settings.sync_connectors_dir`` (a broken file stops the start, naming file and line)."""
    folder = hub.settings.sync_connectors_dir
    if folder is None:
        return []
    return load_dir(folder, hub.ctx.resource_types)


class SyncService:
    name = "sync"

    def __init__(self, hub: Hub, cfgs: list[ConnectorConfig]) -> None:
        self.hub = hub
        self.connectors: dict[str, Connector] = {}
        for cfg in cfgs:
            remote = Remote(cfg, audit=hub.ctx.audit)
            self.connectors[cfg.name] = Connector(cfg, hub.ctx, hub.router, remote, local_base(hub))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        self._loop = asyncio.get_running_loop()
        scheduler = AsyncIOScheduler(event_loop=self._loop, timezone=UTC)
        for name, connector in self.connectors.items():
            cfg = connector.cfg
            trigger = IntervalTrigger(seconds=cfg.schedule.every) if cfg.schedule.every else \
                CronTrigger.from_crontab(cfg.schedule.cron or "*/5 * * * *", timezone=UTC)
            for res_type in cfg.pull_types:
                scheduler.add_job(self._pull_job, trigger, args=[name, res_type], id=f"sync:{name}:{res_type}",
                                  max_instances=1, coalesce=True, misfire_grace_time=None,
                                  **({"next_run_time": datetime.now(UTC)} if cfg.pull_at_start else {}))
            self._wakeups[name] = asyncio.Event()
            self._wakeups[name].set()
            self._tasks.append(self._loop.create_task(self._push_loop(name), name=f"sync-push-{name}"))
        scheduler.start()
        self._scheduler = scheduler
        self.hub.ctx.changes.subscribe(self)
        log.info("sync: %d connector(s): %s", len(self.connectors), ", ".join(self.connectors) or "-")

    async def stop(self) -> None:
        self._stopping = True
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connector in self.connectors.values():
            await connector.remote.aclose()

    # -- called from the writer's thread after every commit
    def wake(self) -> None:
        loop = self._loop
        if loop is None or self._stopping:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._set_all)

    def _set_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

    async def _pull_job(self, name: str, res_type: str) -> None:
        try:
            await self.connectors[name].pull(res_type)
        except Exception as exc:  # noqa: BLE001 - a scheduled job must not die; no resource content is logged
            log.error("connector %s: pull %s failed (%s)", name, res_type, type(exc).__name__)
            log.debug("pull failure detail", exc_info=exc)

    async def _push_loop(self, name: str) -> None:
        connector = self.connectors[name]
        event = self._wakeups[name]
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=connector.cfg.push_poll)
            event.clear()
            try:
                await connector.push()
            except RemoteError as exc:
                log.warning("connector %s: push stopped (%s)", name, exc.code)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep pushing later; no resource content is logged
                log.error("connector %s: push failed (%s)", name, type(exc).__name__)
                log.debug("push failure detail", exc_info=exc)


def find(hub: Hub) -> SyncService | None:
    return next((s for s in hub.services if isinstance(s, SyncService)), None)


def services(hub: Hub) -> list[Service]:
    """One SyncService when ``connectors/fhir-*.yaml`` defines enabled connectors; none otherwise."""
    cfgs = configs(hub)
    return [SyncService(hub, cfgs)] if cfgs else []
