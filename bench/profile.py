"""Where the hub's time goes: sample it with py-spy under benchmark load, then summarize.

    python -m bench --profile [--db sqlite] [--workloads create] [--concurrency 16]
        attaches ``py-spy record --gil`` to the hub during every measured hub cell and writes collapsed
        stacks to ``bench/results/profiles/DB-WORKLOAD-CLIENTS.txt`` (py-spy is not a dependency:
        ``.venv/bin/pip install py-spy``; sampling costs CPU, so a profiled run's figures are low;
        ``--gil``: only the thread holding the GIL is sampled, so the profile is the Python CPU);
    python -m bench.profile FILE... [--top 25]
        prints, per file, the busiest functions (inclusive and self) and the share of each area
        (HTTP server, FastAPI, validation, search index, SQLAlchemy, the database driver, …);
    python -m bench.profile dispatch [--db sqlite] [--workload read|create|transaction] [-n N]
        builds the hub in-process on a fresh database and times ``FhirRouter.dispatch`` for the store
        workloads' requests, without HTTP and without threads, then profiles the same calls with
        cProfile: a deterministic view of what the hub itself costs per request.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

# Areas: a sample belongs to the area of its innermost frame that matches one of these file prefixes.
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("database driver (psycopg Python side)", ("psycopg/",)),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("validation (hub/validation)", ("hub/validation/",)),
    ("search indexing (hub/search)", ("hub/search/",)),
    ("security / audit (hub/security, hub/api/auth.py)", ("hub/security/", "hub/api/auth.py")),
    ("interactions (hub/interactions)", ("hub/interactions/",)),
    ("store (hub/store)", ("hub/store/",)),
    ("hub, other", ("hub/",)),
    ("benchmark floor (bench/)", ("bench/",)),
    ("FastAPI / Starlette", ("fastapi/", "starlette/")),
    ("pydantic", ("pydantic",)),
    ("HTTP server (uvicorn / h11 / httptools)", ("uvicorn/", "h11/", "httptools/")),
    ("thread pool hand-off (anyio / threading / queue)", ("anyio/", "threading.py", "concurrent/", "queue.py")),
    ("event loop (asyncio / selectors)", ("asyncio/", "selectors.py")),
]
# Leaves whose own time is the database at work: the C driver runs the SQL (or waits for the server).
DRIVER_LEAVES = ("DefaultDialect.do_execute", "DefaultDialect.do_executemany", "DefaultDialect.do_commit",
                 "DefaultDialect.do_rollback", "Store.read", "Store.insert")
DRIVER_AREA = "database: SQL execution and commit inside the driver (sqlite3 C code / waiting for PostgreSQL)"


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Collapsed stacks (``frame;frame;… count``) → [(frames root-first as (name, file)), count)]."""
    stacks = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw)
            frames.append((m["name"], m["file"]) if m else (raw, ""))
        stacks.append((frames, int(count)))
    return stacks


# Leaves where a thread waits rather than works (idle pool threads, the event loop's select).
IDLE_LEAVES = ("Condition.wait", "Event.wait", "Semaphore.acquire", "EpollSelector.select", "SelectSelector.select",
               "Thread.join", "_wait_for_tstate_lock")


# Leaves where a thread waits for the SQLite write lock (threading.Lock.acquire is C: no frame of its own).
LOCK_WAIT_LEAVES = ("Database.write", "Store.write")


# Frames on (nearly) every stack: the start-up chain, the event loop, the middleware stack.
SKIP_INCLUSIVE = ("<module>", "_run_module_as_main", "_run_code", "main (", "Typer", "Command", "TyperGroup", "_main (",
                  "Context.invoke", "get_callback", "run (uvicorn", "Server.", "asyncio_run", "Runner.run",
                  "BaseEventLoop.run", "BaseEventLoop._run_once", "Handle._run", "Thread.", "_worker (", "WorkerThread.run",
                  "RequestResponseCycle.run_asgi", "ProxyHeadersMiddleware", "FastAPI.__call__", "Starlette.__call__",
                  "ServerErrorMiddleware", "ExceptionMiddleware", "ExceptionTelemetryMiddleware", "AppBodyLimitMiddleware",
                  "wrap_app_handling_exceptions", "AsyncExitStackMiddleware", "Router.__call__", "APIRouter.app",
                  "APIRoute.handle", "Route.handle", "request_response", "Context.run", "_bootstrap")


def area(frames: list[tuple[str, str]]) -> str:
    if frames and frames[-1][0] in DRIVER_LEAVES:
        return DRIVER_AREA
    for _, file in reversed(frames):
        for label, prefixes in AREAS:
            if any(file.startswith(p) or f"/{p}" in file for p in prefixes):
                return label
    return "other"


