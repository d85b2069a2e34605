"""Value normalisation shared by indexing and querying: hashes, strings, dates, numbers, references.

Both sides must agree byte for byte, so every rule lives here once.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from hashlib import blake2b

from hub.search.paths import RESOURCE_TYPES

#: open ends of a date range (microseconds); far outside any real date yet inside BIGINT
DATE_MIN = -(2**62)
DATE_MAX = 2**62
#: open ends of a number/quantity range
NUM_MIN = -1e300
NUM_MAX = 1e300
#: index columns holding normalised strings are cut to this many characters
STRING_LEN = 255
URI_LEN = 512


def h64(*parts: str) -> int:
    """A signed 64-bit hash of the parts (HAPI's hash_identity idea)."""
    return int.from_bytes(
        blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
        "big",
        signed=True,
    )


@lru_cache(maxsize=65536)
def hash_code(ident: int, code: str) -> int:
    return h64(str(ident), code)


@lru_cache(maxsize=65536)
def hash_sys(ident: int, system: str | None) -> int:
    return h64(str(ident), system or "")


@lru_cache(maxsize=65536)
def hash_sys_code(ident: int, system: str | None, code: str) -> int:
    return h64(str(ident), system or "", code)


#: letters with no decomposition, folded to their base letters (Ærø -> aero, Łódź -> lodz)
_FOLD = str.maketrans({"æ": "ae", "ø": "o", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})


def normalize(s: str) -> str:
    """Case- and accent-insensitive form: NFKD, drop combining marks, casefold, fold æ ø œ ł đ ð þ ı."""
    if s.isascii():
        return s.lower()
    decomposed = unicodedata.normalize("NFKD", s)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold().translate(_FOLD)


def prefix_upper(p: str) -> str | None:
    """The smallest string greater than every string starting with ``p`` (code-point order), or None."""
    chars = list(p)
    while chars:
        c = ord(chars[-1])
        if c < 0x10FFFF:
            n = c + 1
            if 0xD800 <= n <= 0xDFFF:
                n = 0xE000
            chars[-1] = chr(n)
            return "".join(chars)
        chars.pop()
    return None


def like_escape(s: str) -> str:
    """Escape LIKE wildcards; the pattern is always used with ESCAPE '\\'."""
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --------------------------------------------------------------------------- dates
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,
)
_EPOCH_DAYS = 719163  # date(1970, 1, 1).toordinal()


def _micros(y: int, mo: int, d: int, hh: int = 0, mi: int = 0, ss: int = 0, us: int = 0) -> int:
    days = _days(y, mo, d)
    return ((days * 24 + hh) * 60 + mi) * 60_000_000 + ss * 1_000_000 + us


def _days(y: int, mo: int, d: int) -> int:
    # days since 1970-01-01 (proleptic Gregorian) without datetime's range checks
    a = (14 - mo) // 12
    yy = y + 4800 - a
    mm = mo + 12 * a - 3
    jdn = d + (153 * mm + 2) // 5 + 365 * yy + yy // 4 - yy // 100 + yy // 400 - 32045
    return jdn - 2440588


def parse_date_range(text: str) -> tuple[int, int] | None:
    """[low, high] in µs UTC of a FHIR date/dateTime/instant, by its precision; None if malformed.

    ``2020`` is the whole year, ``2020-03`` the month, ``2020-03-04T10:00`` the
    minute, ``...:00.5`` a tenth of a second. Without a zone, UTC.
    """
    m = _DATE_RE.match(text)
    if not m:
        return None
    y = int(m["y"])
    mo = int(m["m"]) if m["m"] else None
    d = int(m["d"]) if m["d"] else None
    if mo is not None and not 1 <= mo <= 12:
        return None
    if d is not None:
        assert mo is not None
        if not 1 <= d <= calendar.monthrange(max(y, 1), mo)[1]:
            return None
    if m["H"] is None:
        if mo is None:
            return _micros(y, 1, 1), _micros(y + 1, 1, 1) - 1
        if d is None:
            ny, nm = (y + 1, 1) if mo == 12 else (y, mo + 1)
            return _micros(y, mo, 1), _micros(ny, nm, 1) - 1
        lo = _micros(y, mo, d)
        return lo, lo + 86_400_000_000 - 1
    assert mo is not None and d is not None
    hh, mi = int(m["H"]), int(m["M"])
    ss = int(m["S"]) if m["S"] else 0
    if hh > 24 or mi > 59 or ss > 60 or (hh == 24 and (mi or ss)):
        return None
    ss = min(ss, 59)
    frac = m["f"] or ""
    us = int((frac + "000000")[:6]) if frac else 0
    if m["S"] is None:
        width = 60_000_000
    elif not frac:
        width = 1_000_000
    else:
        width = 10 ** max(0, 6 - len(frac))
    offset = 0
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        th, tm = int(tz[1:3]), int(tz[4:6])
        if th > 14 or tm > 59:
            return None
        offset = sign * (th * 60 + tm) * 60_000_000
    lo = _micros(y, mo, d, hh, mi, ss, us) - offset
    return lo, lo + width - 1


def micros_to_instant(us: int) -> str:
    """µs since the epoch -> an ISO instant (UTC, microseconds)."""
    days, rem = divmod(us, 86_400_000_000)
    from datetime import date

    dt = date.fromordinal(days + _EPOCH_DAYS)
    secs, micro = divmod(rem, 1_000_000)
    hh, rest = divmod(secs, 3600)
    mi, ss = divmod(rest, 60)
    return f"{dt.isoformat()}T{hh:02d}:{mi:02d}:{ss:02d}.{micro:06d}Z"


# --------------------------------------------------------------------------- numbers
def parse_decimal(text: str) -> Decimal | None:
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text, re.ASCII):
        return None
    try:
        d = Decimal(text)
    except InvalidOperation:
        return None
    if not d.is_finite() or abs(d) > Decimal("1e290"):
        return None
    return d


def implicit_range(d: Decimal) -> tuple[float, float]:
    """The precision range of a search number: ``100`` -> [99.5, 100.5), ``1.50`` -> [1.495, 1.505)."""
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    half = Decimal(5).scaleb(exp - 1)
    return float(d - half), float(d + half)


# --------------------------------------------------------------------------- references
_REL_RE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def split_reference(text: str) -> tuple[str | None, str] | None:
    """('Patient', '123') for a local reference, (None, url) for an absolute/canonical one, None to skip."""
    if not text or text.startswith("#"):
        return None
    m = _REL_RE.match(text)
    if m:
        if m.group(1) in RESOURCE_TYPES:
            return m.group(1), m.group(2)
        return None
    if ":" in text:  # absolute URL, urn:uuid:, urn:oid:, canonical
        return None, text[:URI_LEN]
    return None
