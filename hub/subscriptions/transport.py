"""How a notification reaches its endpoint: one HTTP attempt, in this process or in sender processes.

* :class:`Sessions`: an aiohttp session per endpoint (``scheme://host:port``), each with its own pool of
  ``FHIRHUB_SUBSCRIPTION_CONCURRENCY`` connections, so a slow endpoint only holds its own.
* :class:`SenderProcesses`: the same sessions, in ``FHIRHUB_SUBSCRIPTION_SENDERS`` child processes
  (``python -m hub.subscriptions.transport``). One attempt costs the HTTP client about 0.3 ms of Python; at
  2,000 deliveries a second that was most of the services process's event loop, which also keeps the
  queues, the order, the retries and the outcomes (measured 2026-12-07: deliveries topped out near 1,600/s
  on PostgreSQL, the loop busy four fifths of the time). The services process keeps all of that; a child
  only sends. Each endpoint goes to one child (a stable hash of its key), so its pool and its isolation stay
  whole.

Frames on a child's stdin: ``>II`` (head length, body length), the head (JSON: request number, endpoint key,
method, URL, headers, timeout) and the body bytes. On its stdout: ``>I`` length and JSON ``[number, status,
error]``. A child that exits (or is killed) fails its attempts in flight with an error, so they are retried
like any failed attempt (at least once), and is started again. A child whose stdin closes (the services
process stopped or died) ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import sys
import zlib
from typing import Any, Protocol

import aiohttp
import orjson

from hub.subscriptions.notify import Request

log = logging.getLogger("hub.subscriptions.transport")
Result = tuple[int | None, str | None]  # (HTTP status, error text without PHI); error None on 2xx
RESTART_AFTER = 1.0  # seconds before a sender process that exited is started again
GRACE = 5.0  # seconds past the HTTP timeout after which an attempt the child has not answered counts as lost
_HEAD = struct.Struct(">II")
_LEN = struct.Struct(">I")


class Transport(Protocol):
    async def start(self) -> None: ...

    async def send(self, endpoint_key: str, req: Request, timeout: float | None = None) -> Result: ...

    async def close(self) -> None: ...


class Sessions:
    """In this process: one aiohttp session (and connection pool) per endpoint."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        return None

    def _session(self, endpoint_key: str) -> aiohttp.ClientSession:
        session = self.sessions.get(endpoint_key)
        if session is None:
            session = self.sessions[endpoint_key] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout), auto_decompress=False, skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),  # a notification carries no cookie an endpoint set
            )
        return session

    async def send(self, endpoint_key: str, req: Request, timeout: float | None = None) -> Result:
        session = self._session(endpoint_key)
        kwargs: dict[str, Any] = {}
        if timeout:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=min(timeout, self.timeout))
        try:
            async with session.request(req.method, req.url, data=req.body, headers=req.headers,
                                       allow_redirects=False, **kwargs) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return resp.status, None
                return resp.status, f"HTTP {resp.status}"
        except TimeoutError:
            return None, "timed out"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"connection failed ({type(exc).__name__})"

    async def close(self) -> None:
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            await session.close()


class SenderProcesses:
    """``count`` child processes that send; the caller's coroutine waits for its child's answer."""

    def __init__(self, count: int, concurrency: int, timeout: float) -> None:
        self.children = [_Child(i, concurrency, timeout) for i in range(max(1, count))]

    async def start(self) -> None:
        for child in self.children:
            await child.start()

    async def send(self, endpoint_key: str, req: Request, timeout: float | None = None) -> Result:
        child = self.children[zlib.crc32(endpoint_key.encode()) % len(self.children)]
        return await child.send(endpoint_key, req, timeout)

    async def close(self) -> None:
        for child in self.children:
            await child.close()