def summarize(path: Path, top: int = 25) -> str:
    everything = parse(path)
    lock_wait = sum(n for f, n in everything if f and f[-1][0] in LOCK_WAIT_LEAVES)
    stacks = [(f, n) for f, n in everything if f and f[-1][0] not in IDLE_LEAVES + LOCK_WAIT_LEAVES]
    idle = sum(n for _, n in everything) - sum(n for _, n in stacks) - lock_wait
    total = sum(n for _, n in stacks)
    if not total:
        return f"## {path.name}\n\n(no samples)\n"
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, n in stacks:
        seen = set()
        for name, file in frames:
            key = f"{name} ({file})"
            if key not in seen:
                inclusive[key] += n
                seen.add(key)
        name, file = frames[-1]
        self_[f"{name} ({file})"] += n
        areas[area(frames)] += n
    pct = lambda n: f"{100 * n / total:5.1f} %"  # noqa: E731
    out = [f"## {path.name} — {total} busy samples (left out: {idle} of idle threads, {lock_wait} of threads "
           "waiting for the SQLite write lock)", "", "By area (of the innermost recognised frame of each sample):", ""]
    out += [f"    {pct(n)}  {label}" for label, n in areas.most_common()]
    hub_inclusive = [(k, n) for k, n in inclusive.most_common() if "(hub/" in k and "(hub/cli.py" not in k]
    out += ["", f"Top {top} hub functions, inclusive (time in the function and what it calls):", ""]
    out += [f"    {pct(n)}  {k}" for k, n in hub_inclusive[:top]]
    others = [(k, n) for k, n in inclusive.most_common() if "(hub/" not in k and not k.startswith(SKIP_INCLUSIVE)]
    out += ["", f"Top {top // 2} library functions, inclusive:", ""]
    out += [f"    {pct(n)}  {k}" for k, n in others[: top // 2]]
    out += ["", f"Top {top} self (time in the function itself):", ""]
    out += [f"    {pct(n)}  {k}" for k, n in self_.most_common(top)]
    return "\n".join(out) + "\n"


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: float, out: Path, rate: int = 100, gil: bool = True) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks); the caller waits.

    With ``gil`` (the default) only the thread holding the GIL is sampled: the profile is then where
    the server's Python CPU goes, which is what bounds a one-process Python server. Without it every
    busy thread is sampled, and a thread that waits to get the GIL back after a driver call looks
    busy in that call.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
         "--format", "raw", "--output", str(out), "--subprocesses", *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def dispatch(db: str, workloads: list[str], n: int, top: int) -> str:
    """Time and cProfile ``FhirRouter.dispatch`` in-process for the store workloads' requests."""
    import cProfile
    import io
    import os
    import pstats
    import random
    import tempfile
    import time

    import orjson

    from bench import fhirdata
    from bench.harness import fresh_databases
    from bench.suites.store import CREATE_BODIES, HUB_ENV, TRANSACTION_BODIES, TRANSACTION_ENTRIES

    os.environ.update(HUB_ENV)
    from hub.app import build_hub
    from hub.interactions.request import FhirRequest
    from hub.settings import Settings
    from hub.store.schema import upgrade

    base = "http://127.0.0.1/fhir"
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fhirhub-profile-") as tmp, \
            fresh_databases(db, Path(tmp), ["hub"]) as urls:
        hub = build_hub(Settings(database_url=urls["hub"]))
        try:
            upgrade(hub.ctx.db)
            rng = random.Random("bench-preload:1")
            ids: list[str] = []
            for k in range(0, 1000, 100):
                resp = hub.router.dispatch(FhirRequest("POST", "", body=fhirdata.patients_bundle(rng, 100, k), base_url=base))
                ids += [e["response"]["location"].split("/_history")[0] for e in orjson.loads(resp.body)["entry"]]
            patients = fhirdata.patient_bodies(CREATE_BODIES, seed=2)
            trng = random.Random("bench-transactions")
            bundles = [orjson.dumps(fhirdata.transaction_bundle(trng, TRANSACTION_ENTRIES, k * 1000))
                       for k in range(TRANSACTION_BODIES)]
            makers = {
                "read": lambda i: FhirRequest("GET", ids[i % len(ids)], base_url=base),
                "create": lambda i: FhirRequest("POST", "Patient", body=orjson.loads(patients[i % len(patients)]), base_url=base),
                "transaction": lambda i: FhirRequest("POST", "", body=orjson.loads(bundles[i % len(bundles)]), base_url=base),
            }
            for name in workloads:
                count = n if name != "transaction" else max(1, n // 50)
                requests = [makers[name](i) for i in range(2 * count + 1)]
                hub.router.dispatch(requests[0])  # warm caches
                started = time.perf_counter()
                for req in requests[1 : count + 1]:
                    resp = hub.router.dispatch(req)
                    if resp.status >= 300:
                        raise RuntimeError(f"{name}: {resp.status} {resp.body!r:.300}")
                per_call = (time.perf_counter() - started) / count
                profiler = cProfile.Profile()
                profiler.enable()
                for req in requests[count + 1 :]:
                    hub.router.dispatch(req)
                profiler.disable()
                text = io.StringIO()
                stats = pstats.Stats(profiler, stream=text)
                stats.sort_stats("cumulative").print_stats(r"/hub/", top)
                stats.sort_stats("tottime").print_stats(top)
                out.append(f"## dispatch {name} on {db}: {per_call * 1000:.2f} ms per request "
                           f"({count} requests, no HTTP, one thread)\n\n{text.getvalue()}")
        finally:
            hub.close()
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dispatch"]:
        p = argparse.ArgumentParser(prog="python -m bench.profile dispatch", description="Profile FhirRouter.dispatch in-process")
        p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
        p.add_argument("--workload", default="read,create,transaction", help="comma-separated (default all three)")
        p.add_argument("-n", type=int, default=500, help="requests per workload (transactions: n/50)")
        p.add_argument("--top", type=int, default=30)
        a = p.parse_args(argv[1:])
        sys.stdout.write(dispatch(a.db, [w for w in a.workload.split(",") if w], a.n, a.top))
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.profile", description="Summarize py-spy collapsed stacks")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    for f in args.files:
        sys.stdout.write(summarize(f, args.top) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
