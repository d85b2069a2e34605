"""Every sample message in tests/data/hl7v2/ is handled: nothing crashes.

A file is split into messages (streams, batches and files: FHS/BHS/MSH...),
each message is converted, and the outcome is the ACK code the listener will
send: AA (converted), AE (malformed or content the mapping cannot accept),
AR (unsupported message type).  The expected outcome is: AA for supported
types, AR for the others, except for the files listed in ``EXPECTED`` with
the reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from hub.errors import CATEGORIES
from hub.hl7.convert import convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import split_messages

ROOT = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
SUPPORTED = (
    {"ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A11", "ADT^A28", "ADT^A31", "ADT^A40"}
    | {f"SIU^{e}" for e in ("S12", "S13", "S14", "S15", "S17", "S26")}
    | {"DFT^P03"}
)

# file -> (outcomes as {ack: count} or "FILE:<ack>" for a file that cannot be split, reason)
EXPECTED: dict[str, tuple[dict[str, int] | str, str]] = {
    "python-hl7/sample_bad_batch.hl7": (
        "FILE:AE",
        "BHS followed by segments before any MSH (python-hl7: 'Segment received before message header')",
    ),
    "python-hl7/sample_bad_batch1.hl7": ("FILE:AE", "a second BHS inside an open batch"),
    "python-hl7/sample_bad_file.hl7": ("FILE:AE", "FHS/BHS followed by segments before any MSH"),
    "python-hl7/sample_bad_file1.hl7": ("FILE:AE", "a second BHS inside an open batch"),
    "python-hl7/sample_bad_file2.hl7": ("FILE:AE", "a second FHS"),
    "python-hl7/sample_bad_file3.hl7": ("FILE:AE", "FHS followed by segments before any MSH"),
    "linuxforhealth-converter/sample_unix.hl7": (
        {"AE": 1},
        "MSH-2 is '^~\\\\&' (escape = subcomponent separator): AE 102 at MSH^1^2",
    ),
    "linuxforhealth-converter/sample_win.hl7": (
        {"AE": 1},
        "MSH-2 is '^~\\\\&' (escape = subcomponent separator): AE 102 at MSH^1^2",
    ),
    "linuxforhealth-converter/HL7MergeFHIRConversionTest.validateHappyPathADT_A34WithMRG.hl7message.hl7": (
        {"AE": 1},
        "MSH-10 control id empty: AE 101 at MSH^1^10 (checked before the type)",
    ),
    "linuxforhealth-converter/Hl7EncounterFHIRConversionTest.testEncounterReferencesObservation.hl7message.hl7": (
        {"AE": 1},
        "MSH-10 control id empty",
    ),
    "linuxforhealth-converter/Hl7EncounterFHIRConversionTest.testEncounterReferencesObservationAndDiagnosis.hl7message.hl7": (
        {"AE": 1},
        "MSH-10 control id empty",
    ),
    "linuxforhealth-converter/Hl7FinancialInsuranceTest.testForDataBleedFromPatientToOrganization.hl7message.hl7": (
        {"AE": 1, "AA": 1},
        "the upstream string starts with two MSH: the first message has no PID (AE 100), the second converts",
    ),
    "microsoft-fhir-converter/ADT04-23.hl7": (
        {"AE": 1},
        "IN1 without insurance company (IN1-3/IN1-4): Coverage.payor cannot be filled, AE 101 at IN1^1^4",
    ),
}


def _files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*") if p.suffix in (".hl7", ".txt") and p.is_file())


def outcome(raw: bytes, ms: MappingSet) -> dict[str, int] | str:
    try:
        messages = split_messages(raw)
    except Hl7Error as exc:
        return f"FILE:{exc.ack_code}"
    acks: Counter[str] = Counter()
    for m in messages:
        try:
            convert(m, ms)
            acks["AA"] += 1
        except Hl7Error as exc:
            assert CATEGORIES[exc.category].ack_code == exc.ack_code
            assert exc.location is None or "^" in exc.location
            acks[exc.ack_code] += 1
    return dict(acks)


def default_expectation(raw: bytes) -> dict[str, int]:
    acks: Counter[str] = Counter()
    for m in split_messages(raw):
        msh = m.split("\r", 1)[0]
        fs = msh[3]
        parts = msh.split(fs)
        typ = parts[8].split(msh[4]) if len(parts) > 8 else [""]
        event = "^".join(typ[:2])
        acks["AA" if event in SUPPORTED else "AR"] += 1
    return dict(acks)


FILES = _files()


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_sample_is_handled(ms: MappingSet, path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    raw = path.read_bytes()
    got = outcome(raw, ms)
    want = EXPECTED[rel][0] if rel in EXPECTED else default_expectation(raw)
    assert got == want, f"{rel}: got {got}, expected {want}"


def test_sample_summary(ms: MappingSet, capsys: pytest.CaptureFixture[str]) -> None:
    total: Counter[str] = Counter()
    for path in FILES:
        got = outcome(path.read_bytes(), ms)
        if isinstance(got, str):
            total[got] += 1
        else:
            total.update(got)
    with capsys.disabled():
        print(f"\nsample files: {len(FILES)}; outcomes: {dict(sorted(total.items()))}")
    assert len(FILES) >= 230
    assert total["AA"] >= 200


def test_expected_table_names_existing_files() -> None:
    for rel in EXPECTED:
        assert (ROOT / rel).exists(), rel
