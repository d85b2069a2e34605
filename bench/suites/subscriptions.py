"""The subscriptions suite (issue 5): rest-hook delivery under a steady create load.

For each database kind it starts the hub and a receiver process (aiohttp, one port per endpoint so
that each subscription is its own endpoint), creates 10 active rest-hook subscriptions
(``Patient?``, full-resource payload) and then:

1. ``healthy``: creates 200 Patients per second (open loop, paced) for 60 s (``--duration`` below 10 s
   shortens it, for smoke runs); every subscription should receive every create.
2. ``one failing``: the same, with one of the 10 endpoints failing (it answers 500, or hangs past the
   hub's timeout, alternately). The 9 healthy endpoints are compared with phase 1.

Reported per phase: the delivered ratio (distinct (subscription, resource) received within 30 s after
the last create, over 10 x creates; the failing endpoint is left out in phase 2), the create-to-receipt
latency (receipt time minus the resource's ``meta.lastUpdated``, the commit time, millisecond
precision; p50/p95/p99 over the first receipt of each), and the healthy endpoints' throughput
(receipts per second from the first create to the last receipt). Targets: ratio >= 0.99, p50 <= 50 ms,
p99 <= 500 ms, healthy throughput lost to a failing endpoint <= 10 %.

    python -m bench --only subscriptions        (the receiver: python -m bench.suites.subscriptions receiver …)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.harness import HOST, ROOT, Check, Options, Row, Section, free_port, fresh_databases, log, server

NAME = "subscriptions"
TITLE = "Subscriptions: rest-hook deliveries at 200 creates/s to 10 endpoints"
RATE = 200.0
SUBSCRIPTIONS = 10
GRACE = 30.0
HUB_ENV = {"FHIRHUB_AUTH": "off", "FHIRHUB_RATE_LIMIT": "0"}


# ------------------------------------------------------------------------------------ the receiver process
def _receiver_main(ports: list[int], failing: int, stats_port: int) -> None:
    from aiohttp import web

    receipts: dict[int, dict[str, tuple[float, float]]] = {p: {} for p in ports}  # port -> id -> (received, lastUpdated)
    counts: dict[int, int] = dict.fromkeys(ports, 0)
    calls = {"failing": 0}

    async def hook(request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        body = await request.read()
        now = time.time()
        if port == failing:
            calls["failing"] += 1
            if calls["failing"] % 2:
                return web.Response(status=500)
            await asyncio.sleep(30)
            return web.Response(status=200)
        counts[port] = counts.get(port, 0) + 1
        res_id = request.path.rsplit("/", 1)[-1]
        if res_id not in receipts[port] and body:
            updated = json.loads(body)["meta"]["lastUpdated"]
            from datetime import datetime

            receipts[port][res_id] = (now, datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp())
        return web.Response(status=200)

    async def stats(_: web.Request) -> web.Response:
        out = {str(p): {"count": counts[p], "receipts": receipts[p]} for p in ports}
        return web.json_response(out)

    async def reset(_: web.Request) -> web.Response:
        for p in ports:
            receipts[p].clear()
            counts[p] = 0
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", hook)
        admin = web.Application()
        admin.router.add_get("/stats", stats)
        admin.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for p in [*ports, failing]:
            await web.TCPSite(runner, HOST, p, backlog=1024).start()
        admin_runner = web.AppRunner(admin, access_log=None)
        await admin_runner.setup()
        await web.TCPSite(admin_runner, HOST, stats_port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def _receiver(ports: list[int], failing: int, stats_port: int) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "bench.suites.subscriptions", "receiver", ",".join(map(str, ports)), str(failing), str(stats_port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError("the receiver did not start")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------------------------ load
async def _paced_creates(base: str, rate: float, duration: float, connections: int = 8) -> tuple[list[str], float, float]:
    """POST Patients at ``rate``/s for ``duration`` s (open loop, paced) over keep-alive connections.

    A minimal HTTP/1.1 client on asyncio streams (httpx costs too much CPU on a 2-core machine
    that also runs the hub and the receiver). Returns the ids created, and the start and end times.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    host, port, path = parts.hostname or HOST, parts.port or 80, f"{parts.path}/Patient"
    ids: list[str] = []
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    def request(n: int) -> bytes:
        body = json.dumps({"resourceType": "Patient", "name": [{"family": f"Bench{n}", "given": ["Sub"]}],
                           "gender": "unknown", "birthDate": "1980-01-01"}).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/fhir+json\r\n"
                f"Prefer: return=minimal\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (n := await queue.get()) is not None:
                writer.write(request(n))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                if " 201 " in lines[0] + " " and "location" in headers:
                    ids.append(headers["location"].split("/Patient/")[1].split("/")[0])
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.monotonic()
    wall = time.time()
    for n in range(int(rate * duration)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(n)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return ids, wall, time.time()


def _stats(stats_port: int) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"http://{HOST}:{stats_port}/stats", timeout=30).json()
    return data


def _phase(srv_base: str, stats_port: int, ports: list[int], duration: float) -> dict[str, Any]:
    httpx.post(f"http://{HOST}:{stats_port}/reset", timeout=10)
    ids, t0, t1 = asyncio.run(_paced_creates(srv_base, RATE, duration))
    want = set(ids)
    deadline = time.time() + GRACE
    stats: dict[str, Any] = {}
    while time.time() < deadline:
        stats = _stats(stats_port)
        if all(want <= set(stats[str(p)]["receipts"]) for p in ports):
            break
        time.sleep(0.5)
    latencies: list[float] = []
    delivered = 0
    last = t0
    for p in ports:
        receipts = stats[str(p)]["receipts"]
        for rid in want:
            if rid in receipts:
                received, updated = receipts[rid]
                delivered += 1
                latencies.append(max(0.0, (received - updated) * 1000))
                last = max(last, received)
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    expected = len(want) * len(ports)
    return {
        "creates": len(ids), "create_rate": len(ids) / max(1e-9, t1 - t0), "delivered": delivered, "expected": expected,
        "ratio": delivered / expected if expected else None, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "median_ms": statistics.median(latencies) if latencies else None,
        "throughput": delivered / max(1e-9, last - t0), "per_endpoint": delivered / max(1e-9, last - t0) / len(ports),
    }


