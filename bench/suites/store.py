"""The store suite (issue 2): reads by id, creates and 100-entry transactions, hub against its floor.

For each database kind it starts the hub (``python -m hub serve``) and the floor
(``python -m bench.floor``) on fresh, separate databases, pre-loads the same 1,000 Patients into
both, then measures each workload at each concurrency, the floor right before the hub.

Targets (issue 2, "Done when"), on this 2-core machine:

* reads: at least 0.5 of the floor's throughput;
* creates: at least 0.25 of the floor's throughput, and at least 800/s on SQLite;
* transactions: at least 1,000 resources/s on SQLite and 600 on PostgreSQL.

Ratios are checked at every concurrency. Absolute rates are capacities, so they are checked at the
highest concurrency measured (16 by default); at 1 client the rate is bounded by one round trip.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import fhirdata
from bench.harness import (
    Check,
    Options,
    Row,
    Section,
    Server,
    fresh_databases,
    log,
    post_json,
    run_load,
    server,
    transaction_locations,
)
from bench.loadgen import Request

NAME = "store"
TITLE = "Store: reads by id, creates, 100-entry transactions"
PRELOAD_BATCH = 100
CREATE_BODIES = 200  # distinct Patient bodies the create workload cycles through
TRANSACTION_ENTRIES = 100
TRANSACTION_BODIES = 8  # distinct bundles (ids are assigned by the server, so re-posting is fine)
# The store is measured without bearer tokens and without the per-client rate limit (which would
# cap one address at FHIRHUB_RATE_LIMIT req/s); what auth costs is a suite of its own.
HUB_ENV = {"FHIRHUB_AUTH": "off", "FHIRHUB_RATE_LIMIT": "0"}


@dataclass
class Workload:
    name: str
    label: str
    resources_per_request: int
    requests: Callable[[Server, list[str]], list[Request]]
    ok_status: tuple[int, ...]


def _reads(_: Server, ids: list[str]) -> list[Request]:
    return [Request("GET", f"/fhir/{ref}") for ref in ids]


def _creates(_: Server, __: list[str]) -> list[Request]:
    return [Request("POST", "/fhir/Patient", body) for body in fhirdata.patient_bodies(CREATE_BODIES, seed=2)]


def _transactions(_: Server, __: list[str]) -> list[Request]:
    rng = random.Random("bench-transactions")
    return [
        Request("POST", "/fhir", orjson.dumps(fhirdata.transaction_bundle(rng, TRANSACTION_ENTRIES, start=k * 1000)))
        for k in range(TRANSACTION_BODIES)
    ]


WORKLOADS = [
    Workload("read", "read by id", 1, _reads, (200,)),
    Workload("create", "create Patient (~1 KB)", 1, _creates, (201,)),
    Workload("transaction", f"transaction ({TRANSACTION_ENTRIES} entries)", TRANSACTION_ENTRIES, _transactions, (200,)),
]


def preload(srv: Server, count: int, seed: int) -> list[str]:
    """POST the same ``count`` Patients, in transactions of 100, to ``srv``; return their ``Patient/id``."""
    rng = random.Random(f"bench-preload:{seed}")
    ids: list[str] = []
    for k in range(0, count, PRELOAD_BATCH):
        bundle = fhirdata.patients_bundle(rng, min(PRELOAD_BATCH, count - k), start=k)
        ids += transaction_locations(post_json(srv, "/fhir", orjson.dumps(bundle)))
    if len(ids) != count or not all(i.startswith("Patient/") for i in ids):
        raise RuntimeError(f"pre-load into the {srv.kind} gave {len(ids)} ids: {ids[:3]}")
    return ids


def checks(db: str, workload: str, row: Row, top_concurrency: int) -> list[Check]:
    out: list[Check] = []
    ratio = row.ratio
    if workload == "read":
        out.append(Check("≥ 0.5 × floor", None if ratio is None else ratio >= 0.5))
    elif workload == "create":
        out.append(Check("≥ 0.25 × floor", None if ratio is None else ratio >= 0.25))
        if db == "sqlite" and row.clients == top_concurrency:
            rate = row.throughput("hub")
            out.append(Check("≥ 800/s", None if rate is None else rate >= 800))
    elif workload == "transaction" and row.clients == top_concurrency:
        floor = 1000 if db == "sqlite" else 600
        rate = row.throughput("hub", per_resource=True)
        out.append(Check(f"≥ {floor:,} resources/s", None if rate is None else rate >= floor))
    return out


def run(db: str, workdir: Path, opts: Options) -> Section:
    section = Section(NAME, db, TITLE)
    workloads = [w for w in WORKLOADS if opts.wants(w.name)]
    top = max(opts.concurrency)
    with fresh_databases(db, workdir, list(opts.targets)) as urls, _servers(db, urls, workdir, opts) as servers:
        ids = {kind: preload(srv, opts.preload, opts.seed) for kind, srv in servers.items()}
        for w in workloads:
            for clients in opts.concurrency:
                row = Row(w.name, clients, w.resources_per_request)
                for kind in ("floor", "hub"):
                    if kind not in servers:
                        continue
                    srv = servers[kind]
                    if opts.verbose:
                        log(f"{db} {w.name} × {clients} → {kind}")
                    profile = None
                    if opts.profile_dir is not None and kind == "hub":
                        profile = opts.profile_dir / f"{db}-{w.name}-{clients}.txt"
                    result = run_load(srv, w.requests(srv, ids[kind]), clients, opts, workdir, w.ok_status,
                                      profile=profile)
                    setattr(row, kind, result)
                    if opts.verbose:
                        log(f"    {result['throughput']:.1f} req/s p50 {result['p50_ms'] or 0:.1f} ms p99 {result['p99_ms'] or 0:.1f} ms"
                            f" failed {result['failed']} client CPU {(result['client_cpu'] or 0) * 100:.0f}%"
                            f" server CPU {(result['server_cpu'] or 0) * 100:.0f}%")
                row.checks = checks(db, w.name, row, top)
                section.rows.append(row)
    section.notes.append(
        f"Read set: {opts.preload:,} Patients pre-loaded into each server, read at random. Creates cycle "
        f"through {CREATE_BODIES} distinct Patients (~1.2 KB). Transactions: {TRANSACTION_ENTRIES} POST entries, "
        f"half Patients, half Appointments referencing them by urn:uuid; the floor inserts the same rows "
        f"(one `resource` + one `resource_version` row per entry) in one transaction and commits once."
    )
    section.notes.append(f"The hub runs with {', '.join(f'{k}={v}' for k, v in HUB_ENV.items())} (auth is measured apart).")
    section.notes.append(
        f"Absolute rates (creates ≥ 800/s on SQLite, transaction ingest) are checked at {top} clients; "
        "ratios at every concurrency."
    )
    return section


@contextlib.contextmanager
def _servers(db: str, urls: dict[str, str], workdir: Path, opts: Options) -> Iterator[dict[str, Server]]:
    """Start the wanted servers (floor and/or hub), each on its own database; stop them all on exit."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for kind in ("floor", "hub"):
            if kind in opts.targets:
                if opts.verbose:
                    log(f"{db}: starting the {kind}")
                servers[kind] = stack.enter_context(server(kind, urls[kind], workdir, HUB_ENV if kind == "hub" else None))
        yield servers
