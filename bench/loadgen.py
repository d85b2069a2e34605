"""The load generator: a separate process driving one server with N concurrent keep-alive clients.

    python -m bench.loadgen SPEC.pickle      (prints one JSON result line)

The spec (written by :func:`bench.harness.run_load`) holds the target, the request pool, the number
of clients, the warm-up and measured durations. Each client owns one keep-alive connection and sends
its next request as soon as the last answer is read (a closed loop). Only answers that arrive
inside the measured window count; their latencies give p50/p95/p99.

Two clients are built in: ``raw`` (default), a minimal HTTP/1.1 client on asyncio streams (requests
pre-rendered to bytes; about ten times less CPU per request than httpx), and ``httpx`` (AsyncClient
with keep-alive). The machine has two cores that the server and this process share, so the result
reports this process's CPU use: near 100 % of one core means the client, not the server, was the
bottleneck.

Throughput counts the answers that arrived inside the measured window; the latencies are theirs. It also reports the server process's CPU use over the window, and what every other process used then
(Linux /proc): a busy machine makes a noisy figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Request:
    method: str
    path: str  # absolute path, query included
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Spec:
    host: str
    port: int
    requests: list[Request]
    concurrency: int
    duration: float
    warmup: float
    ok_status: tuple[int, ...] = (200, 201)
    client: str = "raw"
    seed: int = 1
    server_pid: int | None = None
    postgres: bool = False  # also account the CPU of local ``postgres`` processes
    timeout: float = 120.0


@dataclass
class Sample:
    start: float
    end: float
    status: int


def render(req: Request, host: str, port: int) -> bytes:
    head = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}:{port}", "Accept: application/fhir+json"]
    if req.body is not None:
        head.append("Content-Type: application/fhir+json")
        head.append(f"Content-Length: {len(req.body)}")
    head += [f"{k}: {v}" for k, v in req.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (req.body or b"")


class _HttpProtocol(asyncio.Protocol):
    """Parses HTTP/1.1 responses (Content-Length or chunked) off one connection, one at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            parsed = self._parse()
        except Exception as exc:  # noqa: BLE001 - a malformed response fails this request
            self.waiter.set_exception(exc)
            return
        if parsed is not None:
            self.waiter.set_result(parsed)

    def _parse(self) -> tuple[int, bytes, bool] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buf[:end]).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = -1, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        pos = end + 4
        if chunked:
            parts = []
            while True:
                eol = self.buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                if len(self.buf) < eol + 2 + size + 2:
                    return None
                parts.append(bytes(self.buf[eol + 2 : eol + 2 + size]))
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            body = b"".join(parts)
        elif length >= 0:
            if len(self.buf) < pos + length:
                return None
            body = bytes(self.buf[pos : pos + length])
            pos += length
        else:
            raise ValueError("response without Content-Length or chunked encoding")
        del self.buf[:pos]
        return status, body, close


