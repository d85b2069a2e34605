"""ACK messages (pure functions).

Original mode: MSA-1 AA / AE / AR.  Enhanced mode: the accept ACK is CA / CE / CR
(commit level) and the application ACK AA / AE / AR.  MSA-2 echoes MSH-10;
MSH-3/4 and MSH-5/6 are swapped; the ACK gets its own control id.  An ERR
segment carries the location (ERR-2), the table 0357 code (ERR-3) and the
severity (ERR-4) - never patient values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.errors import CATEGORIES, FhirError
from hub.hl7.errors import TABLE_0357, Hl7Error
from hub.hl7.parse import DEFAULT_ENCODING, Encoding, Message, decode, escape, segment_lines

ACCEPT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK needs, read leniently (the message may be broken)."""

    encoding: Encoding
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5.1"
    trigger: str = ""
    accept_ack_type: str = ""
    app_ack_type: str = ""
    message_code: str = ""  # MSH-9.1


def read_header(raw: str | bytes | Message | None) -> Header:
    """Lenient MSH reader: never raises; missing parts stay empty."""
    if raw is None:
        return Header(DEFAULT_ENCODING)
    if isinstance(raw, Message):
        enc = raw.encoding
        msh = raw.msh
        return Header(
            enc,
            _raw_field(msh, 3, enc),
            _raw_field(msh, 4, enc),
            _raw_field(msh, 5, enc),
            _raw_field(msh, 6, enc),
            msh.value(10),
            msh.value(11) or "P",
            msh.value(12) or "2.5.1",
            msh.value(9, 2),
            msh.value(15),
            msh.value(16),
            msh.value(9, 1),
        )
    line = _first_msh(raw)
    if len(line) < 8:
        return Header(DEFAULT_ENCODING)
    fs = line[3]
    enc_chars = line[4:].split(fs, 1)[0]
    if len(enc_chars) < 4 or len(set(fs + enc_chars[:4])) != 5:
        enc = DEFAULT_ENCODING
    else:
        enc = Encoding(fs, enc_chars[0], enc_chars[1], enc_chars[2], enc_chars[3])
    fields = line.split(fs)

    # fields[0] = "MSH", fields[1] = encoding chars, so MSH-n = fields[n-1]
    def f(n: int) -> str:
        return fields[n - 1] if len(fields) > n - 1 else ""

    msg_type = f(9).split(enc.component)
    return Header(
        enc,
        f(3),
        f(4),
        f(5),
        f(6),
        f(10).split(enc.component)[0],
        f(11).split(enc.component)[0] or "P",
        f(12).split(enc.component)[0] or "2.5.1",
        msg_type[1] if len(msg_type) > 1 else "",
        f(15),
        f(16),
        msg_type[0],
    )


def _first_msh(raw: str | bytes) -> str:
    """The MSH line of a message (fast when the message starts with it, as nearly all do)."""
    head = raw[:3]
    if head in ("MSH", b"MSH"):
        if isinstance(raw, bytes):
            end = min((i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0), default=len(raw))
            first = raw[:end]
            try:
                return decode(first)
            except FhirError:
                return first.decode("latin-1")
        end = min((i for i in (raw.find("\r"), raw.find("\n")) if i >= 0), default=len(raw))
        return raw[:end]
    try:
        text = decode(raw)
    except FhirError:
        text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    lines = segment_lines(text)
    return next((ln for ln in lines if ln.startswith("MSH")), "")


def _raw_field(seg: object, n: int, enc: Encoding) -> str:
    from hub.hl7.parse import Segment

    assert isinstance(seg, Segment)
    reps = seg.field(n)
    if not reps:
        return ""
    return enc.component.join(enc.subcomponent.join(escape(s, enc) for s in comp) for comp in reps[0])


def build_ack(
    original: str | bytes | Message | Header | None,
    code: str,
    *,
    control_id: str,
    timestamp: str,
    error: Exception | None = None,
    text: str | None = None,
    sending_application: str | None = None,
    sending_facility: str | None = None,
) -> str:
    """One ACK message (segments joined by CR, trailing CR).

    ``code`` is the MSA-1 value (AA, AE, AR, CA, CE, CR).  ``control_id`` and
    ``timestamp`` (v2 DTM, e.g. ``20240101120000+0000``) are given by the caller
    so the function stays pure.  ``sending_*`` override the swapped MSH-5/6.
    """
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise ValueError(f"bad acknowledgment code {code!r}")
    h = original if isinstance(original, Header) else read_header(original)
    enc = h.encoding
    fs = enc.field
    trigger = h.trigger
    msh = fs.join(
        [
            "MSH",
            enc.msh2,
            sending_application if sending_application is not None else h.receiving_application,
            sending_facility if sending_facility is not None else h.receiving_facility,
            h.sending_application,
            h.sending_facility,
            timestamp,
            "",
            enc.component.join(["ACK", trigger, "ACK"])
            if trigger
            else enc.component.join(["ACK", "", "ACK"]),
            escape(control_id, enc),
            h.processing_id,
            h.version,
        ]
    )
    msa_text = escape(text, enc) if text else ""
    if error is not None and not msa_text:
        msa_text = escape(_safe_text(error), enc)
    msa = fs.join(["MSA", code, escape(h.control_id, enc), msa_text]).rstrip(fs)
    segments = [msh.rstrip(fs), msa]
    if error is not None and code not in ("AA", "CA"):
        segments.append(err_segment(error, enc))
    return "\r".join(segments) + "\r"


def ack_code_for(error: Exception | None, *, enhanced: bool = False, accept: bool = False) -> str:
    """MSA-1 for an outcome: AA/AE/AR (or CA/CE/CR for the enhanced-mode accept ACK)."""
    if error is None:
        code = "AA"
    elif isinstance(error, FhirError):
        code = CATEGORIES[error.category].ack_code
    else:
        code = "AR"
    return ACCEPT_CODES[code] if enhanced and accept else code


def err_segment(error: Exception, enc: Encoding = DEFAULT_ENCODING) -> str:
    """ERR: ERR-2 location, ERR-3 table 0357 code, ERR-4 severity, ERR-8 user message."""
    fs, cs = enc.field, enc.component
    if isinstance(error, Hl7Error):
        location = error.location or ""
        hl7_code = error.hl7_code
        severity = error.severity
        diag = error.code
    elif isinstance(error, FhirError):
        location, hl7_code, severity, diag = "", "207", "E", error.code
    else:
        location, hl7_code, severity, diag = "", "207", "E", "HL7-INTERNAL"
    loc = cs.join(escape(p, enc) for p in location.split("^")) if location else ""
    code = cs.join([hl7_code, escape(TABLE_0357.get(hl7_code, ""), enc), "HL70357"])
    # ERR-1 (v2.3 style) left empty; ERR-5 application error code = our stable code
    fields = [
        "ERR",
        "",
        loc,
        code,
        severity,
        cs.join([escape(diag, enc), "", "fhirhub"]),
        "",
        "",
        escape(_safe_text(error), enc),
    ]
    return fs.join(fields).rstrip(fs)


_SAFE = re.compile(r"[^A-Za-z0-9 ._:;,()/^\-\[\]]")


def _safe_text(error: Exception) -> str:
    """Error text for ACKs: our messages never carry patient values; trimmed anyway."""
    msg = error.message if isinstance(error, FhirError) else type(error).__name__
    return _SAFE.sub("", msg)[:200]
