"""The auth suite (issue 4): what SMART Backend Services auth and the audit trail cost on reads and creates.

For each database kind it starts three hubs on fresh, separate databases:

* **on**: the hub as shipped (``FHIRHUB_AUTH=on``): a client is registered with its JWKS through
  ``fhirhub clients add``, and a real access token is obtained from ``/auth/token`` with a signed
  ``private_key_jwt`` assertion (``hub/security/assertion.py``, as ``examples/smart_client.py`` does);
  every request carries ``Authorization: Bearer <token>``, is verified, rate-limited, authorized
  against its scopes and audited (reads: queued and batch-written; creates: in the write's transaction);
* **off**: ``FHIRHUB_AUTH=off``. That skips the token but **still audits** every interaction (as the
  anonymous client): it is the cost of auth alone;
* **bare**: ``FHIRHUB_AUTH=off`` *and no audit trail* — the baseline with neither. The hub has no
  setting that turns auditing off (on purpose), so this suite starts it through :func:`serve_bare`,
  which builds the hub with ``Context.audit = None`` (the router then skips every audit record).

The target, "the cost of auth and audit … 15 % or less", is ``1 - on / bare`` ≤ 0.15 at each
workload and concurrency. In the table the "hub" columns are **on** and the "floor" columns are
**bare**; the "auth only" rows compare **on** with **off** (no target: information).

The rate limiter runs in every configuration (per client when auth is on, per address when off),
set far above the offered load (``FHIRHUB_RATE_LIMIT``) so its cost is measured, never its 429s.

Noise: the machine has two cores shared with the load generator (and PostgreSQL), and often with other
work. So each cell is measured in ``ROUNDS`` rounds of one slice (``--duration / ROUNDS`` seconds) per
configuration, in the order on, off, bare, then bare, off, on, and so on: a drift or a burst of other
work then weighs on every configuration alike. A cell's throughput is the answers of all its slices
over all their windows; its percentiles are the mean of the slices' (weighted by answers). The notes
also give, per cell, the median over rounds of the on/bare ratio of adjacent slices, and the CPU the
hub (and PostgreSQL) spent per answer — both less sensitive to a busy machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import fhirdata
from bench.harness import (
    ROOT,
    Check,
    Options,
    Row,
    Section,
    Server,
    fresh_databases,
    log,
    run_load,
    server,
    transaction_locations,
)
from bench.loadgen import Request

NAME = "auth"
TITLE = "Auth and audit: cost on reads and creates (auth on vs neither auth nor audit)"
TARGET = 0.15  # the most auth and audit may cost: 1 - on/bare
CREATE_BODIES = 200
PRELOAD_BATCH = 100
SCOPES = "system/Patient.cruds"
KID = "bench-key"
CONFIGS = ("on", "off", "bare")
ROUNDS = 4  # slices per configuration and cell; odd rounds run on, off, bare and even ones bare, off, on
# The limiter runs, far above what two cores can serve: its cost is measured, never a 429.
# No subscription dispatcher: it would go on consuming one hub's outbox (its pre-load, its creates) while
# the next configuration is measured. It is common to all three, so leaving it out makes the overhead
# ratio, if anything, larger.
COMMON_ENV = {"FHIRHUB_RATE_LIMIT": "1000000", "FHIRHUB_RATE_BURST": "1000000", "FHIRHUB_SUBSCRIPTIONS": "off"}
SETTLE = 2.0  # seconds of quiet after the pre-load (the audit writer, the WAL checkpoint)
ENV = {
    "on": {**COMMON_ENV, "FHIRHUB_AUTH": "on"},
    "off": {**COMMON_ENV, "FHIRHUB_AUTH": "off"},
    "bare": {**COMMON_ENV, "FHIRHUB_AUTH": "off"},
}
BARE_WRAPPER = (sys.executable, "-c", "from bench.suites.auth import serve_bare; serve_bare()")


def serve_bare() -> None:
    """``python -c '…serve_bare()' PYTHON -m hub serve ARGS``: the hub's own ``serve``, built without an audit trail.

    Benchmark only: the baseline with neither auth nor audit. ``build_hub`` gets ``AuditTrail``
    replaced by a factory that returns None, so ``Context.audit`` is None and nothing is audited.
    With ``FHIRHUB_WORKERS`` above 1 the hub starts its API workers as ``PYTHON -m hub serve …``
    processes: those are started through this same wrapper, so none of them audits either (the
    suite checks that the bare hub's trail stays empty).
    """
    import subprocess

    import hub.app
    from hub import cli

    argv = sys.argv[1:]
    at = next(i for i in range(len(argv) - 1) if argv[i] == "-m" and argv[i + 1] == "hub")

    def no_audit(*_: Any, **__: Any) -> None:
        return None

    real_popen = subprocess.Popen

    class WrappedPopen(real_popen):  # type: ignore[valid-type,misc]
        def __init__(self, args: Any, *rest: Any, **kw: Any) -> None:
            if isinstance(args, list | tuple) and list(args[1:3]) == ["-m", "hub"]:
                args = [*BARE_WRAPPER, *args]
            super().__init__(args, *rest, **kw)

    subprocess.Popen = WrappedPopen  # type: ignore[misc]
    hub.app.AuditTrail = no_audit  # type: ignore[assignment,misc]
    sys.argv = ["hub", *argv[at + 2 :]]
    cli.main()


# ------------------------------------------------------------------------------ clients and tokens


@dataclass
class Credentials:
    client_id: str
    key: Any  # the client's private key
    token_url: str


def register(srv: Server, workdir: Path) -> Credentials:
    """Register a client with its JWKS through the real CLI (``fhirhub clients add``)."""
    from hub.security import assertion as smart

    key = smart.generate_key("ES384")
    jwks = workdir / f"bench-client-{srv.port}.jwks.json"
    jwks.write_text(json.dumps(smart.public_jwks(key, KID, "ES384")))
    env = {**os.environ, "FHIRHUB_DATABASE_URL": srv.db_url}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-m", "hub", "clients", "add", "--name", "bench", "--jwks", str(jwks),
                          "--scopes", SCOPES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"fhirhub clients add failed: {out.stderr[-2000:]}")
    client_id = out.stdout.strip().splitlines()[-1]
    config = httpx.get(f"{srv.base}/.well-known/smart-configuration", timeout=10).json()
    return Credentials(client_id, key, config["token_endpoint"])


def access_token(creds: Credentials) -> str:
    """A fresh access token from the token endpoint, for a freshly signed client assertion."""
    from hub.security import assertion as smart

    form = smart.token_request(creds.client_id, creds.token_url, creds.key, "ES384", KID, SCOPES)
    r = httpx.post(creds.token_url, data=form, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"token request answered {r.status_code}: {r.text[:500]}")
    return str(r.json()["access_token"])


def preload(srv: Server, count: int, seed: int, headers: dict[str, str]) -> list[str]:
    """The same ``count`` Patients into each server (transactions of 100); their ``Patient/id``."""
    rng = random.Random(f"bench-preload:{seed}")
    ids: list[str] = []
    with httpx.Client(timeout=120, headers={"Content-Type": "application/fhir+json", **headers}) as client:
        for k in range(0, count, PRELOAD_BATCH):
            bundle = fhirdata.patients_bundle(rng, min(PRELOAD_BATCH, count - k), start=k)
            r = client.post(f"{srv.base}", content=orjson.dumps(bundle))
            if r.status_code != 200:
                raise RuntimeError(f"pre-load answered {r.status_code}: {r.text[:500]}")
            ids += transaction_locations(r.json())
    if len(ids) != count:
        raise RuntimeError(f"pre-load gave {len(ids)} ids")
    return ids


# ------------------------------------------------------------------------------ workloads and cells


def _requests(workload: str, ids: list[str], headers: dict[str, str]) -> list[Request]:
    if workload == "read":
        return [Request("GET", f"/fhir/{ref}", headers=headers) for ref in ids]
    return [Request("POST", "/fhir/Patient", body, headers=headers)
            for body in fhirdata.patient_bodies(CREATE_BODIES, seed=2)]


def combine(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its measured slices: answers over windows; percentiles and CPU weighted by answers."""
    ok = sum(h["ok"] for h in slices)
    window = sum(h["window_s"] for h in slices)
    out: dict[str, Any] = {
        "requests": sum(h["requests"] for h in slices),
        "ok": ok,
        "failed": sum(h["failed"] for h in slices),
        "window_s": window,
        "throughput": ok / window if window > 0 else 0.0,
        "errors": [e for h in slices for e in h["errors"]][:3],
        "slices": [round(h["throughput"], 1) for h in slices],
    }
    statuses: dict[str, int] = {}
    for h in slices:
        for k, v in h["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    out["statuses"] = statuses
    for key in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"):
        vals = [(h[key], h["ok"]) for h in slices if h[key] is not None and h["ok"]]
        out[key] = sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None
    for key in ("client_cpu", "server_cpu", "db_cpu", "other_cpu"):
        vals = [(h[key], h["window_s"]) for h in slices if h.get(key) is not None]
        out[key] = sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else None
    return out


def overhead(on: dict[str, Any] | None, base: dict[str, Any] | None) -> float | None:
    if not on or not base or not base["throughput"]:
        return None
    return 1 - float(on["throughput"]) / float(base["throughput"])


def run(db: str, workdir: Path, opts: Options) -> Section:
    section = Section(NAME, db, TITLE)
    workloads = [w for w in ("read", "create") if opts.wants(w)]
    piece = max(1.0, opts.duration / ROUNDS)
    order = [cfg for r in range(ROUNDS) for cfg in (CONFIGS if r % 2 == 0 else CONFIGS[::-1])]
    with fresh_databases(db, workdir, list(CONFIGS)) as urls, _servers(db, urls, workdir, opts) as servers:
        creds = register(servers["on"], workdir)
        token = access_token(creds)
        ids = {cfg: preload(srv, opts.preload, opts.seed, _auth(cfg, token)) for cfg, srv in servers.items()}
        time.sleep(SETTLE)
        audited = {cfg: _audits(servers[cfg]) for cfg in ("off", "bare")}
        if not audited["off"] or audited["bare"]:
            raise RuntimeError(f"expected AuditEvents from the 'off' hub and none from 'bare', found {audited}")
        overheads: list[str] = []
        for w in workloads:
            for clients in opts.concurrency:
                slices: dict[str, list[dict[str, Any]]] = {cfg: [] for cfg in CONFIGS}
                for n, cfg in enumerate(order):
                    srv = servers[cfg]
                    if cfg == "on":
                        token = access_token(creds)  # a fresh token per slice: it never expires mid-cell
                    if opts.verbose:
                        log(f"{db} {w} × {clients} → {cfg} (round {1 + n // 3})")
                    profile = None
                    if opts.profile_dir is not None:  # every configuration, so that their profiles can be compared
                        profile = opts.profile_dir / f"{db}-auth-{w}-{clients}-{cfg}-{1 + n // 3}.txt"
                    result = run_load(srv, _requests(w, ids[cfg], _auth(cfg, token)), clients, opts, workdir,
                                      (200,) if w == "read" else (201,), duration=piece, profile=profile)
                    slices[cfg].append(result)
                    if opts.verbose:
                        log(f"    {result['throughput']:.1f} req/s p50 {result['p50_ms'] or 0:.1f} ms"
                            f" p99 {result['p99_ms'] or 0:.1f} ms failed {result['failed']}"
                            f" server CPU {(result['server_cpu'] or 0) * 100:.0f}%")
                cells = {cfg: combine(h) for cfg, h in slices.items()}
                cost = overhead(cells["on"], cells["bare"])
                row = Row(f"{w}: auth + audit (on) vs neither (bare)", clients, 1, cells["on"], cells["bare"])
                row.checks = [Check(f"overhead 1 − on/bare ≤ {TARGET:.0%}", None if cost is None else cost <= TARGET)]
                section.rows.append(row)
                section.rows.append(Row(f"{w}: auth only (on vs FHIRHUB_AUTH=off, both audit)", clients, 1,
                                        cells["on"], cells["off"]))
                auth_only, audit_only = overhead(cells["on"], cells["off"]), overhead(cells["off"], cells["bare"])
                cpu = ", ".join(f"{cfg} {_cpu_ms(cells[cfg])}" for cfg in CONFIGS)
                rounds = [a["throughput"] / b["throughput"] for a, b in zip(slices["on"], slices["bare"], strict=True)
                          if b["throughput"]]
                overheads.append(
                    f"{w} × {clients}: auth + audit {_pct(cost)}, auth alone {_pct(auth_only)}, audit alone "
                    f"{_pct(audit_only)}; median over rounds of 1 − on/bare {_pct(1 - statistics.median(rounds)) if rounds else '—'} "
                    f"(req/s per slice — on {cells['on']['slices']}, off {cells['off']['slices']}, "
                    f"bare {cells['bare']['slices']}; server{' + PostgreSQL' if db == 'postgresql' else ''} CPU ms "
                    f"per answer — {cpu})"
                )
    section.notes.append(
        "Columns: **hub = auth on** (bearer token verified, rate limiter, scopes, audit); **floor = the baseline** "
        "named in the row: *bare* (FHIRHUB_AUTH=off and no audit trail — neither) for the target, "
        "*off* (FHIRHUB_AUTH=off, which still writes an AuditEvent per request as the anonymous client) for the "
        "auth-only rows. Overhead = 1 − hub/floor."
    )
    section.notes.append("Overheads: " + "; ".join(overheads) + ".")
    section.notes.append(
        f"Each cell: {ROUNDS} rounds of a {piece:g} s slice per configuration (on, off, bare, then bare, off, on, …). "
        f"Read set: {opts.preload:,} Patients pre-loaded into each hub; creates cycle through {CREATE_BODIES} "
        f"Patients (~1.2 KB). One registered client (scopes `{SCOPES}`), a fresh token per slice shared by all "
        f"clients; FHIRHUB_RATE_LIMIT/BURST=1,000,000 on every hub (the limiter runs, never refuses); "
        "FHIRHUB_SUBSCRIPTIONS=off on every hub (no dispatcher working through one hub's outbox while another "
        "is measured)."
    )
    return section


def _audits(srv: Server) -> bool:
    """Has this (FHIRHUB_AUTH=off) hub recorded any AuditEvent? (Read events are written within 50 ms.)"""
    for _ in range(4):  # reads, through whichever API worker answers, besides the pre-load's writes
        httpx.get(f"{srv.base}/Patient", params={"_count": "1"}, timeout=30).raise_for_status()
    time.sleep(0.5)
    r = httpx.get(f"{srv.base}/AuditEvent", params={"_count": "1"}, timeout=30)
    r.raise_for_status()
    return bool(r.json().get("entry"))


def _cpu_ms(cell: dict[str, Any]) -> str:
    """CPU milliseconds the hub (and PostgreSQL) spent per answer: less sensitive to a busy machine than req/s."""
    if not cell["throughput"] or cell.get("server_cpu") is None:
        return "—"
    return f"{(cell['server_cpu'] + (cell.get('db_cpu') or 0.0)) / cell['throughput'] * 1000:.2f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _auth(cfg: str, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if cfg == "on" else {}


@contextlib.contextmanager
def _servers(db: str, urls: dict[str, str], workdir: Path, opts: Options) -> Iterator[dict[str, Server]]:
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        empty = workdir / f"auth-no-connectors-{db}"
        empty.mkdir(exist_ok=True)
        for cfg in CONFIGS:
            if opts.verbose:
                log(f"{db}: starting the hub ({cfg})")
            env = {**ENV[cfg], "FHIRHUB_CONNECTORS_DIR": str(empty), "FHIRHUB_SYNC_CONNECTORS_DIR": str(empty)}
            wrapper = BARE_WRAPPER if cfg == "bare" else ()
            servers[cfg] = stack.enter_context(server("hub", urls[cfg], workdir, env, wrapper=wrapper))
        yield servers

