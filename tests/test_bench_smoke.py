"""The benchmark harness runs end to end with tiny numbers and writes its table.

This checks that ``python -m bench`` works (servers start, the load generator drives them, the
report is written); it says nothing about speed. Speed is measured by ``make bench`` only.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_harness_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--db", "sqlite", "--only", "store", "--workloads", "read",
         "--concurrency", "1", "--duration", "0.5", "--warmup", "0.2", "--preload", "20", "--out", str(out), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    report = out.read_text(encoding="utf-8")
    assert report == done.stdout
    assert "| workload | clients | hub req/s |" in report
    row = next(line for line in report.splitlines() if line.startswith("| read | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    hub_rate, floor_rate, ratio = cells[2], cells[7], cells[10]
    for value in (hub_rate, floor_rate, ratio):
        assert re.fullmatch(r"[0-9][0-9,]*(\.[0-9]+)?", value), row
    assert float(floor_rate.replace(",", "")) > 0 and float(hub_rate.replace(",", "")) > 0
    assert cells[-1] in ("**PASS**", "**FAIL**"), row
    assert "Targets:" in report


def test_bench_search_suite_runs_end_to_end(tmp_path: Path) -> None:
    """The search suite on 2 patients: data set, load, hub and floor agree on every query, a row each."""
    import os

    out = tmp_path / "latest.md"
    env = {k: v for k, v in os.environ.items() if k != "FHIRHUB_BENCH_SEARCH_CACHE"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--db", "sqlite", "--only", "search", "--concurrency", "1",
         "--duration", "0.3", "--warmup", "0.1", "--preload", "2", "--out", str(out), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    report = out.read_text(encoding="utf-8")
    assert "ERROR" not in report and "differ" not in report
    from bench.suites.search import WORKLOADS

    for w in WORKLOADS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {w.name} | 1 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        hub_rate, floor_rate = cells[2], cells[7]
        assert float(hub_rate.replace(",", "")) > 0 and float(floor_rate.replace(",", "")) > 0, row
        assert cells[-2].startswith("same answers as floor"), row
        assert cells[-1].startswith("**PASS**"), row  # the first check: the hub's answers equal the floor's
    assert "2 patients" in report
