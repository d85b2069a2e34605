"""``fhirhub load``: Bundles, NDJSON and single resources, through the FHIR router (the one write path)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hub.interactions.request import FhirRequest, FhirResponse
from hub.interactions.router import FhirRouter

NDJSON_BATCH = 500


@dataclass
class LoadReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def fail(self, where: str, reason: str, count: int = 1) -> None:
        self.failed += count
        self.reasons[f"{where}: {reason}"] += count


def files_under(paths: list[Path]) -> list[Path]:
    """Files in load order: folders are walked and sorted by name."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson") and p.is_file()))
        else:
            out.append(path)
    return out


def _as_bundle(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    entries = []
    for res in resources:
        if isinstance(res.get("id"), str):
            request = {"method": "PUT", "url": f"{res.get('resourceType')}/{res['id']}"}
        else:
            request = {"method": "POST", "url": str(res.get("resourceType"))}
        entries.append({"resource": res, "request": request})
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def bundles_of(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, batch-or-transaction Bundle) pairs the file becomes."""
    if path.suffix == ".ndjson":
        chunk: list[dict[str, Any]] = []
        start = 1
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                chunk.append(orjson.loads(line))
                if len(chunk) == NDJSON_BATCH:
                    yield f"{path.name}:{start}-{n}", _as_bundle(chunk, "batch")
                    chunk, start = [], n + 1
        if chunk:
            yield f"{path.name}:{start}-", _as_bundle(chunk, "batch")
        return
    doc = orjson.loads(path.read_bytes())
    if doc.get("resourceType") == "Bundle" and doc.get("type") in ("transaction", "batch"):
        yield path.name, doc
    elif doc.get("resourceType") == "Bundle" and doc.get("type") in ("collection", "searchset", "document", "history"):
        yield path.name, _as_bundle([e["resource"] for e in doc.get("entry", []) if "resource" in e], "batch")
    else:
        yield path.name, _as_bundle([doc], "batch")


def count_entries(bundle: dict[str, Any]) -> int:
    return len(bundle.get("entry") or [])


def tally(report: LoadReport, label: str, bundle: dict[str, Any], resp: FhirResponse) -> None:
    n = count_entries(bundle)
    if resp.status >= 400:
        report.fail(label, _reason(resp.body), n)
        return
    result = orjson.loads(resp.body or b"{}")
    for i, entry in enumerate(result.get("entry", [])):
        response = entry.get("response", {})
        status = response.get("status", "")
        if status.startswith("201"):
            report.created += 1
        elif status.startswith("200") and _code(response.get("outcome")) == "FHIRHUB-WRITE-UNCHANGED":
            report.unchanged += 1
        elif status.startswith("200"):
            report.updated += 1
        else:
            report.fail(f"{label} entry {i}", _reason(orjson.dumps(entry.get("response", {}).get("outcome"))))


def _code(outcome: Any) -> str:
    try:
        return str(outcome["issue"][0]["details"]["coding"][0]["code"])
    except (TypeError, KeyError, IndexError):
        return ""


def _reason(body: bytes | None) -> str:
    try:
        oo = orjson.loads(body or b"{}") or {}
        issue = (oo.get("issue") or [{}])[0]
        code = ((issue.get("details") or {}).get("coding") or [{}])[0].get("code", "")
        return f"{code} {issue.get('diagnostics', '')}".strip()
    except orjson.JSONDecodeError:
        return "unreadable response"


def load_bundle(router: FhirRouter, bundle: dict[str, Any], base_url: str, origin: str | None = None) -> FhirResponse:
    return router.dispatch(FhirRequest("POST", "", [], {}, bundle, base_url, origin=origin))
