"""The MLLP benchmark suite runs end to end with tiny numbers (it says nothing about speed: ``make bench`` does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.harness import Options
from bench.report import section_markdown
from bench.suites import mllp

pytestmark = pytest.mark.slow


def test_the_mllp_suite_runs_and_reports_every_row(tmp_path: Path) -> None:
    section = mllp.run("sqlite", tmp_path, Options(duration=0.5, warmup=0.2, verbose=False))
    assert section.error is None
    text = section_markdown(section)
    rows = [r.workload for r in section.rows]
    assert rows[0].startswith("ingest: CA after durable store") and any(r.startswith("apply") for r in rows)
    ingest = section.rows[0]
    assert ingest.hub and ingest.floor and ingest.hub["throughput"] > 0 and ingest.floor["throughput"] > 0
    assert ingest.hub["failed"] == 0
    assert re.search(r"\| ingest: CA after durable store \(apply: idle\) \| 8 \| [0-9,.]+ ", text)
    assert all(c.passed is not None for c in ingest.checks)


def test_the_message_mix_is_unique_per_prefix() -> None:
    a, b = mllp.stream(200, 1, "A"), mllp.stream(200, 1, "B")
    cids = [c for c, _ in a + b]
    assert len(set(cids)) == 400
    kinds = {raw.split(b"|")[8][:7] for _, raw in a}
    assert kinds == {b"ADT^A04", b"ADT^A08", b"SIU^S12"}
