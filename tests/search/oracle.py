"""An independent oracle for search results.

It evaluates a parameter's FHIRPath expression (read straight from
``profiles/search-parameters.json``) with fhirpathpy over the JSON the test
loaded, then decides a match with plain Python written for the test: its own
string normalisation, its own date-range arithmetic on ``datetime``. Nothing
here imports the engine, the indexer or their helpers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


@cache
def _definitions() -> list[dict[str, Any]]:
    bundle = json.loads((PROFILES / "search-parameters.json").read_bytes())
    return [e["resource"] for e in bundle["entry"]]


def definition(res_type: str, code: str) -> dict[str, Any]:
    for sp in _definitions():
        if sp["code"] == code and (
            res_type in sp["base"] or {"Resource", "DomainResource"} & set(sp["base"])
        ):
            return sp
    raise KeyError((res_type, code))


def _resolve(inputs: list[Any]) -> list[Any]:
    out = []
    for r in inputs:
        ref = r.get("reference") if isinstance(r, dict) else None
        if isinstance(ref, str):
            m = re.search(r"([A-Z][A-Za-z]+)/[^/]+(/_history/[^/]+)?$", ref)
            if m:
                out.append(ResourceNode.create_node({"resourceType": m.group(1)}))
    return out


_OPTIONS = {"userInvocationTable": {"resolve": {"fn": _resolve, "arity": {0: []}}}}


@cache
def _compiled(res_type: str, code: str) -> Callable[..., list[Any]]:
    expr = definition(res_type, code)["expression"]
    expr = re.sub(r"\b(?:DomainResource|Resource)\.", f"{res_type}.", expr)
    # "X as T" must be singleton in FHIRPath; search servers treat it as a filter
    expr = re.sub(r"\(([^()]*?) as (\w+)\)", r"(\1.ofType(\2))", expr)
    expr = re.sub(r"\.as\((\w+)\)", r".ofType(\1)", expr)
    return fhirpathpy.compile(expr, models["r4"], _OPTIONS)


def values(resource: dict[str, Any], code: str) -> list[Any]:
    return [v for v in _compiled(resource["resourceType"], code)(resource) if v is not None]


def expected(
    corpus: Iterable[dict[str, Any]], res_type: str, code: str, pred: Callable[[list[Any]], bool]
) -> set[str]:
    return {r["id"] for r in corpus if r["resourceType"] == res_type and pred(values(r, code))}


# ----------------------------------------------------------------------- strings
# letters that carry no combining mark yet are matched as their base letters
_LETTERS = {"æ": "ae", "ø": "o", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"}


def norm(s: str) -> str:
    folded = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).casefold()
    return "".join(_LETTERS.get(c, c) for c in folded)


def strings(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    out: list[str] = []
    if isinstance(v, dict):
        for k in (
            "family",
            "given",
            "prefix",
            "suffix",
            "text",
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
        ):
            x = v.get(k)
            out.extend([x] if isinstance(x, str) else [s for s in x or [] if isinstance(s, str)])
    return out


def starts(q: str) -> Callable[[list[Any]], bool]:
    return lambda vals: any(norm(s).startswith(norm(q)) for v in vals for s in strings(v))


def contains(q: str) -> Callable[[list[Any]], bool]:
    return lambda vals: any(norm(q) in norm(s) for v in vals for s in strings(v))


def exact(q: str) -> Callable[[list[Any]], bool]:
    return lambda vals: any(s == q for v in vals for s in strings(v))


# ----------------------------------------------------------------------- tokens
def codings(v: Any) -> list[tuple[str | None, str]]:
    if isinstance(v, bool):
        return [(None, str(v).lower())]
    if isinstance(v, str):
        return [(None, v)]
    if isinstance(v, dict):
        if "coding" in v:
            return [(c.get("system"), c["code"]) for c in v["coding"] if "code" in c]
        if "value" in v:
            return [(v.get("system"), str(v["value"]))]
        if "code" in v:
            return [(v.get("system"), v["code"])]
    return []


def token(system: str | None, code: str | None) -> Callable[[list[Any]], bool]:
    """system None: any; '' : none; code None: any."""

    def pred(vals: list[Any]) -> bool:
        for v in vals:
            for s, c in codings(v):
                if (system is None or (s or "") == system) and (code is None or c == code):
                    return True
        return False

    return pred


# ----------------------------------------------------------------------- references
def refs(v: Any) -> list[str]:
    if isinstance(v, dict) and isinstance(v.get("reference"), str):
        return [re.sub(r"/_history/[^/]+$", "", v["reference"])]
    if isinstance(v, str):
        return [v]
    return []


def ref_to(target: str) -> Callable[[list[Any]], bool]:
    return lambda vals: any(
        r == target or r.endswith("/" + target) and "://" not in r for v in vals for r in refs(v)
    )


# ----------------------------------------------------------------------- dates
def date_range(s: str) -> tuple[datetime, datetime]:
    """[start, end) of a FHIR date/dateTime by its precision, UTC when no zone is given."""
    m = re.fullmatch(
        r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?", s
    )
    assert m, s
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    if mo is None:
        return datetime(int(y), 1, 1, tzinfo=UTC), datetime(int(y) + 1, 1, 1, tzinfo=UTC)
    if d is None:
        start = datetime(int(y), int(mo), 1, tzinfo=UTC)
        end = datetime(int(y) + (int(mo) == 12), int(mo) % 12 + 1, 1, tzinfo=UTC)
        return start, end
    if hh is None:
        start = datetime(int(y), int(mo), int(d), tzinfo=UTC)
        return start, start + timedelta(days=1)
    zone = UTC if tz in (None, "Z") else datetime.strptime(tz.replace(":", ""), "%z").tzinfo
    micro = int(((frac or ".")[1:] + "000000")[:6]) if frac else 0
    start = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), micro, tzinfo=zone).astimezone(
        UTC
    )
    if ss is None:
        width = timedelta(minutes=1)
    elif not frac:
        width = timedelta(seconds=1)
    else:
        width = timedelta(microseconds=10 ** max(0, 6 - (len(frac) - 1)))
    return start, start + width


MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, tzinfo=UTC)


def value_ranges(v: Any) -> list[tuple[datetime, datetime]]:
    if isinstance(v, str):
        return [date_range(v)]
    if isinstance(v, dict) and ("start" in v or "end" in v):
        s = date_range(v["start"])[0] if "start" in v else MIN
        e = date_range(v["end"])[1] if "end" in v else MAX
        return [(s, e)]
    return []


def date_pred(prefix: str, q: str) -> Callable[[list[Any]], bool]:
    """The R4 prefix semantics, written out on half-open datetime ranges."""
    ql, qh = date_range(q)

    def one(lo: datetime, hi: datetime) -> bool:
        inside = lo >= ql and hi <= qh
        return {
            "eq": inside,
            "ne": not inside,
            "gt": hi > qh,
            "lt": lo < ql,
            "ge": hi > qh or inside,
            "le": lo < ql or inside,
            "sa": lo >= qh,
            "eb": hi <= ql,
        }[prefix]

    return lambda vals: any(one(lo, hi) for v in vals for lo, hi in value_ranges(v))


# ----------------------------------------------------------------------- quantities
def amounts(v: Any) -> list[tuple[Decimal | None, Decimal | None, dict[str, Any]]]:
    if isinstance(v, dict) and ("low" in v or "high" in v):
        lo = v.get("low", {}).get("value")
        hi = v.get("high", {}).get("value")
        return [
            (
                None if lo is None else Decimal(str(lo)),
                None if hi is None else Decimal(str(hi)),
                v.get("low") or v.get("high"),
            )
        ]
    if isinstance(v, dict) and "value" in v:
        d = Decimal(str(v["value"]))
        return [(d, d, v)]
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        d = Decimal(str(v))
        return [(d, d, {})]
    return []


def number_pred(
    prefix: str, q: str, system: str | None = None, code: str | None = None
) -> Callable[[list[Any]], bool]:
    qd = Decimal(q)
    half = Decimal(5).scaleb(qd.as_tuple().exponent - 1)  # type: ignore[operator]
    neg_inf, pos_inf = Decimal("-1e300"), Decimal("1e300")

    def one(lo: Decimal | None, hi: Decimal | None, q_: dict[str, Any]) -> bool:
        if system is not None and q_.get("system") != system:
            return False
        if code is not None and code not in (q_.get("code"), None if system else q_.get("unit")):
            return False
        lo_ = neg_inf if lo is None else lo
        hi_ = pos_inf if hi is None else hi
        return {
            "eq": lo_ >= qd - half and hi_ < qd + half,
            "ne": not (lo_ >= qd - half and hi_ < qd + half),
            "gt": hi_ > qd,
            "lt": lo_ < qd,
            "ge": hi_ >= qd,
            "le": lo_ <= qd,
            "sa": lo_ > qd,
            "eb": hi_ < qd,
        }[prefix]

    return lambda vals: any(one(lo, hi, q_) for v in vals for lo, hi, q_ in amounts(v))
