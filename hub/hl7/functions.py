"""The closed vocabulary of functions a mapping file may name with ``fn:``.

Each function is pure: ``fn(run, ctx, value, **args)``.  ``value`` is what the
pipeline produced so far (a v2 value as a Rep, or a FHIR value built by a
datatype template); ``ctx.rep`` is the current v2 value.  Functions never log
and never put patient values in warnings or errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.hl7.errors import E_DATA_TYPE, mapping_error
from hub.hl7.parse import component

if TYPE_CHECKING:
    from hub.hl7.engine import Ctx, Run

Fn = Callable[..., Any]
FUNCTIONS: dict[str, Fn] = {}


def register(name: str) -> Callable[[Fn], Fn]:
    def deco(fn: Fn) -> Fn:
        FUNCTIONS[name] = fn
        return fn

    return deco


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return component(value, 1, 1)
    return str(value)


def _loc(run: Run, ctx: Ctx) -> str | None:
    return run.location_of(ctx, ctx.where)


# ------------------------------------------------------------------- dates

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4}|Z)?$")


def parse_dtm(text: str) -> tuple[list[int], str, str | None] | None:
    """Split a v2 DTM into parts; None when malformed."""
    m = _DTM.match(text.strip())
    if not m:
        return None
    parts = [int(g) for g in m.groups()[:6] if g is not None]
    frac = m.group(7) or ""
    tz = m.group(8)
    y = parts[0]
    mo = parts[1] if len(parts) > 1 else 1
    d = parts[2] if len(parts) > 2 else 1
    hh = parts[3] if len(parts) > 3 else 0
    mi = parts[4] if len(parts) > 4 else 0
    ss = parts[5] if len(parts) > 5 else 0
    try:
        datetime(y, mo, d, hh, mi, ss)
    except ValueError:
        return None
    if tz and tz != "Z" and (int(tz[1:3]) > 14 or int(tz[3:5]) > 59):
        return None
    return parts, frac, tz


def _tz_offset(run: Run, parts: list[int]) -> str:
    name = run.timezone
    if name in ("UTC", "Z", "utc"):
        return "Z"
    if re.match(r"^[+-]\d{2}:\d{2}$", name):
        return name
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "Z"
    full = [*parts, *[1, 1, 1, 0, 0, 0][len(parts) :]]
    local = datetime(full[0], full[1], full[2], full[3], full[4], full[5])
    off = zone.utcoffset(local) or timedelta(0)
    total = int(off.total_seconds() // 60)
    sign = "+" if total >= 0 else "-"
    total = abs(total)
    return f"{sign}{total // 60:02d}:{total % 60:02d}"


def _bad_dtm(run: Run, ctx: Ctx) -> Exception:
    return mapping_error(
        "DATATYPE", "malformed date/time value", location=_loc(run, ctx), hl7_code=E_DATA_TYPE
    )


def dtm_to_fhir(run: Run, text: str, *, kind: str, ctx: Ctx) -> str | None:
    if not text:
        return None
    parsed = parse_dtm(text)
    if parsed is None:
        raise _bad_dtm(run, ctx)
    parts, frac, tz = parsed
    ymd = f"{parts[0]:04d}"
    if len(parts) > 1:
        ymd += f"-{parts[1]:02d}"
    if len(parts) > 2:
        ymd += f"-{parts[2]:02d}"
    if kind == "date" or len(parts) <= 3:
        if kind == "instant":
            return None
        return ymd
    hh = parts[3]
    mi = parts[4] if len(parts) > 4 else 0
    ss = parts[5] if len(parts) > 5 else 0
    out = f"{ymd}T{hh:02d}:{mi:02d}:{ss:02d}{frac if len(parts) > 5 else ''}"
    if tz is None:
        out += _tz_offset(run, parts)
    elif tz == "Z":
        out += "Z"
    else:
        out += f"{tz[:3]}:{tz[3:]}"
    return out


@register("dtm_date")
def dtm_date(run: Run, ctx: Ctx, value: Any) -> str | None:
    """DTM -> FHIR date (precision kept, time dropped)."""
    return dtm_to_fhir(run, _s(value), kind="date", ctx=ctx)


@register("dtm_datetime")
def dtm_datetime(run: Run, ctx: Ctx, value: Any) -> str | None:
    """DTM -> FHIR dateTime; without an offset the mapping set's time zone applies."""
    return dtm_to_fhir(run, _s(value), kind="dateTime", ctx=ctx)


