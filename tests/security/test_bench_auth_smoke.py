"""The auth benchmark suite runs end to end (a real token, the three hubs, a report). It says nothing about speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.server import ROOT


def test_auth_bench_suite_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--db", "sqlite", "--only", "auth", "--workloads", "read", "--concurrency", "1",
         "--duration", "4", "--preload", "20", "--quiet", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    report = out.read_text()
    assert "Not measured" not in report, report
    assert "| read: auth + audit (on) vs neither (bare) | 1 |" in report, report
    assert "overhead 1 − on/bare ≤ 15%" in report
    assert "failed requests" not in report, report  # every request of every slice was answered 200
    assert "auth alone" in report and "audit alone" in report