def _subscribe(base: str, port: int) -> str:
    r = httpx.post(f"{base}/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "bench", "criteria": "Patient?",
        "channel": {"type": "rest-hook", "endpoint": f"http://{HOST}:{port}/fhir", "payload": "application/fhir+json"}},
        timeout=30)
    r.raise_for_status()
    return str(r.json()["id"])


def _wait_active(base: str, ids: list[str]) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if all(httpx.get(f"{base}/Subscription/{i}", timeout=10).json()["status"] == "active" for i in ids):
            return
        time.sleep(0.2)
    raise RuntimeError("subscriptions did not become active")


def _row(name: str, phase: dict[str, Any], checks: list[Check]) -> Row:
    cell = {"throughput": phase["throughput"], "p50_ms": phase["p50_ms"], "p95_ms": phase["p95_ms"], "p99_ms": phase["p99_ms"],
            "ok": phase["delivered"], "failed": phase["expected"] - phase["delivered"]}
    return Row(name, SUBSCRIPTIONS, 1, hub=cell, checks=checks)


def run(db: str, workdir: Path, opts: Options) -> Section:
    section = Section(NAME, db, TITLE)
    duration = 60.0 if opts.duration >= 10 else max(1.0, opts.duration)
    ports = [free_port() for _ in range(SUBSCRIPTIONS)]
    failing = free_port()
    stats_port = free_port()
    empty = workdir / "no-connectors"
    empty.mkdir(exist_ok=True)
    env = {**HUB_ENV, "FHIRHUB_CONNECTORS_DIR": str(empty), "FHIRHUB_SYNC_CONNECTORS_DIR": str(empty)}
    with fresh_databases(db, workdir, ["hub"]) as urls, _receiver(ports, failing, stats_port), \
            server("hub", urls["hub"], workdir, env) as srv:
        base = srv.base
        subs = [_subscribe(base, p) for p in ports]
        _wait_active(base, subs)
        if opts.verbose:
            log(f"{db}: {SUBSCRIPTIONS} subscriptions active; {RATE:.0f} creates/s for {duration:.0f} s")
        healthy = _phase(base, stats_port, ports, duration)
        if opts.verbose:
            log(f"    healthy: {healthy}")
        # phase 2: the last subscription's endpoint now fails (500s and timeouts)
        last = httpx.get(f"{base}/Subscription/{subs[-1]}", timeout=10).json()
        last["channel"]["endpoint"] = f"http://{HOST}:{failing}/fhir"
        httpx.put(f"{base}/Subscription/{subs[-1]}", json=last, timeout=10).raise_for_status()
        time.sleep(1.0)
        failing_phase = _phase(base, stats_port, ports[:-1], duration)
        healthy9 = _phase_subset(healthy, SUBSCRIPTIONS - 1)
        if opts.verbose:
            log(f"    one failing: {failing_phase}")
    loss = 1 - failing_phase["per_endpoint"] / healthy9 if healthy9 else None
    section.rows.append(_row("healthy", healthy, [
        Check("ratio ≥ 0.99", None if healthy["ratio"] is None else healthy["ratio"] >= 0.99),
        Check("p50 ≤ 50 ms", None if healthy["p50_ms"] is None else healthy["p50_ms"] <= 50),
        Check("p99 ≤ 500 ms", None if healthy["p99_ms"] is None else healthy["p99_ms"] <= 500),
    ]))
    section.rows.append(_row("one failing", failing_phase, [
        Check("ratio ≥ 0.99", None if failing_phase["ratio"] is None else failing_phase["ratio"] >= 0.99),
        Check("healthy loss ≤ 10 %", None if loss is None else loss <= 0.10),
    ]))
    section.notes.append(
        f"healthy: {healthy['creates']:,} creates at {healthy['create_rate']:.0f}/s; delivered ratio {healthy['ratio']:.4f}; "
        f"latency p50 {_ms(healthy['p50_ms'])}, p99 {_ms(healthy['p99_ms'])}; {healthy['per_endpoint']:.1f} deliveries/s per endpoint."
    )
    section.notes.append(
        f"one failing: {failing_phase['creates']:,} creates at {failing_phase['create_rate']:.0f}/s; the 9 healthy endpoints: "
        f"delivered ratio {failing_phase['ratio']:.4f}, latency p50 {_ms(failing_phase['p50_ms'])}, p99 {_ms(failing_phase['p99_ms'])}, "
        f"{failing_phase['per_endpoint']:.1f} deliveries/s per endpoint: throughput loss "
        f"{'—' if loss is None else f'{loss * 100:.1f} %'} (target ≤ 10 %)."
    )
    section.notes.append("The hub/s column is deliveries received per second (all endpoints); p50/p95/p99 are create-to-receipt "
                         "latencies in ms; 'answers' are deliveries received. There is no floor in this suite.")
    return section


def _phase_subset(phase: dict[str, Any], n: int) -> float:
    return float(phase["per_endpoint"])


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} ms"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "receiver":
    _receiver_main([int(p) for p in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4]))