@register("dtm_instant")
def dtm_instant(run: Run, ctx: Ctx, value: Any) -> str | None:
    """DTM -> FHIR instant (needs at least minutes); date-only values give nothing."""
    return dtm_to_fhir(run, _s(value), kind="instant", ctx=ctx)


def fhir_to_datetime(text: str) -> datetime | None:
    try:
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def add_minutes(text: str, minutes: float) -> str:
    dt = fhir_to_datetime(text)
    if dt is None:
        return text
    out = dt + timedelta(minutes=minutes)
    s = out.isoformat()
    return s.replace("+00:00", "Z") if text.endswith("Z") else s


_UNIT_MINUTES = {
    "MIN": 1.0,
    "M": 1.0,
    "MINUTES": 1.0,
    "MINUTE": 1.0,
    "H": 60.0,
    "HR": 60.0,
    "HOUR": 60.0,
    "HOURS": 60.0,
    "S": 1 / 60,
    "SEC": 1 / 60,
    "SECONDS": 1 / 60,
    "D": 1440.0,
    "DAY": 1440.0,
    "DAYS": 1440.0,
}


def duration_minutes(amount: str, unit: str) -> float | None:
    try:
        n = float(amount)
    except ValueError:
        return None
    factor = _UNIT_MINUTES.get(unit.strip().upper() or "MIN")
    return n * factor if factor is not None else None


# -------------------------------------------------------------- scalars


@register("to_integer")
def to_integer(run: Run, ctx: Ctx, value: Any) -> int | None:
    s = _s(value).strip()
    if not s:
        return None
    try:
        return int(Decimal(s))
    except (InvalidOperation, ValueError):
        raise mapping_error(
            "DATATYPE", "not a number", location=_loc(run, ctx), hl7_code=E_DATA_TYPE
        ) from None


@register("to_positive_int")
def to_positive_int(run: Run, ctx: Ctx, value: Any) -> int | None:
    n = to_integer(run, ctx, value)
    return n if n is not None and n > 0 else None


@register("to_decimal")
def to_decimal(run: Run, ctx: Ctx, value: Any) -> float | int | None:
    s = _s(value).strip()
    if not s:
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise mapping_error(
            "DATATYPE", "not a number", location=_loc(run, ctx), hl7_code=E_DATA_TYPE
        ) from None
    return int(d) if d == d.to_integral_value() else float(d)


@register("yes_no")
def yes_no(run: Run, ctx: Ctx, value: Any) -> bool | None:
    s = _s(value).strip().upper()
    if s in ("Y", "YES", "T", "TRUE", "1"):
        return True
    if s in ("N", "NO", "F", "FALSE", "0"):
        return False
    return None


@register("text")
def text(run: Run, ctx: Ctx, value: Any) -> str | None:
    """First leaf of the value, stripped."""
    s = _s(value).strip()
    return s or None


@register("join")
def join(run: Run, ctx: Ctx, value: Any, components: list[int] | None = None, sep: str = " ") -> str | None:
    """Join components of the current value (all when ``components`` is not given)."""
    rep = value if isinstance(value, tuple) else ctx.rep
    if rep is None:
        return None
    idx = components or list(range(1, len(rep) + 1))
    parts = [" ".join(x for x in rep[i - 1] if x) for i in idx if 0 < i <= len(rep)]
    out = sep.join(p for p in parts if p)
    return out or None


