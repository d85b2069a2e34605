"""HL7v2 parsing for the hot path.

Measured on this machine (see ``tests/hl7/test_parse.py::test_parser_speed_report``
and the closing note of issue 6): python-hl7 parses a 3-segment ADT in about
0.5 ms and hl7apy in about 20 ms, so python-hl7 (``hl7`` on PyPI) tokenizes
every inbound message.  hl7apy is only used where its schema helps
(validating outbound messages in tests).

What this module adds on top of python-hl7:

* segment separators ``\\r``, ``\\n`` and ``\\r\\n`` (and mixtures);
* strict checks of MSH-1/MSH-2 (custom encoding characters are honoured);
* escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\``) decoded per leaf value;
* a uniform view: field -> repetitions -> components -> subcomponents;
* typed errors (:class:`hub.hl7.errors.Hl7Error`, code ``HL7-PARSE-*``);
* :func:`split_messages` for streams and batch/file envelopes (FHS/BHS/BTS/FTS).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hl7 as pyhl7

from hub.hl7.errors import E_DATA_TYPE, E_REQUIRED_FIELD, E_SEGMENT_SEQUENCE, Hl7Error, parse_error

# A repetition: tuple of components, each a tuple of subcomponents (decoded strings).
Rep = tuple[tuple[str, ...], ...]

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_NEWLINES = re.compile(r"\r\n|\n\r|\n|\r")
_ENVELOPE = {"FHS", "BHS", "BTS", "FTS"}
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
}


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_ENCODING = Encoding()


def unescape(value: str, enc: Encoding) -> str:
    """Decode HL7 escape sequences in one leaf value."""
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # lone escape char: keep literally
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append(enc.field)
        elif seq == "S":
            out.append(enc.component)
        elif seq == "T":
            out.append(enc.subcomponent)
        elif seq == "R":
            out.append(enc.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq == "P" and enc.truncation:
            out.append(enc.truncation)
        elif seq == ".br":
            out.append("\n")
        elif seq[:1] == "X" and len(seq) > 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("utf-8", errors="replace"))
            except ValueError:
                out.append(esc + seq + esc)
        elif seq in ("H", "N") or seq[:1] in (".", "C", "M", "Z"):
            pass  # highlighting / formatting / charset switches: dropped
        else:
            out.append(esc + seq + esc)
    return "".join(out)


def escape(value: str, enc: Encoding = DEFAULT_ENCODING) -> str:
    """Encode a plain value for use inside a field (outbound)."""
    if not value:
        return value
    esc = enc.escape
    out = value.replace(esc, f"{esc}E{esc}")
    out = out.replace(enc.field, f"{esc}F{esc}").replace(enc.component, f"{esc}S{esc}")
    out = out.replace(enc.subcomponent, f"{esc}T{esc}").replace(enc.repetition, f"{esc}R{esc}")
    return (
        out.replace("\r\n", f"{esc}.br{esc}").replace("\n", f"{esc}.br{esc}").replace("\r", f"{esc}.br{esc}")
    )


class Segment:
    """One segment. Field numbers follow HL7 (``MSH-1`` is the field separator)."""

    __slots__ = ("name", "index", "occurrence", "_raw", "_enc", "_cache")

    def __init__(self, name: str, index: int, occurrence: int, raw: Any, enc: Encoding) -> None:
        self.name = name
        self.index = index  # position in the message, 0-based
        self.occurrence = occurrence  # 1-based among segments with this id
        self._raw = raw
        self._enc = enc
        self._cache: dict[int, tuple[Rep, ...]] = {}

    def __repr__(self) -> str:  # no values: PHI
        return f"<Segment {self.name}#{self.occurrence}>"

    def __len__(self) -> int:
        return len(self._raw) - 1

    def field(self, n: int) -> tuple[Rep, ...]:
        """All repetitions of field ``n`` (empty tuple if absent or empty)."""
        hit = self._cache.get(n)
        if hit is not None:
            return hit
        if (
            isinstance(self._raw, list)
            and (not self._raw or isinstance(self._raw[0], str))
            and not isinstance(self._raw, pyhl7.Segment)
        ):
            reps = self._split_field(n)
            self._cache[n] = reps
            return reps
        reps = ()
        raw = self._raw
        if self.name == "MSH" and n in (1, 2):
            if n < len(raw):
                reps = ((("".join(str(x) for x in raw[n]),),),)
        elif 0 < n < len(raw):
            f = raw[n]
            enc = self._enc
            if isinstance(f, str):
                reps = (((unescape(f, enc),),),) if f and f != '""' else ()
            elif f and not isinstance(f[0], str):
                out: list[Rep] = []
                for r in f:
                    rep: Rep = (
                        ((unescape(r, enc),),)
                        if isinstance(r, str)
                        else tuple(
                            (unescape(c, enc),) if isinstance(c, str) else tuple(unescape(x, enc) for x in c)
                            for c in r
                        )
                    )
                    if any(x and x != '""' for c in rep for x in c):
                        out.append(rep)
                reps = tuple(out)
            else:
                txt = "".join(f)
                reps = (((unescape(txt, enc),),),) if txt and txt != '""' else ()
        self._cache[n] = reps
        return reps

    def _split_field(self, n: int) -> tuple[Rep, ...]:
        """The "split" backend: ``_raw`` is the list of field strings of the line."""
        fields: list[str] = self._raw
        enc = self._enc
        if self.name == "MSH":
            if n == 1:
                return (((enc.field,),),)
            if n == 2:
                return (((fields[1],),),) if len(fields) > 1 else ()
            idx = n - 1
        else:
            idx = n
        if idx <= 0 or idx >= len(fields):
            return ()
        text = fields[idx]
        if not text or text == '""':
            return ()
        out: list[Rep] = []
        for rtext in text.split(enc.repetition):
            rep = tuple(
                tuple(unescape(sub, enc) for sub in ctext.split(enc.subcomponent))
                for ctext in rtext.split(enc.component)
            )
            if any(x and x != '""' for c in rep for x in c):
                out.append(rep)
        return tuple(out)

    def rep(self, n: int, r: int = 0) -> Rep | None:
        reps = self.field(n)
        return reps[r] if r < len(reps) else None

    def value(self, n: int, comp: int = 1, sub: int = 1, r: int = 0) -> str:
        rep = self.rep(n, r)
        return component(rep, comp, sub) if rep is not None else ""

    def has(self, n: int) -> bool:
        return bool(self.field(n))


def component(rep: Rep | None, comp: int = 1, sub: int = 1) -> str:
    if rep is None or comp < 1 or comp > len(rep):
        return ""
    c = rep[comp - 1]
    if sub < 1 or sub > len(c):
        return ""
    return c[sub - 1]


def rep_text(rep: Rep | None) -> str:
    """All non-empty leaves of a repetition (for existence checks)."""
    if rep is None:
        return ""
    return "".join(s for c in rep for s in c)


@dataclass
class Message:
    segments: list[Segment]
    encoding: Encoding
    warnings: list[str] = field(default_factory=list)

    def first(self, name: str) -> Segment | None:
        for s in self.segments:
            if s.name == name:
                return s
        return None

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def message_code(self) -> str:
        return self.msh.value(9, 1)

    @property
    def trigger(self) -> str:
        return self.msh.value(9, 2)

    @property
    def structure(self) -> str:
        return self.msh.value(9, 3)

    @property
    def control_id(self) -> str:
        return self.msh.value(10)

    @property
    def version(self) -> str:
        return self.msh.value(12)

    @property
    def sending_application(self) -> str:
        return self.msh.value(3)

    @property
    def sending_facility(self) -> str:
        return self.msh.value(4)

    @property
    def receiving_application(self) -> str:
        return self.msh.value(5)

    @property
    def receiving_facility(self) -> str:
        return self.msh.value(6)


def decode(raw: str | bytes) -> str:
    """Bytes to text: MSH-18 decides; UTF-8 by default; invalid bytes are an error."""
    if isinstance(raw, str):
        return raw
    head = raw[:1024].split(b"\r", 1)[0].split(b"\n", 1)[0]
    codec = "utf-8"
    if head.startswith(b"MSH") and len(head) > 3:
        parts = head.split(head[3:4])
        if len(parts) > 17:
            cs = (
                parts[17]
                .decode("ascii", errors="replace")
                .split(head[4:5].decode("ascii", "replace") or "^")[0]
            )
            codec = _CHARSETS.get(cs.strip().upper(), "utf-8")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise parse_error(
            "CHARSET",
            f"message bytes are not valid {codec} (declare MSH-18, e.g. 8859/1)",
            location="MSH^1^18",
            hl7_code=E_DATA_TYPE,
        ) from None


def _encoding_from_msh(line: str) -> Encoding:
    if len(line) < 8:
        raise parse_error(
            "MSH", "MSH segment too short for MSH-1/MSH-2", location="MSH^1^2", hl7_code=E_REQUIRED_FIELD
        )
    fs = line[3]
    if fs.isalnum() or fs.isspace():
        raise parse_error(
            "ENCODING", "MSH-1 field separator is invalid", location="MSH^1^1", hl7_code=E_DATA_TYPE
        )
    end = line.find(fs, 4)
    enc_chars = line[4:] if end < 0 else line[4:end]
    if len(enc_chars) not in (4, 5):
        raise parse_error(
            "ENCODING",
            "MSH-2 must hold 4 (or 5) encoding characters",
            location="MSH^1^2",
            hl7_code=E_DATA_TYPE,
        )
    chars = fs + enc_chars
    if len(set(chars)) != len(chars) or any(c.isalnum() or c.isspace() for c in chars):
        raise parse_error(
            "ENCODING",
            "MSH-1/MSH-2 delimiters must be distinct non-alphanumeric characters",
            location="MSH^1^2",
            hl7_code=E_DATA_TYPE,
        )
    return Encoding(fs, enc_chars[0], enc_chars[1], enc_chars[2], enc_chars[3], enc_chars[4:5])


def segment_lines(text: str) -> list[str]:
    """Split on any newline convention; drop blank lines and MLLP framing bytes."""
    text = text.strip("\x0b\x1c\r\n \t\ufeff")
    return [ln for ln in _NEWLINES.split(text) if ln.strip()]


PARSERS = ("python-hl7", "split")


def parse(raw: str | bytes, *, parser: str = "python-hl7") -> Message:
    """Parse exactly one message (must start with MSH).

    ``parser`` picks the tokenizer: ``python-hl7`` (default, chosen over hl7apy by
    measurement) or ``split`` (plain ``str.split``, lazy per field; same result,
    see ``tests/hl7/test_parse.py::test_split_parser_is_equivalent``).
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}")
    text = decode(raw)
    lines = segment_lines(text)
    if not lines:
        raise parse_error("EMPTY", "empty message", hl7_code=E_SEGMENT_SEQUENCE)
    first = lines[0][:3]
    if first in _ENVELOPE:
        raise parse_error(
            "BATCH",
            f"{first} batch/file envelope: send the messages one by one (split_messages)",
            location=f"{first}^1",
        )
    if first != "MSH":
        raise parse_error("NO-MSH", "message does not start with an MSH segment", location="MSH^1")
    enc = _encoding_from_msh(lines[0])
    counts: dict[str, int] = {}
    for i, ln in enumerate(lines):
        name = ln[:3]
        if not _SEGMENT_ID.match(name) or (len(ln) > 3 and ln[3] != enc.field):
            raise parse_error(
                "SEGMENT",
                f"segment {i + 1} has no valid segment id",
                location=f"{name if _SEGMENT_ID.match(name) else '???'}^{counts.get(name, 0) + 1}",
            )
        if i and name == "MSH":
            raise parse_error(
                "MULTIPLE",
                "more than one MSH: send the messages one by one (split_messages)",
                location="MSH^2",
            )
        if name in _ENVELOPE:
            raise parse_error("BATCH", f"{name} envelope segment inside a message", location=f"{name}^1")
        counts[name] = counts.get(name, 0) + 1
    segments: list[Segment] = []
    occ: dict[str, int] = {}
    if parser == "split":
        for i, ln in enumerate(lines):
            name = ln[:3]
            occ[name] = occ.get(name, 0) + 1
            segments.append(Segment(name, i, occ[name], ln.split(enc.field), enc))
    else:
        try:
            parsed = pyhl7.parse("\r".join(lines))
        except Exception as exc:  # python-hl7 raises assorted exceptions on broken input
            raise parse_error("SYNTAX", f"message could not be tokenized ({type(exc).__name__})") from None
        for i, seg in enumerate(parsed):
            name = str(seg[0][0]) if not isinstance(seg[0], str) else seg[0]
            occ[name] = occ.get(name, 0) + 1
            segments.append(Segment(name, i, occ[name], seg, enc))
    msg = Message(segments, enc)
    msh = msg.msh
    if not msh.value(9, 1):
        raise parse_error(
            "MSH-9", "MSH-9 message type is missing", location="MSH^1^9", hl7_code=E_REQUIRED_FIELD
        )
    if not msh.value(10):
        raise parse_error(
            "MSH-10", "MSH-10 message control id is missing", location="MSH^1^10", hl7_code=E_REQUIRED_FIELD
        )
    return msg


