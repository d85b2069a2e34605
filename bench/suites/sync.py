"""The sync suite (issue 7): pull Patients with their Appointments from a second hub.

For each database kind it starts two hubs on fresh, separate databases: the "EHR" and the clinic's
hub. It loads the EHR with transactions of 100 entries (50 Patients, 50 Appointments referring to
them) from one client, one after another, and times that: the hub's own transaction ingest rate
in this run (the floor column). Then the clinic's hub, with a ``fhir-rest`` connector to the EHR,
is asked to pull (``POST /admin/connectors/bench/pull``): every Patient, then every Appointment,
page by page (500 per page), each page written as one transaction through the one write path.
Resources per second of the pull are the hub column; the target is at least 0.5 of the ingest rate.

Both are single-stream (one client; one connector), so the ratio compares like with like. Auth is
off on both hubs (its cost is measured by the security suite). The number of Patients is
``10 × --preload`` (10,000 by default).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import fhirdata
from bench.harness import Check, Options, Row, Section, fresh_databases, log, post_json, server

NAME = "sync"
TITLE = "Sync: pull Patients with their Appointments from a second hub"
BUNDLE = 100  # entries per ingest transaction (half Patients, half Appointments)
PAGE = 500
EHR_ENV = {"FHIRHUB_AUTH": "off", "FHIRHUB_RATE_LIMIT": "0", "FHIRHUB_SUBSCRIPTIONS": "off"}


def _cell(rate: float, seconds: float, resources: int) -> dict[str, Any]:
    return {"throughput": rate, "p50_ms": None, "p95_ms": None, "p99_ms": None, "failed": 0, "statuses": {}, "errors": [],
            "ok": resources, "seconds": seconds, "server_cpu": None, "client_cpu": None, "db_cpu": None, "other_cpu": None}


def _connector(folder: Path, ehr_base: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fhir-bench.yaml").write_text(f"""\
kind: fhir-rest
name: bench
base_url: {ehr_base}
auth: {{method: none}}
pull:
  types: [Patient, Appointment]
  page_size: {PAGE}
  schedule: {{every: 24h}}
  at_start: false
""")
    return folder


def run(db: str, workdir: Path, opts: Options) -> Section:
    section = Section(NAME, db, TITLE)
    patients = max(10, opts.preload * 10)
    bundles = max(1, patients // (BUNDLE // 2))
    resources = bundles * BUNDLE
    with fresh_databases(db, workdir, ["ehr", "clinic"]) as urls:
        empty = workdir / f"no-connectors-{db}"
        empty.mkdir(exist_ok=True)
        ehr_env = {**EHR_ENV, "FHIRHUB_CONNECTORS_DIR": str(empty), "FHIRHUB_SYNC_CONNECTORS_DIR": str(empty)}
        with server("hub", urls["ehr"], workdir, ehr_env) as ehr:
            rng = random.Random(f"bench-sync:{opts.seed}")
            bodies = [orjson.dumps(fhirdata.transaction_bundle(rng, BUNDLE, start=k * BUNDLE)) for k in range(bundles)]
            if opts.verbose:
                log(f"{db}: ingesting {resources:,} resources into the EHR hub ({bundles} transactions of {BUNDLE})")
            started = time.perf_counter()
            for body in bodies:
                post_json(ehr, "/fhir", body)
            ingest_s = time.perf_counter() - started
            ingest = resources / ingest_s
            if opts.verbose:
                log(f"    ingest {ingest:,.0f} resources/s")
            folder = _connector(workdir / f"connectors-{db}", ehr.base)
            hub_env = {**EHR_ENV, "FHIRHUB_CONNECTORS_DIR": str(empty), "FHIRHUB_SYNC_CONNECTORS_DIR": str(folder)}
            with server("hub", urls["clinic"], workdir, hub_env) as hub:
                if opts.verbose:
                    log(f"{db}: the clinic hub pulls from the EHR hub")
                started = time.perf_counter()
                answer = httpx.post(f"{hub.base.rsplit('/fhir', 1)[0]}/admin/connectors/bench/pull", timeout=3600)
                pull_s = time.perf_counter() - started
                if answer.status_code != 200:
                    raise RuntimeError(f"pull answered {answer.status_code}: {answer.text[:500]}\n{hub.log()[-3000:]}")
                results = answer.json()["pull"]
                errors = [r for r in results if r["error"]]
                written = sum(r["written"] for r in results)
                if errors or written != resources:
                    raise RuntimeError(f"the pull wrote {written} of {resources}: {results}\n{hub.log()[-3000:]}")
                pulled = resources / pull_s
                if opts.verbose:
                    log(f"    pull {pulled:,.0f} resources/s ({pull_s:.1f} s)")
    row = Row("pull", 1, 1, hub=_cell(pulled, pull_s, resources), floor=_cell(ingest, ingest_s, resources))
    ratio = row.ratio
    row.checks = [Check("≥ 0.5 × transaction ingest", None if ratio is None else ratio >= 0.5)]
    section.rows.append(row)
    section.notes.append(
        f"**pull**: the clinic hub pulls {patients:,} Patients and {patients:,} Appointments ({resources:,} resources) "
        f"from the EHR hub over FHIR REST, {PAGE} per page, each page one transaction through the write path "
        f"(identifier matching, link table, watermark per page): {pull_s:.1f} s. The hub columns are resources/s of "
        f"the pull; the floor columns are the EHR hub's own ingest of the same resources, {BUNDLE}-entry "
        f"transactions from one client: {ingest_s:.1f} s. hub / floor is the ratio the issue asks for (target ≥ 0.5)."
    )
    section.notes.append("Both hubs run with auth off and FHIRHUB_RATE_LIMIT=0; the connector uses `auth: none`.")
    return section
