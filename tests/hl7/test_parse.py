"""Parsing: separators, encoding characters, escapes, repetitions, components, typed errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hub.errors import CATEGORIES, Category
from hub.hl7.errors import Hl7Error
from hub.hl7.parse import escape, parse, split_messages, unescape

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
ADT = (
    "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB|GOOD HEALTH HOSPITAL|198808181126|SECURITY|ADT^A01^ADT_A01|MSG00001|P|2.5.1\r"
    "EVN|A01|200708181123\r"
    "PID|1||PATID1234^^^GOOD HEALTH HOSPITAL^MR~123456789^^^USSSA^SS||EVERYMAN^ADAM^A^III||19610615|M\r"
)


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n", "\n\r"])
def test_segment_separators(sep: str) -> None:
    msg = parse(ADT.replace("\r", sep))
    assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID"]
    assert msg.control_id == "MSG00001"
    assert msg.message_code == "ADT" and msg.trigger == "A01" and msg.structure == "ADT_A01"


def test_mixed_separators_and_blank_lines_and_framing() -> None:
    raw = "\x0b" + ADT.replace("\r", "\r\n", 1) + "\n\n\x1c\r"
    assert len(parse(raw).segments) == 3


def test_repetitions_components_subcomponents() -> None:
    pid = parse(ADT + "NK1|1|A&B^C\r").first("PID")
    assert pid is not None
    reps = pid.field(3)
    assert len(reps) == 2
    assert pid.value(3, 1, r=1) == "123456789" and pid.value(3, 4, r=1) == "USSSA"
    assert pid.value(5, 2) == "ADAM"
    nk1 = parse(ADT + "NK1|1|A&B^C\r").first("NK1")
    assert nk1 is not None and nk1.field(2)[0] == (("A", "B"), ("C",))


def test_custom_encoding_characters() -> None:
    raw = ADT.replace("|", "#").replace("^", "$").replace("~", "*").replace("&", "%")
    raw = raw.replace("MSH#$*\\%", "MSH#$*\\%")
    msg = parse(raw)
    pid = msg.first("PID")
    assert pid is not None
    assert msg.encoding.field == "#" and msg.encoding.component == "$"
    assert pid.value(5, 1) == "EVERYMAN" and pid.value(3, 4, r=1) == "USSSA"


def test_escape_sequences() -> None:
    raw = ADT + "NTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g\\X41\\\r"
    nte = parse(raw).first("NTE")
    assert nte is not None
    assert nte.value(3) == "a|b^c&d~e\\f\ngA"


def test_escape_roundtrip() -> None:
    from hub.hl7.parse import DEFAULT_ENCODING

    text = "a|b^c&d~e\\f"
    assert unescape(escape(text), DEFAULT_ENCODING) == text


def test_explicit_null_is_empty() -> None:
    pid = parse(ADT.replace("|M\r", '|""\r')).first("PID")
    assert pid is not None and not pid.has(8)


@pytest.mark.parametrize(
    ("raw", "code", "location"),
    [
        ("", "HL7-PARSE-EMPTY", None),
        ("PID|1\r", "HL7-PARSE-NO-MSH", "MSH^1"),
        ("MSH|^~\\\\&|A|B\r", "HL7-PARSE-ENCODING", "MSH^1^2"),
        ("MSH|^~&|A|B\r", "HL7-PARSE-ENCODING", "MSH^1^2"),
        ("MSHA^~\\&|A\r", "HL7-PARSE-ENCODING", "MSH^1^1"),
        ("MSH|^~\\&|A|B|||20200101||ADT^A01|1|P|2.5\rpid|1\r", "HL7-PARSE-SEGMENT", None),
        (
            "MSH|^~\\&|A|B|||20200101||ADT^A01|1|P|2.5\rMSH|^~\\&|A|B|||20200101||ADT^A01|2|P|2.5\r",
            "HL7-PARSE-MULTIPLE",
            "MSH^2",
        ),
        ("MSH|^~\\&|A|B|||20200101||ADT^A01||P|2.5\r", "HL7-PARSE-MSH-10", "MSH^1^10"),
        ("MSH|^~\\&|A|B|||20200101||^A01|1|P|2.5\r", "HL7-PARSE-MSH-9", "MSH^1^9"),
        ("BHS|^~\\&\rMSH|^~\\&|A|B|||20200101||ADT^A01|1|P|2.5\r", "HL7-PARSE-BATCH", "BHS^1"),
        (b"MSH|^~\\&|A|B|||20200101||ADT^A01|1|P|2.5\rPID|1||\xff\xfe\r", "HL7-PARSE-CHARSET", "MSH^1^18"),
    ],
)
def test_malformed_raises_typed_error(raw: str | bytes, code: str, location: str | None) -> None:
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    err = info.value
    assert err.code == code
    assert err.category is Category.INVALID and CATEGORIES[err.category].ack_code == "AE"
    if location:
        assert err.location == location


def test_latin1_declared_in_msh18() -> None:
    raw = "MSH|^~\\&|A|B|||20200101||ADT^A01|1|P|2.5||||||8859/1\rPID|1||1||M\xfcller\r".encode("latin-1")
    pid = parse(raw).first("PID")
    assert pid is not None and pid.value(5) == "Müller"


def test_split_stream_batch_and_file() -> None:
    assert len(split_messages((DATA / "nextgen-connect" / "TestADT.txt").read_bytes())) == 124
    assert len(split_messages((DATA / "python-hl7" / "sample_file1.hl7").read_bytes())) == 3
    with pytest.raises(Hl7Error):
        split_messages((DATA / "python-hl7" / "sample_bad_file2.hl7").read_bytes())


def _ms_per_message(fn: object, raw: str, n: int) -> float:
    call = fn  # type: ignore[assignment]
    call(raw)  # type: ignore[operator]
    t = time.perf_counter()
    for _ in range(n):
        call(raw)  # type: ignore[operator]
    return (time.perf_counter() - t) / n * 1000


def test_parser_speed_report(capsys: pytest.CaptureFixture[str]) -> None:
    """python-hl7 (hot path) vs hl7apy on a 3-segment ADT and a typical SIU."""
    import hl7
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    siu = (DATA / "microsoft-fhir-converter" / "SIU-S12-01.hl7").read_text().replace("\n", "\r")
    rows = []
    for name, raw in (("ADT 3 segments", ADT), ("SIU^S12 (14 segments)", siu)):
        ph = _ms_per_message(hl7.parse, raw, 200)
        ours = _ms_per_message(parse, raw, 200)
        ap = _ms_per_message(lambda x: parse_message(x, validation_level=VALIDATION_LEVEL.TOLERANT), raw, 10)
        rows.append((name, ph, ours, ap))
    with capsys.disabled():
        print("\nparse ms/message: python-hl7 | hub.hl7.parse (python-hl7 + checks) | hl7apy")
        for name, ph, ours, ap in rows:
            print(f"  {name:24} {ph:7.3f} | {ours:7.3f} | {ap:8.3f}")
    for _, ph, _ours, ap in rows:
        assert ph < ap  # the choice of python-hl7 for the hot path holds on this machine


def test_split_parser_is_equivalent() -> None:
    """The plain str.split tokenizer gives the same values as python-hl7 on every sample."""
    compared = 0
    for path in sorted(DATA.rglob("*")):
        if path.suffix not in (".hl7", ".txt"):
            continue
        try:
            messages = split_messages(path.read_bytes())
        except Hl7Error:
            continue
        for m in messages:
            try:
                a = parse(m)
            except Hl7Error as exc:
                with pytest.raises(Hl7Error) as info:
                    parse(m, parser="split")
                assert info.value.code == exc.code
                continue
            b = parse(m, parser="split")
            assert [s.name for s in a.segments] == [s.name for s in b.segments]
            for sa, sb in zip(a.segments, b.segments, strict=True):
                for n in range(1, len(sa) + 2):
                    assert sa.field(n) == sb.field(n), (path.name, sa.name, n)
            compared += 1
    assert compared > 300


def test_split_parser_speed_report(capsys: pytest.CaptureFixture[str]) -> None:
    siu = (DATA / "microsoft-fhir-converter" / "SIU-S12-01.hl7").read_text()
    rows = []
    for name, raw in (("ADT 3 segments", ADT), ("SIU^S12 (14 segments)", siu)):
        ph = _ms_per_message(parse, raw, 50)
        sp = _ms_per_message(lambda x: parse(x, parser="split"), raw, 50)
        rows.append((name, ph, sp))
    with capsys.disabled():
        print("\nhub.hl7.parse ms/message: parser=python-hl7 | parser=split")
        for name, ph, sp in rows:
            print(f"  {name:24} {ph:7.3f} | {sp:7.3f}")