@register("const_if_present")
def const_if_present(run: Run, ctx: Ctx, value: Any, value_: Any = None, **kw: Any) -> Any:
    """Returns ``args.value`` when the input is present (for fixed codes tied to a field)."""
    given = kw.get("value", value_)
    return given if _s(value) or isinstance(value, dict) else None


@register("with_default")
def with_default(
    run: Run, ctx: Ctx, value: Any, key: str = "", default: Any = None, override: bool = False
) -> Any:
    """Fill ``key`` of a built dict with ``default`` when empty (always, with ``override``)."""
    if isinstance(value, dict) and key and (override or not value.get(key)):
        return {**value, key: default}
    return value


@register("segment_sequence")
def segment_sequence(run: Run, ctx: Ctx, value: Any) -> int | None:
    """Occurrence number of the current segment (1-based)."""
    return ctx.seg.occurrence if ctx.seg is not None else None


@register("is_first_segment")
def is_first_segment(run: Run, ctx: Ctx, value: Any) -> bool | None:
    return ctx.seg.occurrence == 1 if ctx.seg is not None else None


@register("message_event")
def message_event(run: Run, ctx: Ctx, value: Any) -> str:
    return run.event


@register("control_id")
def control_id(run: Run, ctx: Ctx, value: Any) -> str:
    return run.msg.control_id


# ---------------------------------------------------------- identifiers


def system_for_authority(run: Run, namespace: str, universal: str = "", utype: str = "") -> str:
    systems = run.sender_systems
    for key in (namespace, universal, f"{namespace}&{universal}" if universal else ""):
        if key and key in systems:
            return systems[key]
    if universal and utype.upper() == "ISO" and re.match(r"^[0-2](\.(0|[1-9][0-9]*))+$", universal):
        return f"urn:oid:{universal}"
    if universal and utype.upper() == "UUID":
        return f"urn:uuid:{universal.lower()}"
    if universal and utype.upper() in ("URI", "URL"):
        return universal
    auth = namespace or universal
    return run.ms.settings.id_system_prefix + quote(auth, safe="")


@register("authority_system")
def authority_system(run: Run, ctx: Ctx, value: Any) -> str | None:
    """HD (namespace ^ universal id ^ type) -> identifier system URI via ``sender_systems``."""
    rep = value if isinstance(value, tuple) else ctx.rep
    ns, uni, typ = component(rep, 1), component(rep, 2), component(rep, 3)
    if not (ns or uni):
        return None
    return system_for_authority(run, ns, uni, typ)


@register("ei_system")
def ei_system(run: Run, ctx: Ctx, value: Any) -> str | None:
    """EI (id ^ namespace ^ universal ^ type) -> system of the assigning authority (or the sender's)."""
    rep = ctx.rep
    ns, uni, typ = component(rep, 2), component(rep, 3), component(rep, 4)
    if not (ns or uni):
        return sender_system(run, ctx, value)
    return system_for_authority(run, ns, uni, typ)


@register("sender_system")
def sender_system(run: Run, ctx: Ctx, value: Any) -> str:
    """Identifier system for values without an assigning authority: the sending facility's (else application's)."""
    msh = run.msg.msh
    fac = msh.rep(4)
    if fac is not None and (component(fac, 1) or component(fac, 2)):
        return system_for_authority(run, component(fac, 1), component(fac, 2), component(fac, 3))
    app = msh.rep(3)
    if app is not None and (component(app, 1) or component(app, 2)):
        return system_for_authority(run, component(app, 1), component(app, 2), component(app, 3))
    return run.ms.settings.id_system_prefix + "unknown"


@register("if_type")
def if_type(run: Run, ctx: Ctx, value: Any, types: list[str] | None = None) -> Any:
    """Keep an Identifier only when its type code is one of ``types``."""
    if not isinstance(value, dict):
        return None
    codes = {c.get("code") for c in (value.get("type") or {}).get("coding", [])}
    return value if codes & set(types or []) else None


# ------------------------------------------------------------- codes


