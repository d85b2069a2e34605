"""Extraction timing per resource type: ``python -m hub.search.timing FILE_OR_DIR...``.

Reads resources (single resources or Bundles), warms up, then times
:meth:`SearchIndexer.extract` and, for comparison, the same parameters
evaluated with fhirpathpy alone. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from hub.search.index import SearchIndexer


def _resources(paths: list[str]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    out: list[dict[str, Any]] = []
    for f in files:
        data = orjson.loads(f.read_bytes())
        if not isinstance(data, dict) or "resourceType" not in data:
            continue
        if data["resourceType"] == "Bundle":
            out.extend(e["resource"] for e in data.get("entry", []) if isinstance(e.get("resource"), dict))
        else:
            out.append(data)
    return out


def main(argv: list[str]) -> None:
    resources = _resources(argv or ["tests/data/synthea", "tests/data/fhir-examples/r4-official"])
    ix = SearchIndexer.load()
    for r in resources:
        ix.extract(r)
    spent: dict[str, float] = {}
    slow: dict[str, float] = {}
    count: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    reps = 3
    for _ in range(reps):
        for r in resources:
            start = time.perf_counter()
            out = ix.extract(r)
            spent[r["resourceType"]] = spent.get(r["resourceType"], 0.0) + time.perf_counter() - start
            count[r["resourceType"]] += 1
            rows[r["resourceType"]] += sum(len(v) for v in out.values())
    sample: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        sample.setdefault(r["resourceType"], []).append(r)
    for t, all_rs in sample.items():
        rs = all_rs[:20]
        params = [p for p in ix.registry.indexed(t) if p.evaluator is not None]
        begin = time.perf_counter()
        for r in rs:
            for p in params:
                assert p.evaluator is not None
                try:
                    p.evaluator.compiled()(r)
                except Exception:  # noqa: BLE001, S112
                    continue
        slow[t] = (time.perf_counter() - begin) / len(rs)
    print(f"{'type':28s} {'n':>6s} {'extract ms':>10s} {'rows':>6s} {'fhirpathpy ms':>14s}")
    for t, n in count.most_common():
        print(f"{t:28s} {n // reps:6d} {spent[t] / n * 1000:10.3f} {rows[t] / n:6.1f} {slow[t] * 1000:14.3f}")
    total_n = sum(count.values())
    print(f"{'all':28s} {total_n // reps:6d} {sum(spent.values()) / total_n * 1000:10.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
