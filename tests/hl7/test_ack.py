"""ACK building: original and enhanced modes, MSA, ERR, swapped MSH."""

from __future__ import annotations

import pytest

from hub.errors import Category, FhirError
from hub.hl7.ack import ack_code_for, build_ack, read_header
from hub.hl7.convert import convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import parse

MSG = "MSH|^~\\&|SNDAPP|SNDFAC|RCVAPP|RCVFAC|20200101||ADT^A01^ADT_A01|CTRL42|P|2.5.1\rPID|1||7^^^H^MR\r"


def _segs(ack: str) -> list[list[str]]:
    assert ack.endswith("\r")
    return [s.split("|") for s in ack.strip("\r").split("\r")]


def test_aa_swaps_sender_and_receiver() -> None:
    ack = build_ack(MSG, "AA", control_id="ACK1", timestamp="20240101120000+0000")
    msh, msa = _segs(ack)
    assert msh[:12] == [
        "MSH",
        "^~\\&",
        "RCVAPP",
        "RCVFAC",
        "SNDAPP",
        "SNDFAC",
        "20240101120000+0000",
        "",
        "ACK^A01^ACK",
        "ACK1",
        "P",
        "2.5.1",
    ]
    assert msa == ["MSA", "AA", "CTRL42"]
    assert parse(ack).control_id == "ACK1"  # the ACK itself parses


def test_ae_with_err_location_code_severity(ms: MappingSet) -> None:
    bad = MSG.replace("PID|1||7^^^H^MR", "PID|1||7^^^H^MR||DOE^J||1999133")
    with pytest.raises(Hl7Error) as info:
        convert(bad, ms)
    err = info.value
    code = ack_code_for(err)
    assert code == "AE"
    ack = build_ack(bad, code, control_id="A2", timestamp="20240101", error=err)
    segs = _segs(ack)
    assert segs[1][:3] == ["MSA", "AE", "CTRL42"]
    e = segs[2]
    assert e[0] == "ERR" and e[2] == "PID^1^7" and e[3] == "102^Data type error^HL70357" and e[4] == "E"
    assert "DOE" not in ack and "1999133" not in ack


def test_ar_for_unsupported_and_enhanced_codes(ms: MappingSet) -> None:
    oru = MSG.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    with pytest.raises(Hl7Error) as info:
        convert(oru, ms)
    assert ack_code_for(info.value) == "AR"
    assert ack_code_for(info.value, enhanced=True, accept=True) == "CR"
    assert ack_code_for(None, enhanced=True, accept=True) == "CA"
    assert ack_code_for(FhirError(Category.INVALID, "X", "y"), enhanced=True, accept=True) == "CE"
    assert ack_code_for(RuntimeError("boom")) == "AR"
    ack = build_ack(oru, "AR", control_id="A3", timestamp="20240101", error=info.value)
    err = _segs(ack)[2]
    assert err[2] == "MSH^1^9" and err[3].startswith("200^")
    ca = build_ack(oru, "CA", control_id="A4", timestamp="20240101")
    assert _segs(ca)[1][:2] == ["MSA", "CA"] and len(_segs(ca)) == 2


def test_ack_for_unparseable_input_still_builds() -> None:
    ack = build_ack(b"\xff\xfegarbage", "AR", control_id="A5", timestamp="20240101", error=RuntimeError("x"))
    msh, msa, err = _segs(ack)
    assert msh[0] == "MSH" and msa[:2] == ["MSA", "AR"] and err[3].startswith("207^")


def test_custom_delimiters_are_kept() -> None:
    raw = MSG.replace("|", "#").replace("^", "$")
    ack = build_ack(raw, "AA", control_id="C1", timestamp="20240101")
    assert ack.startswith("MSH#$~\\&#RCVAPP#RCVFAC#SNDAPP#SNDFAC#")
    assert read_header(raw).control_id == "CTRL42"


def test_bad_code_rejected() -> None:
    with pytest.raises(ValueError):
        build_ack(MSG, "OK", control_id="x", timestamp="y")