@register("coding_system")
def coding_system(run: Run, ctx: Ctx, value: Any) -> str | None:
    """v2 coding system name (table 0396, HL7nnnn, OID) -> FHIR system URI."""
    name = _s(value).strip()
    if not name:
        return None
    cm = run.ms.codemaps.get("CodingSystem")
    if cm is not None:
        hit = cm.lookup(name)
        if hit is not None:
            return str(hit["code"])
    m = re.match(r"^(?:HL7|HL7-?)(\d{4})$", name, re.IGNORECASE)
    if m:
        return f"http://terminology.hl7.org/CodeSystem/v2-{m.group(1)}"
    if re.match(r"^[0-2](\.(0|[1-9][0-9]*))+$", name):
        return f"urn:oid:{name}"
    if re.match(r"^[a-z][a-z0-9+.-]*:", name, re.IGNORECASE):
        return name
    return "urn:fhirhub:codesystem:" + quote(name, safe="")


# ------------------------------------------------------------- telecom


@register("xtn_value")
def xtn_value(run: Run, ctx: Ctx, value: Any) -> str | None:
    """ContactPoint.value per the IG XTN rows (XTN.4 for Internet/X.400, XTN.12, XTN.5-8, XTN.1)."""
    rep = ctx.rep
    equip = component(rep, 3)
    if equip in ("Internet", "X.400", "NET") or (not component(rep, 1) and component(rep, 4)):
        return component(rep, 4) or component(rep, 1) or None
    if component(rep, 12):
        return component(rep, 12)
    country, area, local, ext = component(rep, 5), component(rep, 6), component(rep, 7), component(rep, 8)
    if local:
        out = " ".join(p for p in (f"+{country}" if country else "", area, local) if p)
        if ext:
            out += f" X{ext}"
        return out
    return component(rep, 1) or None


@register("xtn_system")
def xtn_system(run: Run, ctx: Ctx, value: Any) -> str | None:
    """ContactPoint.system from XTN.3 (IG map); a value without XTN.3 is a phone, or email if it has '@'."""
    rep = ctx.rep
    equip = component(rep, 3)
    cm = run.ms.codemaps.get("TelecommunicationEquipmentType")
    if equip and cm is not None:
        hit = cm.lookup(equip)
        if hit is not None:
            sys = hit.get("system", "")
            # the IG maps CP to "mobile" of contact-point-use: the system is phone
            return "phone" if sys.endswith("contact-point-use") else str(hit["code"])
    val = xtn_value(run, ctx, value)
    if not val:
        return None
    if component(rep, 4) and "@" in component(rep, 4):
        return "email"
    return "email" if "@" in val else "phone"


@register("xtn_use")
def xtn_use(run: Run, ctx: Ctx, value: Any) -> str | None:
    """ContactPoint.use from XTN.2 (TelecommunicationUseCode)."""
    rep = ctx.rep
    code = component(rep, 2)
    cm = run.ms.codemaps.get("TelecommunicationUseCode")
    if code and cm is not None:
        hit = cm.lookup(code)
        if hit is not None and hit.get("code"):
            return str(hit["code"])
    return None


# --------------------------------------------------------------- money


@register("money")
def money(run: Run, ctx: Ctx, value: Any) -> dict[str, Any] | None:
    """CP / MO (amount & currency) -> Money."""
    rep = value if isinstance(value, tuple) else ctx.rep
    if rep is None:
        return None
    if len(rep[0]) > 1:  # CP: first component is MO with subcomponents
        amount, currency = rep[0][0], rep[0][1]
    else:
        amount, currency = component(rep, 1), component(rep, 2)
    if not amount:
        return None
    num = to_decimal(run, ctx, amount)
    out: dict[str, Any] = {"value": num}
    if currency:
        out["currency"] = currency
    return out


@register("quantity")
def quantity(run: Run, ctx: Ctx, value: Any) -> dict[str, Any] | None:
    num = to_decimal(run, ctx, value)
    return {"value": num} if num is not None else None


