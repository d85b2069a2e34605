"""Primitive datatype checks: JSON type, format regex, ranges.

The format regexes are the ones the R4 type definitions publish (the
``http://hl7.org/fhir/StructureDefinition/regex`` extension on each primitive's
``value`` element in profiles-types.json). They are XML Schema regexes, so two
adjustments are made before compiling them with :mod:`re`:

* they are implicitly anchored (matched with :func:`re.fullmatch`);
* ``\\s``/``\\S`` mean XML whitespace (space, tab, CR, LF) only, not Python's
  Unicode whitespace, so they are rewritten into explicit classes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# JSON shapes a primitive may take
JSON_STRING = 0
JSON_BOOL = 1
JSON_INT = 2  # integer, unsignedInt, positiveInt: a JSON number without fraction
JSON_NUMBER = 3  # decimal

PRIMITIVE_JSON: dict[str, int] = {
    "boolean": JSON_BOOL,
    "integer": JSON_INT,
    "unsignedInt": JSON_INT,
    "positiveInt": JSON_INT,
    "decimal": JSON_NUMBER,
}

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
# XML Schema: minimally conforming processors support 18 decimal digits; R4
# (datatypes.html, decimal) says "the limits documented in XML Schema apply".
DECIMAL_MAX_DIGITS = 18
STRING_MAX_LENGTH = 1024 * 1024  # string.value maxLength in profiles-types.json

_XML_WS = " \\t\\n\\r"


def xml_regex_to_python(rx: str) -> str:
    """Rewrite ``\\s``/``\\S`` of an XML Schema regex into explicit classes."""
    out: list[str] = []
    in_class = False
    i = 0
    n = len(rx)
    while i < n:
        c = rx[i]
        if c == "\\" and i + 1 < n:
            nxt = rx[i + 1]
            if nxt == "s":
                out.append(_XML_WS if in_class else f"[{_XML_WS}]")
            elif nxt == "S":
                # everything but the four XML whitespace characters
                out.append(
                    "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x21-\\U0010ffff" if in_class else f"[^{_XML_WS}]"
                )
            else:
                out.append(rx[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _valid_calendar_date(value: str) -> bool:
    """Day-of-month check for the date part of date/dateTime/instant (regex checked already)."""
    if len(value) < 10 or value[7] != "-":
        return True  # year or year-month only
    year = int(value[0:4])
    month = int(value[5:7])
    day = int(value[8:10])
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS[month - 1]


def decimal_digits_ok(value: int | float) -> bool:
    """The 18 digit limit: at most 18 significant digits and an integer part of at most 18 digits.

    Applied to magnitude and precision rather than to positional digits, so that a binary
    double written in shortest form (at most 17 significant digits, e.g. 0.0028559013093633016)
    is never rejected for its leading zeros.
    """
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        return False
    if not d.is_finite():
        return False
    if d == 0:
        return True
    digits = d.normalize().as_tuple().digits
    return len(digits) <= DECIMAL_MAX_DIGITS and d.adjusted() < DECIMAL_MAX_DIGITS


@dataclass(frozen=True, slots=True)
class PrimType:
    """Compiled rules for one primitive type."""

    name: str
    json: int
    match: Callable[[str], object] | None  # compiled fullmatch, None when there is no regex
    is_date: bool  # date/dateTime/instant: also check the calendar


def build_primitive(name: str, regex: str | None) -> PrimType:
    match = re.compile(xml_regex_to_python(regex)).fullmatch if regex else None
    return PrimType(
        name=name,
        json=PRIMITIVE_JSON.get(name, JSON_STRING),
        match=match,
        is_date=name in ("date", "dateTime", "instant"),
    )


def check_primitive(pt: PrimType, value: object) -> str | None:
    """Return a description of what is wrong with ``value`` (never echoing it), or None."""
    kind = pt.json
    if kind == JSON_STRING:
        if type(value) is not str:
            return f"a {pt.name} must be a JSON string"
        if not value:
            return "a primitive value cannot be an empty string"
        if len(value) > STRING_MAX_LENGTH:
            return f"a {pt.name} exceeds the maximum length of {STRING_MAX_LENGTH} characters"
        if pt.name == "base64Binary":
            return None if base64_ok(value) else "not a valid base64Binary value"
        if pt.match is not None and pt.match(value) is None:
            return f"does not match the format of the {pt.name} type"
        if pt.is_date and not _valid_calendar_date(value):
            return f"not a valid calendar {pt.name}"
        return None
    if kind == JSON_BOOL:
        if type(value) is not bool:
            return "a boolean must be the JSON literal true or false"
        return None
    if kind == JSON_INT:
        if type(value) is not int:
            if type(value) is float:
                return f"an {pt.name} must be a whole number without a decimal point"
            return f"an {pt.name} must be a JSON number"
        if value < INT32_MIN or value > INT32_MAX:
            return f"an {pt.name} must be a 32-bit signed integer"
        if pt.name == "unsignedInt" and value < 0:
            return "an unsignedInt must not be negative"
        if pt.name == "positiveInt" and value < 1:
            return "a positiveInt must be greater than zero"
        return None
    # decimal
    if type(value) is not int and type(value) is not float:
        return "a decimal must be a JSON number"
    if not decimal_digits_ok(value):
        return f"a decimal must not have more than {DECIMAL_MAX_DIGITS} digits"
    return None


_B64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}").fullmatch
_B64_WS = str.maketrans("", "", " \t\r\n")


def base64_ok(value: str) -> bool:
    """base64Binary: R4 regex ``(\\s*([0-9a-zA-Z\\+/=]){4}\\s*)+`` plus padding placement.

    Checked without the nested-quantifier regex so that megabyte payloads stay linear.
    """
    s = (
        value.translate(_B64_WS)
        if (" " in value or "\n" in value or "\r" in value or "\t" in value)
        else value
    )
    return bool(s) and len(s) % 4 == 0 and _B64_CHARS(s) is not None


def base64_decoded_length(value: str) -> int:
    s = value.translate(_B64_WS)
    return len(s) // 4 * 3 - (len(s) - len(s.rstrip("=")))