class _Child:
    def __init__(self, slot: int, concurrency: int, timeout: float) -> None:
        self.slot = slot
        self.args = [sys.executable, "-m", "hub.subscriptions.transport", str(concurrency), str(timeout)]
        self.timeout = timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.futures: dict[int, tuple[asyncio.Future[Result], float]] = {}  # number -> (answer, deadline)
        self.frames: list[bytes] = []
        self.numbers = itertools.count(1)
        self.closing = False
        self.task: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._spawn()
        self.task = asyncio.create_task(self._read(), name=f"subscription sender {self.slot}")
        self.watchdog = asyncio.create_task(self._watch(), name=f"subscription sender {self.slot} watchdog")

    async def _watch(self) -> None:
        """A child that stops answering (hung, not dead) is killed, which fails its attempts in flight and
        starts it again; without this their senders would wait for ever."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            if any(deadline < now for _, deadline in self.futures.values()):
                proc = self.proc
                if proc is not None and proc.returncode is None:
                    log.warning("subscription sender %d did not answer within %.0f s; restarting it", self.slot,
                                self.timeout + GRACE)
                    proc.kill()

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.args, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE, limit=2**24)

    async def send(self, endpoint_key: str, req: Request, timeout: float | None) -> Result:
        proc = self.proc
        if proc is None or proc.returncode is not None or proc.stdin is None or proc.stdin.is_closing():
            return None, "sender process unavailable"
        number = next(self.numbers)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self.futures[number] = (fut, loop.time() + min(timeout or self.timeout, self.timeout) + GRACE)
        head = orjson.dumps([number, endpoint_key, req.method, req.url, req.headers, timeout])
        if not self.frames:
            loop.call_soon(self._flush)  # one write for what this loop turn sends
        self.frames.append(_HEAD.pack(len(head), len(req.body)) + head + req.body)
        try:
            return await fut
        finally:
            self.futures.pop(number, None)

    def _flush(self) -> None:
        frames, self.frames = self.frames, []
        proc = self.proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(b"".join(frames))

    async def _read(self) -> None:
        while True:
            proc = self.proc
            assert proc is not None and proc.stdout is not None
            try:
                while True:
                    size = _LEN.unpack(await proc.stdout.readexactly(_LEN.size))[0]
                    number, status, error = orjson.loads(await proc.stdout.readexactly(size))
                    waiting = self.futures.get(number)
                    if waiting is not None and not waiting[0].done():
                        waiting[0].set_result((status, error))
            except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError):
                pass
            code = await proc.wait()
            for fut, _ in self.futures.values():
                if not fut.done():
                    fut.set_result((None, "sender process exited"))
            self.frames.clear()
            if self.closing:
                return
            log.warning("subscription sender %d exited with %s; starting it again", self.slot, code)
            await asyncio.sleep(RESTART_AFTER)
            while not self.closing:
                try:
                    await self._spawn()
                    break
                except OSError as exc:
                    log.warning("subscription sender %d could not start: %s", self.slot, type(exc).__name__)
                    await asyncio.sleep(RESTART_AFTER)
            if self.closing:
                return

    async def close(self) -> None:
        self.closing = True
        if self.watchdog is not None:
            self.watchdog.cancel()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the child ends when its input does
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.task is not None:
            _, pending = await asyncio.wait({self.task}, timeout=5.0)  # it ends when it reads the end of output
            for task in pending:
                task.cancel()


# ------------------------------------------------------------------------------------ the child process
async def _child(concurrency: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the frames
    transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out_fd, "wb", buffering=0))
    sessions = Sessions(concurrency, timeout)
    answers: list[bytes] = []
    tasks: set[asyncio.Task[None]] = set()

    def flush() -> None:
        if not transport.is_closing():
            transport.write(b"".join(answers))
        answers.clear()

    async def attempt(number: int, endpoint_key: str, req: Request, limit: float | None) -> None:
        status, error = await sessions.send(endpoint_key, req, limit)
        payload = orjson.dumps([number, status, error])
        if not answers:
            loop.call_soon(flush)
        answers.append(_LEN.pack(len(payload)) + payload)

    try:
        while True:
            try:
                head_len, body_len = _HEAD.unpack(await reader.readexactly(_HEAD.size))
                number, endpoint_key, method, url, headers, limit = orjson.loads(await reader.readexactly(head_len))
                body = await reader.readexactly(body_len) if body_len else b""
            except asyncio.IncompleteReadError:
                return
            task = asyncio.create_task(attempt(number, endpoint_key, Request(method, url, body, headers), limit))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await sessions.close()
        transport.close()


def main(argv: list[str]) -> None:
    asyncio.run(_child(int(argv[0]), float(argv[1])))


if __name__ == "__main__":
    main(sys.argv[1:])