def split_messages(raw: str | bytes) -> list[str]:
    """Split a stream, batch or file into single messages (each starting with MSH).

    FHS/BHS/BTS/FTS envelope segments are dropped, nesting is checked.  Text
    before the first MSH other than envelope headers is an error, as is a
    batch header that appears after a message started.
    """
    text = decode(raw)
    lines = segment_lines(text)
    messages: list[list[str]] = []
    open_env: list[str] = []
    for ln in lines:
        name = ln[:3]
        if name in ("FHS", "BHS"):
            if name == "FHS" and (open_env or messages):
                raise parse_error("BATCH", "FHS after the file started", location="FHS^1")
            if name == "BHS" and "BHS" in open_env:
                raise parse_error("BATCH", "BHS inside an open batch", location="BHS^1")
            open_env.append(name)
            continue
        if name in ("BTS", "FTS"):
            want = "BHS" if name == "BTS" else "FHS"
            if open_env and open_env[-1] == want:
                open_env.pop()
            # a trailer without its header is tolerated (as python-hl7 does)
            continue
        if name == "MSH":
            messages.append([ln])
            continue
        if not messages:
            raise parse_error("NO-MSH", "segment before the first MSH", location=f"{name}^1")
        messages[-1].append(ln)
    if (
        open_env
        and messages
        and any(e == "BHS" for e in open_env)
        and lines
        and lines[-1][:3] not in ("BTS", "FTS")
    ):
        # unterminated batch: tolerated (many senders omit BTS), messages stand
        pass
    if not messages:
        raise parse_error("NO-MSH", "no MSH segment found", location="MSH^1")
    return ["\r".join(m) + "\r" for m in messages]


def iter_messages(raw: str | bytes) -> Iterator[str]:
    yield from split_messages(raw)


def location(
    seg: Segment | str, occurrence: int = 1, field_no: int | None = None, comp: int | None = None
) -> str:
    """ERL location text ``SEG^seq^field^rep^comp``."""
    if isinstance(seg, Segment):
        name, occurrence = seg.name, seg.occurrence
    else:
        name = seg
    parts = [name, str(occurrence)]
    if field_no is not None:
        parts.append(str(field_no))
        if comp is not None:
            parts += ["1", str(comp)]
    return "^".join(parts)


__all__ = [
    "Encoding",
    "DEFAULT_ENCODING",
    "Hl7Error",
    "Message",
    "Rep",
    "Segment",
    "component",
    "decode",
    "escape",
    "location",
    "parse",
    "rep_text",
    "segment_lines",
    "split_messages",
    "unescape",
]
