"""The search suite (issue 3): FHIR search over Synthea-shaped data, hub against hand-written SQL.

For each database kind it generates the data set with ``bench/datagen.py`` (the Synthea bundles of
``tests/data/synthea`` as templates, one Appointment per Encounter added, 1,000 patients by default:
about 157,000 resources), loads it into one fresh database with ``fhirhub load`` (the hub's one write
path), then starts the hub (``python -m hub serve``) and the floor (``python -m bench.floor_search``:
each query as hand-written SQL over the same index tables, returning the same stored bytes) on that
same database: search only reads. Each workload cycles through its own list of distinct queries,
built from the data; before measuring, every one of them is asked of both servers and the answers
compared (total, match ids in order, included ids): a difference is reported as an error and fails
the row.

Workloads (the queries of issue 3):

* ``token``: ``Observation?code=http://loinc.org|C`` for every LOINC code in the data (tens to
  thousands of matches: a page of 50 and a count);
* ``patient-date``: ``Observation?patient=Patient/X&date=geD&_sort=-date`` (D: the patient's 20th most
  recent observation day, so about 20-30 matches, sorted);
* ``name``, ``identifier``: ``Patient?name=FAMILY``, ``Patient?identifier=…us-ssn|SSN``;
* ``chain``: ``Observation?subject:Patient.name=FAMILY`` (a patient's ~75 Observations: a page and a
  count); ``chain-identifier``: ``Encounter?subject.identifier=…us-ssn|SSN``;
* ``include``: ``Appointment?date=geD&date=ltD+7&_include=Appointment:patient`` (a week of bookings
  and their patients);
* ``count``: ``?_type=Observation,DiagnosticReport,Claim,ExplanationOfBenefit&_summary=count``, about
  104,000 matches at 1,000 patients (``Observation?_summary=count`` alone is 73,500).

Targets (issue 3, "Done when"), on this 2-core machine:

* p50 ≤ 15 ms for every selective query (all but ``count``), at 1 client;
* ≥ 0.3 × the floor: hub req/s ÷ floor req/s, at every concurrency (at 1 client this is the floor's
  mean latency ÷ the hub's);
* ``count``: p50 ≤ 200 ms at 1 client.

Options: ``--preload N`` is the number of patients (default 1,000). ``FHIRHUB_BENCH_SEARCH_CACHE=DIR``
keeps the generated bundles and the loaded database there (the SQLite file; a binary ``COPY`` of each
PostgreSQL table), so a later run restores it instead of loading again. The cache key covers the
patients, the seed, the generator, the indexer's code and the migrations; a cached load that no
longer fits the schema is loaded again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import datagen
from bench.harness import (
    HOST,
    ROOT,
    Check,
    Options,
    Row,
    Section,
    Server,
    _env,
    _libpq,
    fresh_databases,
    log,
    run_load,
    server,
)
from bench.loadgen import Request

NAME = "search"
TITLE = "Search: Synthea-shaped data, hub against hand-written SQL"
HUB_ENV = {"FHIRHUB_AUTH": "off", "FHIRHUB_RATE_LIMIT": "0"}
# The hub serves a database just bulk-loaded: its outbox holds one change per resource. Searches are
# measured without the background consumers working through that backlog (subscriptions and workflows
# start at the head of the outbox; no MLLP or sync connectors), as on a hub that has caught up.
SERVE_ENV = {"FHIRHUB_SUBSCRIPTION_START": "head"}
CACHE_ENV = "FHIRHUB_BENCH_SEARCH_CACHE"
SAMPLE = 100  # distinct queries per workload (at most)
SELECTIVE_P50_MS = 15.0
COUNT_P50_MS = 200.0
MIN_RATIO = 0.3
SSN = "http://hl7.org/fhir/sid/us-ssn"
COUNT_TYPES = ("Observation", "DiagnosticReport", "Claim", "ExplanationOfBenefit")
RECENT = 20  # patient-date: from the patient's 20th most recent observation day
# what decides the loaded database's content: a change here makes a new cache entry
CACHE_SOURCES = ("bench/datagen.py", "hub/search/index.py", "hub/search/paths.py", "hub/search/values.py",
                 "hub/search/params.py", "hub/search/tables.py", "hub/store/tables.py")


# ------------------------------------------------------------------------------------ data set


@dataclass
class PatientFacts:
    """What one generated patient bundle holds that the queries need."""

    family: str
    ssn: str
    recent_day: str | None  # patient-date's D
    appointment_days: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    directory: Path
    patients: int
    counts: Counter[str]
    facts: list[PatientFacts]
    loinc: list[str]  # Observation codes, sorted


def _day(text: str) -> str:
    return text[:10]


def read_facts(directory: Path, patients: int) -> tuple[list[PatientFacts], list[str], Counter[str]]:
    facts: list[PatientFacts] = []
    codes: set[str] = set()
    counts: Counter[str] = Counter()
    for n in range(patients):
        bundle = orjson.loads((directory / datagen.patient_file(n)).read_bytes())
        resources = [e["resource"] for e in bundle["entry"]]
        counts.update(r["resourceType"] for r in resources)
        patient = resources[0]
        obs_days = sorted((_day(r["effectiveDateTime"]) for r in resources
                           if r["resourceType"] == "Observation" and "effectiveDateTime" in r), reverse=True)
        for r in resources:
            if r["resourceType"] == "Observation":
                codes.update(f"{c['system']}|{c['code']}" for c in r["code"].get("coding", [])
                             if c.get("system") == "http://loinc.org")
        facts.append(PatientFacts(
            family=patient["name"][0]["family"],
            ssn=next(i["value"] for i in patient["identifier"] if i.get("system") == SSN),
            recent_day=obs_days[min(RECENT, len(obs_days)) - 1] if obs_days else None,
            appointment_days=sorted(_day(r["start"]) for r in resources if r["resourceType"] == "Appointment"),
        ))
    for name in (datagen.HOSPITAL_OUT, datagen.PRACTITIONER_OUT):
        counts.update(e["resource"]["resourceType"] for e in orjson.loads((directory / name).read_bytes())["entry"])
    return facts, sorted(codes), counts


def _cache_key(patients: int, seed: int) -> str:
    digest = hashlib.sha256(f"{patients}:{seed}".encode())
    for rel in CACHE_SOURCES:
        digest.update((ROOT / rel).read_bytes())
    for migration in sorted((ROOT / "hub" / "store" / "migrations" / "versions").glob("*.py")):
        digest.update(migration.name.encode())
    return f"p{patients}-s{seed}-{digest.hexdigest()[:12]}"


def dataset(workdir: Path, patients: int, seed: int) -> Dataset:
    """Generate the bundles (or reuse them from the cache directory)."""
    cache = os.environ.get(CACHE_ENV)
    key = _cache_key(patients, seed)
    directory = (Path(cache) if cache else workdir) / f"search-data-{key}"
    done = directory / ".complete"
    if not done.exists():
        started = time.monotonic()
        datagen.generate(datagen.DEFAULT_TEMPLATES, directory, patients, seed)
        done.write_text(key)
        log(f"search: generated {patients} patients in {time.monotonic() - started:.1f} s into {directory}")
    facts, loinc, counts = read_facts(directory, patients)
    return Dataset(directory, patients, counts, facts, loinc)


def load(db: str, url: str, data: Dataset, workdir: Path, seed: int) -> tuple[float, str]:
    """Load the bundles into ``url`` with ``fhirhub load`` (or restore the cached load); return (seconds, how)."""
    cache = os.environ.get(CACHE_ENV)
    cached = Path(cache) / f"search-{db}-{_cache_key(data.patients, seed)}" if cache else None
    started = time.monotonic()
    if cached is not None and cached.exists():
        try:
            _restore(db, url, cached)
            return time.monotonic() - started, f"restoring the cached load ({cached})"
        except Exception as exc:  # noqa: BLE001 - a stale cache (another schema) is loaded again
            log(f"search: the cached load {cached} does not fit ({type(exc).__name__}: {exc}); loading")
            shutil.rmtree(cached, ignore_errors=True)
            started = time.monotonic()
    env = _env({"FHIRHUB_DATABASE_URL": url, **HUB_ENV})
    done = subprocess.run([sys.executable, "-m", "hub", "load", str(data.directory)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fhirhub load failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    seconds = time.monotonic() - started
    if db == "sqlite":
        with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        # a steady-state database has statistics (autovacuum would gather them soon after a bulk load)
        import psycopg

        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    if cached is not None:
        _save(db, url, cached)
    return seconds, "`fhirhub load` (the one write path)"


def _sqlite_path(url: str) -> Path:
    return Path(url.split("///", 1)[1])


def _save(db: str, url: str, cached: Path) -> None:
    """Keep the loaded database: the SQLite file, or a binary COPY of every PostgreSQL table."""
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if db == "sqlite":
        shutil.copyfile(_sqlite_path(url), tmp / "hub.db")
    else:
        import psycopg

        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            for table in _pg_tables(conn):
                with (tmp / f"{table}.copy").open("wb") as out, conn.cursor().copy(
                        f'COPY "{table}" TO STDOUT (FORMAT binary)') as copy:
                    for chunk in copy:
                        out.write(chunk)
    tmp.rename(cached)


def _restore(db: str, url: str, cached: Path) -> None:
    if db == "sqlite":
        shutil.copyfile(cached / "hub.db", _sqlite_path(url))
        return
    import psycopg

    # the schema as the hub makes it, then the rows
    done = subprocess.run([sys.executable, "-m", "hub", "db", "upgrade"], cwd=ROOT,
                          env=_env({"FHIRHUB_DATABASE_URL": url}), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fhirhub db upgrade failed: {done.stderr[-2000:]}")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        tables = _pg_tables(conn)
        if sorted(tables) != sorted(p.stem for p in cached.glob("*.copy")):
            raise RuntimeError("other tables")
        conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
        for table in tables:
            with (cached / f"{table}.copy").open("rb") as src, conn.cursor().copy(
                    f'COPY "{table}" FROM STDIN (FORMAT binary)') as copy:
                while chunk := src.read(1 << 20):
                    copy.write(chunk)
            seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'pk')", [table]).fetchone()
            if seq and seq[0]:
                conn.execute(f'SELECT setval(%s, coalesce((SELECT max(pk) FROM "{table}"), 0) + 1, false)', [seq[0]])
        conn.execute("VACUUM ANALYZE")


def _pg_tables(conn: Any) -> list[str]:
    rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                        "AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version' ORDER BY table_name")
    return [str(r[0]) for r in rows]


# ------------------------------------------------------------------------------------ workloads


@dataclass
class Workload:
    name: str
    label: str
    selective: bool
    queries: Callable[[Dataset, dict[str, str]], list[str]]


def _spread(items: list[Any], k: int = SAMPLE) -> list[Any]:
    """At most ``k`` items, evenly spaced (deterministic)."""
    if len(items) <= k:
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _q(path: str, *params: tuple[str, str]) -> str:
    return f"/fhir/{path}?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def _token(d: Dataset, _: dict[str, str]) -> list[str]:
    return [_q("Observation", ("code", code)) for code in d.loinc]


def _patient_date(d: Dataset, ids: dict[str, str]) -> list[str]:
    return [_q("Observation", ("patient", f"Patient/{ids[f.ssn]}"), ("date", f"ge{f.recent_day}"), ("_sort", "-date"))
            for f in _spread(d.facts) if f.recent_day]


def _name(d: Dataset, _: dict[str, str]) -> list[str]:
    return [_q("Patient", ("name", f.family)) for f in _spread(d.facts)]


def _identifier(d: Dataset, _: dict[str, str]) -> list[str]:
    return [_q("Patient", ("identifier", f"{SSN}|{f.ssn}")) for f in _spread(d.facts)]


def _chain(d: Dataset, _: dict[str, str]) -> list[str]:
    return [_q("Observation", ("subject:Patient.name", f.family)) for f in _spread(d.facts)]


def _chain_identifier(d: Dataset, _: dict[str, str]) -> list[str]:
    return [_q("Encounter", ("subject.identifier", f"{SSN}|{f.ssn}")) for f in _spread(d.facts)]


def _include(d: Dataset, _: dict[str, str]) -> list[str]:
    days = sorted(day for f in d.facts for day in f.appointment_days)
    out = []
    for day in dict.fromkeys(_spread(days)):
        end = (dt.date.fromisoformat(day) + dt.timedelta(days=7)).isoformat()
        out.append(_q("Appointment", ("date", f"ge{day}"), ("date", f"lt{end}"), ("_include", "Appointment:patient")))
    return out


def _count(_: Dataset, __: dict[str, str]) -> list[str]:
    return ["/fhir?" + urllib.parse.urlencode([("_type", ",".join(COUNT_TYPES)), ("_summary", "count")])]


WORKLOADS = [
    Workload("token", "Observation?code=", True, _token),
    Workload("patient-date", "Observation?patient=&date=ge&_sort=-date", True, _patient_date),
    Workload("name", "Patient?name=", True, _name),
    Workload("identifier", "Patient?identifier=", True, _identifier),
    Workload("chain", "Observation?subject:Patient.name=", True, _chain),
    Workload("chain-identifier", "Encounter?subject.identifier=", True, _chain_identifier),
    Workload("include", "Appointment?date=&_include=Appointment:patient", True, _include),
    Workload("count", f"_type={','.join(COUNT_TYPES)}&_summary=count", False, _count),
]


def patient_ids(hub: Server) -> dict[str, str]:
    """SSN → the id the hub gave each Patient."""
    out: dict[str, str] = {}
    url: str | None = f"{hub.base}/Patient?_count=1000&_elements=identifier"
    with httpx.Client(timeout=120) as client:
        while url:
            bundle = client.get(url).raise_for_status().json()
            for e in bundle.get("entry", []):
                for i in e["resource"].get("identifier", []):
                    if i.get("system") == SSN:
                        out[i["value"]] = e["resource"]["id"]
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return out


# ------------------------------------------------------------------------------------ same answers


def answer(bundle: dict[str, Any]) -> tuple[Any, list[str], list[str], list[str]]:
    """(total, match ids in order, included ids sorted, outcome diagnostics) of a searchset."""
    matches, includes, outcomes = [], [], []
    for e in bundle.get("entry", []):
        mode = e.get("search", {}).get("mode")
        res = e.get("resource", {})
        ref = f"{res.get('resourceType')}/{res.get('id')}"
        if mode == "match":
            matches.append(ref)
        elif mode == "include":
            includes.append(ref)
        else:
            outcomes += [str(i.get("diagnostics")) for i in res.get("issue", [])]
    return bundle.get("total"), matches, sorted(includes), outcomes


def compare(hub: Server, floor: Server, paths: list[str]) -> tuple[list[str], int, int]:
    """Ask both servers every query; return (differences, total matches seen, total hub total)."""
    problems: list[str] = []
    matched = totals = 0
    with httpx.Client(timeout=120) as client:
        for path in paths:
            h = client.get(f"http://{HOST}:{hub.port}{path}")
            f = client.get(f"http://{HOST}:{floor.port}{path}")
            if h.status_code != 200 or f.status_code != 200:
                problems.append(f"{path}: hub {h.status_code}, floor {f.status_code}: {h.text[:300]} {f.text[:300]}")
                continue
            ha, fa = answer(h.json()), answer(f.json())
            if ha[3]:
                problems.append(f"{path}: the hub reported {ha[3]}")
            if ha[:3] != fa[:3]:
                problems.append(f"{path}: hub total {ha[0]} with {len(ha[1])} matches / {len(ha[2])} included, "
                                f"floor total {fa[0]} with {len(fa[1])} / {len(fa[2])}; first hub {ha[1][:2]} floor {fa[1][:2]}")
            matched += len(ha[1])
            totals += int(ha[0] or 0)
    return problems, matched, totals


# ------------------------------------------------------------------------------------ run


def checks(w: Workload, row: Row, low_concurrency: int, same: bool) -> list[Check]:
    out = [Check("same answers as floor", same)]
    if row.clients == low_concurrency:
        p50 = row.hub["p50_ms"] if row.hub else None
        limit = SELECTIVE_P50_MS if w.selective else COUNT_P50_MS
        out.append(Check(f"p50 ≤ {limit:g} ms", None if p50 is None else p50 <= limit))
    ratio = row.ratio
    out.append(Check(f"≥ {MIN_RATIO} × floor", None if ratio is None else ratio >= MIN_RATIO))
    return out


def run(db: str, workdir: Path, opts: Options) -> Section:
    section = Section(NAME, db, TITLE)
    workloads = [w for w in WORKLOADS if opts.wants(w.name)]
    low = min(opts.concurrency)
    data = dataset(workdir, opts.preload, opts.seed)
    total = sum(data.counts.values())
    with fresh_databases(db, workdir, ["search"]) as urls:
        url = urls["search"]
        log(f"{db}: loading {total:,} resources ({data.patients:,} patients)")
        seconds, how = load(db, url, data, workdir, opts.seed)
        log(f"{db}: loaded in {seconds:.0f} s")
        with _servers(db, url, workdir, opts) as servers:
            hub = servers.get("hub")
            ids = patient_ids(hub) if hub is not None else _floor_patient_ids(url, data)
            for w in workloads:
                paths = w.queries(data, ids)
                same: bool | None = None
                if "hub" in servers and "floor" in servers:
                    problems, matched, totals = compare(servers["hub"], servers["floor"], paths)
                    same = not problems
                    for p in problems[:5]:
                        log(f"ERROR {db} {w.name}: hub and floor differ: {p}")
                        section.notes.append(f"**ERROR** {w.name}: hub and floor differ: `{p}`")
                    if len(problems) > 5:
                        section.notes.append(f"**ERROR** {w.name}: {len(problems)} queries differ in all")
                    section.notes.append(
                        f"`{w.name}`: {len(paths)} distinct queries, e.g. `{urllib.parse.unquote(paths[0])}`; "
                        f"{matched / len(paths):,.1f} entries and a total of {totals / len(paths):,.0f} on average; "
                        + ("hub and floor agree on every one." if same else "**hub and floor differ**."))
                requests = [Request("GET", p) for p in paths]
                for clients in opts.concurrency:
                    row = Row(w.name, clients)
                    for kind in ("floor", "hub"):
                        if kind not in servers:
                            continue
                        profile = None
                        if opts.profile_dir is not None and kind == "hub":
                            profile = opts.profile_dir / f"{db}-search-{w.name}-{clients}.txt"
                        result = run_load(servers[kind], requests, clients, opts, workdir, (200,), profile=profile)
                        setattr(row, kind, result)
                        if opts.verbose:
                            log(f"{db} {w.name} × {clients} → {kind}: {result['throughput']:.1f} req/s "
                                f"p50 {result['p50_ms'] or 0:.1f} ms p95 {result['p95_ms'] or 0:.1f} ms "
                                f"failed {result['failed']}")
                    row.checks = checks(w, row, low, same) if same is not None else []
                    section.rows.append(row)
    top = ", ".join(f"{t} {n:,}" for t, n in data.counts.most_common(6))
    section.notes.insert(0, (
        f"Data set: {data.patients:,} patients from `bench/datagen.py` (Synthea templates, seed {opts.seed}), "
        f"{total:,} resources ({top}, …), loaded in {seconds:.0f} s by {how}"
        + ("; then `VACUUM ANALYZE`." if db == "postgresql" else ".")))
    section.notes.insert(1, (
        f"Targets: p50 ≤ {SELECTIVE_P50_MS:g} ms (selective queries) or ≤ {COUNT_P50_MS:g} ms (count) at {low} "
        f"client(s); hub / floor = hub req/s ÷ floor req/s ≥ {MIN_RATIO} at every concurrency (at 1 client: the "
        "floor's latency ÷ the hub's). The floor (`bench/floor_search.py`) runs each query as hand-written SQL "
        "over the same tables of the same database and returns the same stored bytes."))
    section.notes.append(
        f"The hub runs with {', '.join(f'{k}={v}' for k, v in {**HUB_ENV, **SERVE_ENV}.items())} and no connectors: "
        "the outbox backlog of the bulk load is not worked through while searches are measured.")
    return section


def _floor_patient_ids(url: str, data: Dataset) -> dict[str, str]:
    """SSN → Patient id straight from the index (when only the floor runs)."""
    from bench.floor_search import SearchStore, token

    store = SearchStore(url, 1)
    out: dict[str, str] = {}
    with store.connection() as conn:
        for f in data.facts:
            row = conn.execute(
                f"SELECT r.res_id FROM resource r JOIN idx_token t ON t.resource_pk = r.pk WHERE t.hash_sys_code = {store.p}",
                [token("Patient", "identifier", f"{SSN}|{f.ssn}")]).fetchone()
            if row:
                out[f.ssn] = row[0]
    store.close()
    return out


@contextlib.contextmanager
def floor_server(db_url: str, workdir: Path, start_timeout: float = 120.0) -> Iterator[Server]:
    """Start ``python -m bench.floor_search`` the way harness.server starts bench.floor, and wait for it."""
    with server("floor-search", db_url, workdir, start_timeout=start_timeout) as srv:
        srv.kind = "floor"
        yield srv


@contextlib.contextmanager
def _servers(db: str, url: str, workdir: Path, opts: Options) -> Iterator[dict[str, Server]]:
    """The hub and the floor, both on the loaded database."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        if "hub" in opts.targets:
            if opts.verbose:
                log(f"{db}: starting the hub")
            empty = workdir / "no-connectors"
            empty.mkdir(exist_ok=True)
            env = {**HUB_ENV, **SERVE_ENV, "FHIRHUB_CONNECTORS_DIR": str(empty), "FHIRHUB_SYNC_CONNECTORS_DIR": str(empty)}
            servers["hub"] = stack.enter_context(server("hub", url, workdir, env))
        if "floor" in opts.targets:
            if opts.verbose:
                log(f"{db}: starting the search floor")
            servers["floor"] = stack.enter_context(floor_server(url, workdir))
        yield servers
