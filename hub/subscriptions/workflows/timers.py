"""Durable waits: APScheduler 3 with its job store (table ``wf_timer``) in the hub's database.

A waiting run gets a date job ``run-<pk>``; when it fires the runner resumes the run. The
``wf_run`` row stays the truth (status ``waiting``, ``wake_at``): at start every waiting run is
scheduled again (``replace_existing``), and the runner's recovery sweep resumes any run whose time
has passed, so a crash between the run's commit and the job's insert loses nothing. Jobs never
expire (``misfire_grace_time=None``): a wait that ended while the hub was down fires at start.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from hub.store.db import Database

log = logging.getLogger("hub.subscriptions.timers")


def due(run_pk: int) -> int:
    """The job's function: it only reports the run; the listener resumes it in the runner."""
    return run_pk


class WaitTimers:
    def __init__(self, db: Database, on_due: Callable[[int], None]) -> None:
        self.on_due = on_due
        self.scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=db.engine, tablename="wf_timer")},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.scheduler.shutdown(wait=False)

    def schedule(self, run_pk: int, at_micros: int) -> None:
        when = datetime.fromtimestamp(at_micros / 1_000_000, UTC)
        self.scheduler.add_job("hub.subscriptions.workflows.timers:due", "date", run_date=when, args=[run_pk],
                               id=f"run-{run_pk}", replace_existing=True)

    def cancel(self, run_pk: int) -> None:
        with contextlib.suppress(Exception):
            self.scheduler.remove_job(f"run-{run_pk}")

    def _event(self, event: JobExecutionEvent) -> None:
        job_id = getattr(event, "job_id", "") or ""
        if job_id.startswith("run-"):
            self.on_due(int(job_id[4:]))
