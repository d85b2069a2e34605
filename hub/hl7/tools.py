"""Functions behind the integration-engineer CLI (the lead wires them into typer).

* ``map_file(path)`` -> the Bundle a message file becomes (``fhirhub map MESSAGE.hl7``);
* ``run_golden_tests(dir)`` -> failures with a readable diff (``fhirhub map test``);
* ``diff_bundles(old, new)`` -> what changes between two conversions (``fhirhub replay``).

All pure except for reading the named files.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.hl7.convert import ConversionResult, convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import DEFAULT_MAPPINGS_DIR, MappingSet


def _mappings(mappings: MappingSet | str | Path | None) -> MappingSet:
    if isinstance(mappings, MappingSet):
        return mappings
    return MappingSet.load(mappings if mappings is not None else DEFAULT_MAPPINGS_DIR)


def map_message(
    raw: str | bytes,
    mappings: MappingSet | str | Path | None = None,
    *,
    sender_systems: dict[str, str] | None = None,
    timezone: str | None = None,
) -> ConversionResult:
    return convert(raw, _mappings(mappings), sender_systems=sender_systems, timezone=timezone)


def map_file(
    path: str | Path,
    mappings: MappingSet | str | Path | None = None,
    *,
    sender_systems: dict[str, str] | None = None,
    timezone: str | None = None,
) -> dict[str, Any]:
    """The FHIR transaction Bundle a message file becomes (nothing is stored)."""
    raw = Path(path).read_bytes()
    return map_message(raw, mappings, sender_systems=sender_systems, timezone=timezone).bundle


def dumps(bundle: Any) -> str:
    """Canonical JSON used by golden files (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass
class GoldenFailure:
    message: str  # the .hl7 file
    expected: str  # the .json file
    reason: str  # "differs" | "missing expected" | "error"
    diff: str = ""

    def __str__(self) -> str:
        head = f"{self.message}: {self.reason}"
        return f"{head}\n{self.diff}" if self.diff else head


def expected_outcome(result: ConversionResult | None, error: Hl7Error | None) -> dict[str, Any]:
    """What a golden ``.json`` holds: the bundle and warnings, or the error an ACK would carry."""
    if error is not None:
        return {
            "error": {
                "code": error.code,
                "category": error.category.value,
                "ack": error.ack_code,
                "location": error.location,
                "hl7_code": error.hl7_code,
            }
        }
    assert result is not None
    return {"bundle": result.bundle, "warnings": result.warnings, "patient_key": result.patient_key}


def outcome_of(raw: bytes, ms: MappingSet) -> dict[str, Any]:
    try:
        return expected_outcome(convert(raw, ms), None)
    except Hl7Error as exc:
        return expected_outcome(None, exc)


def run_golden_tests(
    directory: str | Path | None = None,
    mappings: MappingSet | str | Path | None = None,
    *,
    update: bool = False,
) -> list[GoldenFailure]:
    """Run ``*.hl7`` in ``directory`` (default ``mappings/tests``) against the ``.json`` beside each.

    ``update=True`` (re)writes the expected files instead of comparing.
    """
    ms = _mappings(mappings)
    root = Path(directory) if directory is not None else ms.root / "tests"
    failures: list[GoldenFailure] = []
    for msg_path in sorted(root.glob("*.hl7")):
        exp_path = msg_path.with_suffix(".json")
        actual = dumps(outcome_of(msg_path.read_bytes(), ms))
        if update:
            exp_path.write_text(actual, encoding="utf-8")
            continue
        if not exp_path.exists():
            failures.append(GoldenFailure(str(msg_path), str(exp_path), "missing expected", actual))
            continue
        expected = exp_path.read_text(encoding="utf-8")
        if json.loads(expected) != json.loads(actual):
            diff = "".join(
                difflib.unified_diff(
                    dumps(json.loads(expected)).splitlines(keepends=True),
                    actual.splitlines(keepends=True),
                    fromfile=str(exp_path),
                    tofile=f"{msg_path} (now)",
                )
            )
            failures.append(GoldenFailure(str(msg_path), str(exp_path), "differs", diff))
    return failures


# ------------------------------------------------------------------- replay


@dataclass
class EntryChange:
    kind: str  # added | removed | changed
    key: str  # "PUT Patient?identifier=..." (the request) or the fullUrl
    resource_type: str
    changes: list[str] = field(default_factory=list)  # "path: old -> new" (changed only)

    def __str__(self) -> str:
        lines = [f"{self.kind:8} {self.key}"]
        lines += [f"    {c}" for c in self.changes]
        return "\n".join(lines)


def _entry_key(entry: dict[str, Any]) -> str:
    req = entry.get("request") or {}
    url = req.get("url", "")
    if req.get("ifNoneExist"):
        url = f"{url}?{req['ifNoneExist']}"
    return f"{req.get('method', '?')} {url}" if url else str(entry.get("fullUrl", "?"))


def _walk(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _walk(a.get(k), b.get(k), f"{path}.{k}" if path else k, out)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _walk(a[i] if i < len(a) else None, b[i] if i < len(b) else None, f"{path}[{i}]", out)
        return
    if a != b:
        out.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")


def diff_bundles(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[EntryChange]:
    """Entry-level difference of two transaction Bundles (matched by request URL).

    References to ``urn:uuid:`` fullUrls are compared as the request keys of the
    entries they point at, so a change of fullUrl alone is not a change.
    """

    def index(bundle: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        entries = (bundle or {}).get("entry") or []
        by_key: dict[str, dict[str, Any]] = {}
        url_to_key: dict[str, str] = {}
        for e in entries:
            k = _entry_key(e)
            by_key[k] = e
            if e.get("fullUrl"):
                url_to_key[str(e["fullUrl"])] = k
        return by_key, url_to_key

    def norm(value: Any, urls: dict[str, str]) -> Any:
        if isinstance(value, dict):
            return {
                k: (urls.get(v, v) if k == "reference" and isinstance(v, str) else norm(v, urls))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [norm(v, urls) for v in value]
        return value

    old_idx, old_urls = index(old)
    new_idx, new_urls = index(new)
    changes: list[EntryChange] = []
    for k in sorted(set(old_idx) | set(new_idx)):
        o, n = old_idx.get(k), new_idx.get(k)
        if o is None and n is not None:
            changes.append(EntryChange("added", k, n["resource"]["resourceType"]))
        elif n is None and o is not None:
            changes.append(EntryChange("removed", k, o["resource"]["resourceType"]))
        elif o is not None and n is not None:
            diffs: list[str] = []
            _walk(norm(o.get("resource"), old_urls), norm(n.get("resource"), new_urls), "", diffs)
            if diffs:
                changes.append(EntryChange("changed", k, n["resource"]["resourceType"], diffs))
    return changes


def replay(
    messages: list[str | bytes],
    old: MappingSet,
    new: MappingSet,
) -> list[tuple[int, list[EntryChange], str | None, str | None]]:
    """Run stored messages through two mapping sets: (index, changes, old error, new error) per message that differs."""
    out = []
    for i, raw in enumerate(messages):
        res: list[Any] = []
        errs: list[str | None] = []
        for ms in (old, new):
            try:
                res.append(convert(raw, ms).bundle)
                errs.append(None)
            except Hl7Error as exc:
                res.append(None)
                errs.append(exc.code)
        changes = diff_bundles(res[0], res[1])
        if changes or errs[0] != errs[1]:
            out.append((i, changes, errs[0], errs[1]))
    return out