# --------------------------------------------------------------- names


@register("name_text")
def name_text(
    run: Run, ctx: Ctx, value: Any, given: int = 3, family: int = 2, prefix: int | None = None
) -> str | None:
    """Display text of a person name in an XCN (given family) or XPN (given=2, family=1)."""
    rep = ctx.rep
    parts = []
    if prefix:
        parts.append(component(rep, prefix))
    parts += [component(rep, given), component(rep, family)]
    out = " ".join(p for p in parts if p)
    return out or None


# ------------------------------------------------------------ locations

_PL_ORDER = (
    (3, "bd", "Bed"),
    (2, "ro", "Room"),
    (1, "wa", "Point of care"),
    (8, "lvl", "Floor"),
    (7, "bu", "Building"),
    (4, "si", "Site"),
)


@register("pl_name")
def pl_name(run: Run, ctx: Ctx, value: Any) -> str | None:
    """Location.name: the PL parts, most general first (facility, building, floor, point of care, room, bed)."""
    rep = ctx.rep
    parts = [component(rep, i) for i in (4, 7, 8, 1, 2, 3)]
    out = " ".join(p for p in parts if p)
    return out or (component(rep, 9) or None)


@register("pl_physical_type")
def pl_physical_type(run: Run, ctx: Ctx, value: Any) -> dict[str, Any] | None:
    """Location.physicalType of the most granular PL part present."""
    rep = ctx.rep
    for idx, code, display in _PL_ORDER:
        if component(rep, idx):
            return {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                        "code": code,
                        "display": display,
                    }
                ]
            }
    return None


# --------------------------------------------------------- appointments


def _first_dtm(run: Run, ctx: Ctx, refs: list[tuple[str, int]]) -> tuple[str | None, Any]:
    for seg_name, field_no in refs:
        for seg in [s for s in ctx.segments if s.name == seg_name] or []:
            v = seg.value(field_no)
            if v:
                return v, seg
    return None, None


def _appt_times(run: Run, ctx: Ctx) -> tuple[str | None, str | None]:
    key = f"appt_times:{id(ctx.segments)}"
    if key not in run.memo:
        run.memo[key] = _compute_appt_times(run, ctx)
    result: tuple[str | None, str | None] = run.memo[key]
    return result


def _compute_appt_times(run: Run, ctx: Ctx) -> tuple[str | None, str | None]:
    msg_ctx_segments = ctx.segments
    sch = next((s for s in msg_ctx_segments if s.name == "SCH"), None)
    start = end = None
    sub = ctx
    tq1 = next((s for s in msg_ctx_segments if s.name == "TQ1"), None)
    if tq1 is not None and tq1.value(7):  # TQ1-7/TQ1-8 (v2.5+; SCH-11 is withdrawn from v2.7)
        start = dtm_to_fhir(run, tq1.value(7), kind="instant", ctx=sub)
        end = dtm_to_fhir(run, tq1.value(8), kind="instant", ctx=sub) if tq1.value(8) else None
    if start is None and sch is not None and sch.value(11, 4):  # SCH-11 TQ.4 / TQ.5
        start = dtm_to_fhir(run, sch.value(11, 4), kind="instant", ctx=sub)
        end = dtm_to_fhir(run, sch.value(11, 5), kind="instant", ctx=sub) if sch.value(11, 5) else None
    if start is None:
        # earliest resource start: AIS-4, AIG-8, AIL-6, AIP-6 with their durations
        best: tuple[datetime, str, str | None] | None = None
        for name, sfield, dfield in (("AIS", 4, 7), ("AIG", 8, 11), ("AIL", 6, 9), ("AIP", 6, 9)):
            for seg in (s for s in msg_ctx_segments if s.name == name):
                raw = seg.value(sfield)
                if not raw:
                    continue
                st = dtm_to_fhir(run, raw, kind="instant", ctx=sub)
                if st is None:
                    continue
                dur = seg.value(dfield)
                en = None
                if dur:
                    mins = duration_minutes(dur, seg.value(dfield + 1) or "min")
                    if mins is not None:
                        en = add_minutes(st, mins)
                dt = fhir_to_datetime(st)
                if dt is not None and (best is None or dt < best[0]):
                    best = (dt, st, en)
        if best is not None:
            start, end = best[1], best[2]
    if start is not None and end is None and sch is not None and sch.value(9):
        mins = duration_minutes(sch.value(9), sch.value(10) or "min")
        if mins is not None:
            end = add_minutes(start, mins)
    return start, end