class RawConnection:
    """HTTP/1.1 over one keep-alive connection, on a bare asyncio Protocol (cheap on CPU)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.proto: _HttpProtocol | None = None

    async def send(self, data: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if self.proto is None or self.proto.lost is not None:
            _, self.proto = await loop.create_connection(_HttpProtocol, self.host, self.port)
        proto = self.proto
        assert proto.transport is not None
        proto.waiter = loop.create_future()
        proto.transport.write(data)
        status, body, close = await proto.waiter
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        self.proto = None


def _proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid``, its threads and its child processes (the hub's API workers),
    from /proc (None where unavailable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        children = []
    for child in children:
        total += _proc_cpu(child) or 0.0
    return total


def _machine_cpu() -> float | None:
    """CPU seconds all cores spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _postgres_cpu() -> float:
    """CPU seconds used so far by the processes named ``postgres`` (the database server, when local)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                head, _, rest = f.read().rpartition(b")")
        except OSError:
            continue
        if head.endswith(b"(postgres"):
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


async def _run(spec: Spec) -> dict[str, Any]:
    samples: list[Sample] = []
    errors: list[str] = []
    t_begin = time.perf_counter()
    # The window opens after the warm-up and once every client has had an answer (a steady state
    # even when one request takes seconds), and closes ``duration`` later.
    window = {"measure": float("inf"), "stop": float("inf")}
    answered: set[int] = set()
    all_answered = asyncio.Event()
    marks: dict[str, float | None] = {}

    async def mark_window() -> None:
        await asyncio.sleep(spec.warmup)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_answered.wait(), spec.timeout)
        marks["machine0"], marks["db0"] = _machine_cpu(), _postgres_cpu() if spec.postgres else None
        marks["self0"], marks["server0"], marks["wall0"] = _self_cpu(), _proc_cpu(spec.server_pid), time.perf_counter()
        window["measure"] = time.perf_counter()
        window["stop"] = t_stop = window["measure"] + spec.duration
        await asyncio.sleep(max(0.0, t_stop - time.perf_counter()))
        marks["self1"], marks["server1"], marks["wall1"] = _self_cpu(), _proc_cpu(spec.server_pid), time.perf_counter()
        marks["machine1"], marks["db1"] = _machine_cpu(), _postgres_cpu() if spec.postgres else None

    if spec.client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
        client = httpx.AsyncClient(base_url=f"http://{spec.host}:{spec.port}", limits=limits, timeout=spec.timeout)
        base_headers = {"Accept": "application/fhir+json"}

        async def one(req: Request, _rendered: bytes, _conn: Any) -> tuple[int, bytes]:
            headers = {**base_headers, **req.headers}
            if req.body is not None:
                headers["Content-Type"] = "application/fhir+json"
            resp = await client.request(req.method, req.path, content=req.body, headers=headers)
            return resp.status_code, resp.content
    else:
        client = None

        async def one(req: Request, rendered: bytes, conn: Any) -> tuple[int, bytes]:
            async with asyncio.timeout(spec.timeout):
                return await conn.send(rendered)

    rendered = [render(r, spec.host, spec.port) for r in spec.requests]

    async def worker(k: int) -> None:
        rng = random.Random(f"{spec.seed}:{k}")
        conn = RawConnection(spec.host, spec.port) if client is None else None
        n = len(spec.requests)
        try:
            while True:
                start = time.perf_counter()
                if start >= window["stop"]:
                    return
                i = rng.randrange(n)
                try:
                    status, body = await one(spec.requests[i], rendered[i], conn)
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    status, body = 0, f"{type(exc).__name__}: {exc}".encode()
                    if conn is not None:
                        await conn.close()
                end = time.perf_counter()
                if status not in spec.ok_status and len(errors) < 3:
                    errors.append(f"{status} {body[:300].decode('utf-8', 'replace')}")
                samples.append(Sample(start, end, status))
                if k not in answered:
                    answered.add(k)
                    if len(answered) == spec.concurrency:
                        all_answered.set()
        finally:
            if conn is not None:
                await conn.close()

    await asyncio.gather(mark_window(), *(worker(k) for k in range(spec.concurrency)))
    if client is not None:
        await client.aclose()

    t_measure, t_stop = window["measure"], window["stop"]
    window_samples = [s for s in samples if t_measure <= s.end <= t_stop]
    ok = sorted((s.end - s.start) * 1000 for s in window_samples if s.status in spec.ok_status)
    wall = (marks["wall1"] or 0.0) - (marks["wall0"] or 0.0)
    statuses: dict[str, int] = {}
    for s in window_samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    server0, server1 = marks.get("server0"), marks.get("server1")
    machine0, machine1 = marks.get("machine0"), marks.get("machine1")
    client_cpu = ((marks["self1"] or 0.0) - (marks["self0"] or 0.0)) / wall if wall > 0 else None
    server_cpu = (server1 - server0) / wall if server0 is not None and server1 is not None and wall > 0 else None
    db0, db1 = marks.get("db0"), marks.get("db1")
    db_cpu = (db1 - db0) / wall if db0 is not None and db1 is not None and wall > 0 else None
    other_cpu = None
    if machine0 is not None and machine1 is not None and wall > 0:
        other_cpu = max(0.0, (machine1 - machine0) / wall - (client_cpu or 0.0) - (server_cpu or 0.0) - (db_cpu or 0.0))
    return {
        "requests": len(window_samples),
        "ok": len(ok),
        "failed": len(window_samples) - len(ok),
        "statuses": statuses,
        "window_s": wall,
        "throughput": len(ok) / wall if wall > 0 else 0.0,
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
        "mean_ms": sum(ok) / len(ok) if ok else None,
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "db_cpu": db_cpu,  # the local PostgreSQL server's processes (None on SQLite)
        "other_cpu": other_cpu,  # everything else on the machine (other processes, the kernel's share)
        "errors": errors,
        "warmup_s": t_measure - t_begin,
        "warmup_requests": sum(1 for s in samples if s.end < t_measure),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], "rb") as f:
        spec: Spec = pickle.load(f)
    result = asyncio.run(_run(spec))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
