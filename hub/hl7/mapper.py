"""Where a listener parses and maps its messages: in its worker threads, or in mapping processes.

Parsing and mapping (:func:`hub.hl7.pipeline.prepare`) are pure Python and CPU-bound: in the
hub's process they share one interpreter lock with the event loop, the commits, the outbox
dispatcher and the workflows. A listener with ``mapping_processes: N`` (N >= 1) maps in N
processes of its own instead (``concurrent.futures.ProcessPoolExecutor``, started with ``spawn``,
so no thread or socket of the hub is inherited); the hub's process keeps the store, the commits
and the ACKs. What crosses over, in batches: the stored messages' keys and bytes one way, their
:class:`~hub.hl7.pipeline.Prepared` (the Bundle, its errors) back.

Each mapping process loads the connector's mapping set itself and checks it for changes as often
as the hub does (``FHIRHUB_MAPPINGS_RELOAD_SECONDS``): a broken edit is reported by the hub's own
reload and keeps the previous set in use in both. If a mapping process dies, the message it held
is mapped again in a thread and a new pool is started (if the new ones die within ``RESTART_QUIET``
seconds too, the listener maps in its threads from then on): nothing acknowledged depends on it,
since the message is stored before it is mapped. A mapping process ends when the hub is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from hub.hl7.connectors import Listener
from hub.hl7.pipeline import MappingCache, Pipeline, Prepared, prepare

log = logging.getLogger("hub.hl7")
RESTART_QUIET = 60.0  # seconds: mapping processes that die again this soon after a restart are not restarted


class Mapper(Protocol):
    """Parse, filter and map a stored message (never raises: failures are carried in the result)."""

    async def start(self) -> None: ...

    async def prepare(self, pk: int, raw: bytes, peer: str | None) -> Prepared: ...

    def close(self) -> None: ...


class ThreadMapper:
    """Maps in the listener's worker threads (``mapping_processes: 0``, the default)."""

    def __init__(self, pipeline: Pipeline, executor: concurrent.futures.Executor) -> None:
        self.pipeline = pipeline
        self.executor = executor

    async def start(self) -> None:
        pass

    async def prepare(self, pk: int, raw: bytes, peer: str | None) -> Prepared:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.pipeline.prepare, pk, raw, peer)

    def close(self) -> None:
        pass  # the executor is the listener's


