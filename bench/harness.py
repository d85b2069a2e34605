"""What every suite uses: fresh databases, servers as subprocesses, the load generator, result rows.

A suite (``bench/suites/*.py``) gets a :class:`SuiteEnv` for one database kind and returns a
:class:`Section` (a table plus notes). Servers and the load generator always run as separate
processes, as users run them, on free ports of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.loadgen import Request, Spec

ROOT = Path(__file__).resolve().parent.parent
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------------ options


@dataclass
class Options:
    duration: float = 10.0  # measured seconds per cell
    warmup: float = 0.5  # seconds of load before each measured window (and until every client had an answer)
    concurrency: tuple[int, ...] = (1, 16)
    client: str = "raw"  # raw | httpx
    targets: tuple[str, ...] = ("hub", "floor")
    workloads: tuple[str, ...] | None = None  # None: every workload of the suite
    seed: int = 1
    preload: int = 1000  # size of the read set
    profile_dir: Path | None = None  # sample the hub with py-spy during its cells (bench/profile.py)
    verbose: bool = True

    def wants(self, workload: str) -> bool:
        return self.workloads is None or workload in self.workloads


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ results


@dataclass
class Check:
    """A target: ``passed`` is None when the target does not apply or could not be measured."""

    label: str
    passed: bool | None

    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


@dataclass
class Row:
    workload: str
    clients: int
    resources_per_request: int = 1
    hub: dict[str, Any] | None = None
    floor: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.hub or not self.floor or not self.floor["throughput"]:
            return None
        return float(self.hub["throughput"]) / float(self.floor["throughput"])

    def throughput(self, which: str = "hub", per_resource: bool = False) -> float | None:
        cell = self.hub if which == "hub" else self.floor
        if not cell:
            return None
        return float(cell["throughput"]) * (self.resources_per_request if per_resource else 1)


@dataclass
class Section:
    suite: str
    db: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def checks(self) -> list[Check]:
        return [c for r in self.rows for c in r.checks]


# ------------------------------------------------------------------------------------ databases


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def postgres_base_url() -> str:
    return os.environ.get("FHIRHUB_BENCH_POSTGRES_URL", PG_DEFAULT)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def fresh_databases(db: str, workdir: Path, names: Sequence[str]) -> Iterator[dict[str, str]]:
    """One empty database per name: a SQLite file under ``workdir``, or a PostgreSQL schema (dropped after)."""
    if db == "sqlite":
        yield {name: f"sqlite:///{workdir / f'{name}.db'}" for name in names}
        return
    import psycopg

    base = postgres_base_url()
    tag = uuid.uuid4().hex[:8]
    schemas = {name: f"bench_{tag}_{name}" for name in names}
    with psycopg.connect(_libpq(base), autocommit=True, connect_timeout=10) as conn:
        for schema in schemas.values():
            conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield {name: f"{base}{sep}options=-csearch_path%3D{schema}" for name, schema in schemas.items()}
    finally:
        with psycopg.connect(_libpq(base), autocommit=True, connect_timeout=10) as conn:
            for schema in schemas.values():
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ------------------------------------------------------------------------------------ servers


@dataclass
class Server:
    kind: str  # hub | floor
    db_url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def server(kind: str, db_url: str, workdir: Path, extra_env: dict[str, str] | None = None,
           wrapper: Sequence[str] = (), start_timeout: float = 120.0) -> Iterator[Server]:
    """Start the hub (``python -m hub serve``) or a floor (``python -m bench.floor``, ``bench.floor_search``) and
    wait for it."""
    port = free_port()
    if kind == "hub":
        cmd = [sys.executable, "-m", "hub", "serve", "--host", HOST, "--port", str(port)]
        env = _env({"FHIRHUB_DATABASE_URL": db_url, **(extra_env or {})})
        ready = f"http://{HOST}:{port}/fhir/metadata"
    elif kind in ("floor", "floor-search"):
        level = os.environ.get("FHIRHUB_LOG_LEVEL", "INFO").lower()
        module = "bench.floor" if kind == "floor" else "bench.floor_search"
        cmd = [sys.executable, "-m", module, "--database-url", db_url, "--host", HOST, "--port", str(port),
               "--log-level", level, "--workers", os.environ.get("FHIRHUB_WORKERS", "1")]
        env = _env(extra_env)
        ready = f"http://{HOST}:{port}/health"
    else:
        raise ValueError(kind)
    log_path = workdir / f"{kind}-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([*wrapper, *cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(kind, db_url, port, proc, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the {kind} exited with {proc.returncode} at start:\n{srv.log()[-3000:]}")
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} did not answer within {start_timeout:.0f} s:\n{srv.log()[-3000:]}")
            time.sleep(0.2)
        yield srv
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def server_pid(srv: Server) -> int:
    """The pid of the Python process serving (the child of a wrapper such as py-spy, if any)."""
    try:
        if b"python" in Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")[0]:
            return srv.pid  # the server itself (its own children are API workers, counted with it)
        children = Path(f"/proc/{srv.pid}/task/{srv.pid}/children").read_text().split()
    except OSError:
        children = []
    return int(children[0]) if children else srv.pid


# ------------------------------------------------------------------------------------ load


def run_load(srv: Server, requests: Sequence[Request], concurrency: int, opts: Options, workdir: Path,
             ok_status: tuple[int, ...] = (200, 201), duration: float | None = None,
             profile: Path | None = None) -> dict[str, Any]:
    """Drive ``srv`` from a separate load-generator process; return its result (see bench/loadgen.py).

    With ``profile``, py-spy samples the server over the measured window into that file.
    """
    spec = Spec(
        host=HOST,
        port=srv.port,
        requests=list(requests),
        concurrency=concurrency,
        duration=opts.duration if duration is None else duration,
        warmup=opts.warmup,
        ok_status=ok_status,
        client=opts.client,
        seed=opts.seed,
        server_pid=server_pid(srv),
        postgres=srv.db_url.startswith("postgresql"),
    )
    with tempfile.NamedTemporaryFile("wb", dir=workdir, suffix=".spec", delete=False) as f:
        pickle.dump(spec, f)
        spec_path = f.name
    sampler = None
    try:
        budget = spec.warmup + spec.duration + 2 * spec.timeout + 60
        loadgen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", spec_path], cwd=ROOT, env=_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if profile is not None:
            from bench.profile import record

            time.sleep(spec.warmup)
            sampler = record(spec.server_pid or srv.pid, spec.duration, profile)
        stdout, stderr = loadgen.communicate(timeout=budget)
        done = subprocess.CompletedProcess(loadgen.args, loadgen.returncode, stdout, stderr)
    finally:
        os.unlink(spec_path)
        if sampler is not None:
            _, err = sampler.communicate(timeout=60)
            if sampler.returncode != 0:
                log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    if srv.proc.poll() is not None:
        raise RuntimeError(f"the {srv.kind} died under load:\n{srv.log()[-3000:]}")
    return result


def post_json(srv: Server, path: str, body: bytes, timeout: float = 120.0) -> Any:
    resp = httpx.post(f"http://{HOST}:{srv.port}{path}", content=body, timeout=timeout,
                      headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
    if resp.status_code >= 300:
        tail = f"\n{srv.kind} log:\n{srv.log()[-3000:]}" if resp.status_code >= 500 else ""
        raise RuntimeError(f"POST {path} to the {srv.kind} answered {resp.status_code}: {resp.text[:1000]}{tail}")
    return resp.json()


def transaction_locations(response: Any) -> list[str]:
    """``Type/id`` of each created entry, from a hub transaction-response or the floor's answer."""
    if "entry" in response:
        locations = [e["response"]["location"] for e in response["entry"]]
    else:
        locations = response["ids"]
    return ["/".join(loc.split("/")[-4:-2]) if "/_history/" in loc else loc for loc in locations]
