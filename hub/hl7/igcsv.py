"""Readers for the HL7 v2-to-FHIR IG mapping CSVs (segments and code systems).

Used to generate ``mappings/codemaps/*.yaml`` (``python -m hub.hl7.igcsv``)
and by the field-level tests generated from the segment tables.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SegmentRow:
    sort: str
    field: str  # e.g. "PID-5"
    name: str
    datatype: str
    condition: str
    narrative: str
    target: str  # FHIR attribute, e.g. "name[1]"
    extension_hint: str
    target_type: str
    datatype_map: str
    vocabulary: str
    assignment: str
    line: int

    @property
    def number(self) -> int:
        return int(self.field.split("-")[1])


def read_segment_csv(path: str | Path) -> list[SegmentRow]:
    rows: list[SegmentRow] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        for i, r in enumerate(reader, start=1):
            if i <= 2 or len(r) < 17 or "-" not in r[1]:
                continue
            r = [x.strip() for x in r]
            rows.append(
                SegmentRow(r[0], r[1], r[2], r[3], r[6], r[8], r[9], r[10], r[11], r[14], r[15], r[16], i)
            )
    return rows


@dataclass(frozen=True)
class CodeRow:
    v2_code: str
    v2_text: str
    v2_system: str
    fhir_code: str
    fhir_display: str
    fhir_system: str


def read_codesystem_csv(path: str | Path) -> list[CodeRow]:
    out: list[CodeRow] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, r in enumerate(csv.reader(fh), start=1):
            if i <= 2 or len(r) < 10:
                continue
            r = [x.strip() for x in r]
            display = r[8] or r[7]
            out.append(CodeRow(r[0], r[1], r[2], r[6], display, r[9]))
    return out


def codemap_yaml(name: str, csv_path: str | Path, *, description: str = "") -> str:
    rows = [r for r in read_codesystem_csv(csv_path) if r.v2_code and r.fhir_code]
    systems = {r.fhir_system for r in rows}
    target = next(iter(systems)) if len(systems) == 1 else None
    src = {r.v2_system for r in rows if r.v2_system}
    source_system = None
    if len(src) == 1:
        tab = next(iter(src))
        if tab.upper().startswith("HL7") and tab[3:].isdigit():
            source_system = f"http://terminology.hl7.org/CodeSystem/v2-{tab[3:]}"
    lines = [
        "kind: codemap",
        f"name: {name}",
        f"description: {_q(description or name)}",
        f"ig: {_q(Path(csv_path).name)}",
    ]
    if source_system:
        lines.append(f"source_system: {source_system}")
    if target:
        lines.append(f"target_system: {target}")
    lines.append("map:")
    for r in rows:
        key = _q(r.v2_code)
        if target:
            if r.fhir_display:
                lines.append(f"  {key}: {{code: {_q(r.fhir_code)}, display: {_q(r.fhir_display)}}}")
            else:
                lines.append(f"  {key}: {_q(r.fhir_code)}")
        else:
            parts = [f"code: {_q(r.fhir_code)}"]
            if r.fhir_display:
                parts.append(f"display: {_q(r.fhir_display)}")
            if r.fhir_system:
                parts.append(f"system: {_q(r.fhir_system.strip())}")
            lines.append(f"  {key}: {{{', '.join(parts)}}}")
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: list[str]) -> int:
    """``python -m hub.hl7.igcsv NAME CSV [DESCRIPTION]`` prints a codemap file."""
    if len(argv) < 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(codemap_yaml(argv[0], argv[1], description=argv[2] if len(argv) > 2 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