class ProcessMapper:
    """Maps in ``connector.mapping_processes`` processes; falls back to ``fallback`` if one dies.

    Messages cross over in batches: one batch in flight per process; a message that arrives meanwhile waits
    for the next batch, which takes every message waiting then (at most ``MAX_BATCH``). Each crossing costs
    the listener's interpreter the pool's hand-offs (its manager and feeder threads, a pipe, a future); at
    ~250 msg/s on SQLite the manager thread alone took 12-14 % of a core with two batches in flight per
    process, 6 % with one, so one it is. With nothing in flight a message goes at once: a quiet listener
    adds no wait.
    """

    MAX_BATCH = 32
    IN_FLIGHT = 1  # batches per mapping process

    def __init__(self, connector: Listener, reload_seconds: float, fallback: ThreadMapper, log_level: int) -> None:
        self.connector = connector
        self.reload_seconds = reload_seconds
        self.fallback = fallback
        self.log_level = log_level
        self.restarts = 0
        self.batches = 0
        self._restarted_at = -RESTART_QUIET
        self._pool: concurrent.futures.ProcessPoolExecutor | None = self._start()
        self._waiting: list[tuple[tuple[int, bytes, str | None], asyncio.Future[Prepared]]] = []
        self._in_flight = 0
        self._closed = False

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.connector.mapping_processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start, initargs=(_ChildConfig(self.connector, self.reload_seconds, self.log_level),))

    async def start(self) -> None:
        """Start every mapping process and load its mapping set before the first message arrives."""
        pool = self._pool
        assert pool is not None
        try:
            await asyncio.gather(*(asyncio.wrap_future(pool.submit(_child_ready))
                                   for _ in range(self.connector.mapping_processes)))
        except BrokenProcessPool:
            self._give_up(pool)

    async def prepare(self, pk: int, raw: bytes, peer: str | None) -> Prepared:
        if self._pool is None:
            return await self.fallback.prepare(pk, raw, peer)
        fut: asyncio.Future[Prepared] = asyncio.get_running_loop().create_future()
        self._waiting.append(((pk, raw, peer), fut))
        self._send()
        prepared = await fut
        prepared.raw = raw  # not sent back: the hub has it
        return prepared

    def _send(self) -> None:
        """Send what waits, as batches, while fewer than ``IN_FLIGHT`` per process are being mapped."""
        if self._closed:  # the listener stops: the messages stay stored, the next start maps them
            for _, fut in self._waiting:
                fut.cancel()
            self._waiting.clear()
            return
        while self._waiting and self._in_flight < self.IN_FLIGHT * self.connector.mapping_processes:
            batch, self._waiting = self._waiting[: self.MAX_BATCH], self._waiting[self.MAX_BATCH :]
            pool = self._pool
            if pool is None:
                self._to_threads(batch)
                continue
            try:
                done = pool.submit(_child_prepare_many, [item for item, _ in batch])
            except (BrokenProcessPool, RuntimeError):  # broken, or shut down under us: these are mapped here
                self._broken(pool)
                self._to_threads(batch)
                continue
            self._in_flight += 1
            self.batches += 1
            asyncio.wrap_future(done).add_done_callback(partial(self._mapped, pool, batch))

    def _mapped(self, pool: concurrent.futures.ProcessPoolExecutor,
                batch: list[tuple[tuple[int, bytes, str | None], asyncio.Future[Prepared]]],
                done: asyncio.Future[list[Prepared]]) -> None:
        self._in_flight -= 1
        exc = None if done.cancelled() else done.exception()
        if self._closed:
            for _, fut in batch:
                fut.cancel()  # the listener stops: the messages stay stored, the next start maps them
            return
        if done.cancelled() or isinstance(exc, BrokenProcessPool):
            # a mapping process died (killed, out of memory): its messages are mapped here, the pool replaced
            self._broken(pool)
            self._to_threads(batch)
        elif exc is not None:  # not expected (prepare carries its failures): mapped again here
            log.error("mllp %s: a mapping batch failed type=%s", self.connector.name, type(exc).__name__)
            self._to_threads(batch)
        else:
            for (_, fut), prepared in zip(batch, done.result(), strict=True):
                if not fut.done():
                    fut.set_result(prepared)
        self._send()

    def _to_threads(self, batch: list[tuple[tuple[int, bytes, str | None], asyncio.Future[Prepared]]]) -> None:
        for (pk, raw, peer), fut in batch:
            if fut.done():
                continue
            task = asyncio.ensure_future(self.fallback.prepare(pk, raw, peer))
            task.add_done_callback(partial(_settle, fut))

    def _broken(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._closed or pool is not self._pool:
            return  # stopping, or already replaced (or given up) by an earlier batch of the same pool
        if time.monotonic() - self._restarted_at < RESTART_QUIET:
            self._give_up(pool)  # new ones die too (they cannot start): the threads map from now on
        else:
            log.error("mllp %s: a mapping process stopped; starting new ones", self.connector.name)
            self.restarts += 1
            self._restarted_at = time.monotonic()
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()

    def _give_up(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        log.error("mllp %s: mapping processes cannot run; mapping in the listener's threads", self.connector.name)
        pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def mapper_for(connector: Listener, pipeline: Pipeline, executor: concurrent.futures.Executor,
               reload_seconds: float) -> Mapper:
    threads = ThreadMapper(pipeline, executor)
    if connector.mapping_processes < 1:
        return threads
    return ProcessMapper(connector, reload_seconds, threads, logging.getLogger("hub").getEffectiveLevel())


def _settle(fut: asyncio.Future[Prepared], task: asyncio.Future[Prepared]) -> None:
    if fut.done():
        return
    if task.cancelled():
        fut.cancel()
    elif (exc := task.exception()) is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(task.result())


# ------------------------------------------------------------------------------ in the mapping process


@dataclass(frozen=True)
class _ChildConfig:
    connector: Listener
    reload_seconds: float
    log_level: int


@dataclass
class _Child:
    config: _ChildConfig
    mappings: MappingCache
    checked: float


# A worker process of the pool serves one listener: its state is set once by the pool's initializer.
_child: _Child | None = None


def _child_start(config: _ChildConfig) -> None:
    global _child  # noqa: PLW0603 - the pool's initializer is the only way to give a worker process its state
    from hub.workers import exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the hub, which then stops its pool
    # a SIGKILL of the hub stops no pool, and the pool's queues would keep this process waiting forever
    exit_with_parent()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s [mapping] %(message)s")
    mappings = MappingCache()
    mappings.get(config.connector.mappings)  # loaded (and checked) before the first message
    _child = _Child(config, mappings, time.monotonic())


def _child_ready() -> bool:
    return _child is not None


def _child_prepare_many(items: list[tuple[int, bytes, str | None]]) -> list[Prepared]:
    child = _child
    assert child is not None, "the mapping process was not initialized"
    every = child.config.reload_seconds
    if every > 0 and time.monotonic() - child.checked >= every:
        child.checked = time.monotonic()
        child.mappings.check()
    mappings = child.mappings.get(child.config.connector.mappings)
    out = []
    for pk, raw, peer in items:
        prepared = prepare(child.config.connector, mappings, pk, raw, peer)
        prepared.raw = b""  # the hub has the bytes already
        out.append(prepared)
    return out