@register("appointment_start")
def appointment_start(run: Run, ctx: Ctx, value: Any) -> str | None:
    """Appointment.start: TQ1-7, else SCH-11.4, else the earliest AIS/AIG/AIL/AIP start."""
    return _appt_times(run, ctx)[0]


@register("appointment_end")
def appointment_end(run: Run, ctx: Ctx, value: Any) -> str | None:
    """Appointment.end: TQ1-8, else SCH-11.5, else start + resource duration, else start + SCH-9/SCH-10."""
    return _appt_times(run, ctx)[1]


@register("minutes_duration")
def minutes_duration(run: Run, ctx: Ctx, value: Any, units_field: int = 10) -> int | None:
    """SCH-9 in minutes when SCH-10 says minutes (IG: 'If SCH-10 indicates units of minutes')."""
    seg = ctx.seg
    if seg is None:
        return None
    amount = _s(value)
    unit = seg.value(units_field) or ""
    if not amount or unit.strip().upper() not in ("M", "MIN", "MINUTES", "MINUTE"):
        return None
    try:
        n = int(Decimal(amount))
    except InvalidOperation:
        return None
    return n if n > 0 else None


@register("resource_period")
def resource_period(
    run: Run, ctx: Ctx, value: Any, start: int = 6, duration: int = 9
) -> dict[str, Any] | None:
    """participant.period from an AIS/AIG/AIL/AIP start (+ duration and units)."""
    seg = ctx.seg
    if seg is None or not seg.value(start):
        return None
    st = dtm_to_fhir(run, seg.value(start), kind="dateTime", ctx=ctx)
    if st is None:
        return None
    out: dict[str, Any] = {"start": st}
    dur = seg.value(duration)
    if dur and "T" in st:
        mins = duration_minutes(dur, seg.value(duration + 1) or "min")
        if mins is not None:
            out["end"] = add_minutes(st, mins)
    return out


# ------------------------------------------------------------- claims


@register("claim_type")
def claim_type(run: Run, ctx: Ctx, value: Any) -> dict[str, Any]:
    """Claim.type: institutional for inpatient/emergency visits (PV1-2 I/E/B), else professional."""
    pv1 = run.msg.first("PV1")
    cls = pv1.value(2) if pv1 is not None else ""
    code = "institutional" if cls in ("I", "E", "B") else "professional"
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": code}]}


@register("ft1_total")
def ft1_total(run: Run, ctx: Ctx, value: Any) -> dict[str, Any] | None:
    """Claim.total: sum of FT1-11 of the charges (one currency only)."""
    total = Decimal(0)
    currency: str | None = None
    seen = False
    for seg in ctx.segments:
        if seg.name != "FT1" or seg.value(6) not in ("", "CG"):
            continue
        rep = seg.rep(11)
        if rep is None:
            continue
        m = money(run, ctx.with_rep(rep), rep)
        if m is None:
            continue
        cur = m.get("currency")
        if currency is not None and cur != currency:
            return None
        currency = cur
        total += Decimal(str(m["value"]))
        seen = True
    if not seen:
        return None
    out: dict[str, Any] = {"value": int(total) if total == total.to_integral_value() else float(total)}
    if currency:
        out["currency"] = currency
    return out


__all__ = ["FUNCTIONS", "register", "parse_dtm", "dtm_to_fhir"]
