"""Markdown tables for the benchmark results."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
import time
from typing import Any

from bench.harness import ROOT, Options, Row, Section

OTHER_BUSY = 0.25  # other processes using a quarter of a core or more: note it
CLIENT_SATURATED = 0.9  # the load generator is one thread: ≥ 90 % of a core means it may be the bottleneck


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _ms(cell: dict[str, Any] | None, key: str) -> str:
    if not cell:
        return "—"
    v = cell[key]
    return "—" if v is None else _num(v, 1 if v < 100 else 0)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def _targets(row: Row) -> tuple[str, str]:
    if not row.checks:
        return "", ""
    return "; ".join(c.label for c in row.checks), " ".join(f"**{c.mark()}**" for c in row.checks)


def section_markdown(section: Section) -> str:
    lines = [f"### {section.title} — {section.db}", ""]
    if section.error:
        lines += [f"**Not measured:** {section.error}", ""]
    if section.rows:
        lines += [
            "| workload | clients | hub req/s | hub resources/s | p50 ms | p95 ms | p99 ms | floor req/s | floor p50 ms "
            "| floor p99 ms | hub / floor | target | result |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in section.rows:
            per_res = _num(r.throughput("hub", per_resource=True)) if r.resources_per_request > 1 else ""
            target, result = _targets(r)
            lines.append(
                f"| {r.workload} | {r.clients} | {_num(r.throughput('hub'), 1)} | {per_res} | {_ms(r.hub, 'p50_ms')} "
                f"| {_ms(r.hub, 'p95_ms')} | {_ms(r.hub, 'p99_ms')} | {_num(r.throughput('floor'), 1)} "
                f"| {_ms(r.floor, 'p50_ms')} | {_ms(r.floor, 'p99_ms')} | {_num(r.ratio, 2)} | {target} | {result} |"
            )
        pg = section.db == "postgresql"
        lines += ["", "CPU over each measured window (100 % = one core; the machine has "
                  f"{os.cpu_count()}); the load generator is a single thread; "
                  + ("\"PostgreSQL\" is the local postgres processes; " if pg else "")
                  + "\"other\" is every other process on the machine (another workload there makes the figures "
                  "noisy):", ""]
        cols = ["process", "load gen"] + (["PostgreSQL"] if pg else []) + ["other"]
        lines.append("| workload | clients | " + " | ".join(f"hub: {c}" for c in cols) + " | "
                     + " | ".join(f"floor: {c}" for c in cols) + " | answers hub / floor |")
        lines.append("| --- | ---: |" + " ---: |" * (2 * len(cols) + 1))
        keys = ["server_cpu", "client_cpu"] + (["db_cpu"] if pg else []) + ["other_cpu"]
        for r in section.rows:
            h, f = r.hub or {}, r.floor or {}
            lines.append(f"| {r.workload} | {r.clients} | " + " | ".join(_pct(h.get(k)) for k in keys) + " | "
                         + " | ".join(_pct(f.get(k)) for k in keys) + f" | {h.get('ok', '—')} / {f.get('ok', '—')} |")
        lines.append("")
    notes = list(section.notes)
    noisy: list[str] = []
    for r in section.rows:
        for kind, cell in (("hub", r.hub), ("floor", r.floor)):
            if not cell:
                continue
            if cell.get("failed"):  # suites with cells of their own shape may leave out statuses and errors
                notes.append(f"**{kind} {r.workload} × {r.clients}: {cell['failed']} failed requests** "
                             f"(statuses {cell.get('statuses', '?')}); first: `{(cell.get('errors') or [])[:1]}`")
            if (cell.get("other_cpu") or 0) >= OTHER_BUSY:
                noisy.append(f"{kind} {r.workload} × {r.clients} ({cell['other_cpu'] * 100:.0f} %)")
            if (cell.get("client_cpu") or 0) >= CLIENT_SATURATED:
                notes.append(f"{kind} {r.workload} × {r.clients}: the load generator used "
                             f"{cell['client_cpu'] * 100:.0f} % of a core — the figure may be client-bound.")
    if noisy:
        notes.append(f"**Noisy**: other processes used ≥ {OTHER_BUSY * 100:.0f} % of a core during: {', '.join(noisy)}.")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "(no commit)"
    except OSError:
        return "(unknown)"


def _postgres_version() -> str:
    try:
        import psycopg

        from bench.harness import _libpq, postgres_base_url

        with psycopg.connect(_libpq(postgres_base_url()), connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception:  # noqa: BLE001 - informational only
        return "unreachable"


def header(opts: Options, dbs: list[str]) -> str:
    parts = [
        "# fhirhub benchmark",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, commit {_git_commit()}, {platform.node()}",
        f"- {os.cpu_count()} CPU cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
        + (f", PostgreSQL {_postgres_version()}" if "postgresql" in dbs else ""),
        f"- each cell: {opts.warmup:g} s warm-up (longer until every client has had an answer), then {opts.duration:g} s measured; closed-loop clients on keep-alive "
        f"connections ({opts.client} HTTP/1.1 client) in a separate process; latencies in ms (p50/p95/p99 of the "
        "answers that arrived inside the window)",
        "- floor: a bare Starlette app under the same uvicorn settings and driver, doing the same database work in raw "
        "SQL (bench/floor.py), measured right before the hub in the same run",
        f"- processes: the hub with FHIRHUB_WORKERS={os.environ.get('FHIRHUB_WORKERS', '1')} API workers (plus its services"
        " process when above 1), the floor with as many uvicorn workers; CPU figures add up all of a server's processes",
        "",
    ]
    if opts.profile_dir is not None:
        parts.insert(-1, "- **profiled run**: py-spy sampled the hub during its cells, so the hub's figures are low")
    return "\n".join(parts)


def summary(sections: list[Section]) -> str:
    checks = [(s, r, c) for s in sections for r in s.rows for c in r.checks]
    passed = sum(1 for _, _, c in checks if c.passed)
    failed = [(s, r, c) for s, r, c in checks if c.passed is False]
    lines = [f"**Targets: {passed} PASS, {len(failed)} FAIL** of {len(checks)}."]
    for s, r, c in failed:
        lines.append(f"- FAIL {s.db} {r.workload} × {r.clients}: {c.label}")
    for s in sections:
        if s.error:
            lines.append(f"- {s.suite} on {s.db} not measured: {s.error.splitlines()[0]}")
    return "\n".join(lines) + "\n"
