"""FHIR -> HL7v2 through ``kind: outbound`` mapping files (pure).

``to_v2(resource, event, related, mappings)`` returns one message (CR
separated).  ``event`` is the trigger (``S12``) or ``"auto"`` to pick it from
the file's ``event_by_status``.  ``related`` maps references
(``"Patient/123"`` or ``urn:uuid:...``) to the resources they point at (the
Appointment's patient, practitioners and locations).

Field specs use the same closed-vocabulary idea as inbound: ``path`` (dotted
FHIR path, first item of lists), ``const``, ``var`` (event, control_id,
timestamp ...), ``fn`` (:data:`OUT_FUNCTIONS`), ``map`` (a code map, used
in reverse: FHIR code -> v2 code), ``components`` (one spec per component),
``repeat`` (all items of a list path become repetitions).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from hub.hl7.errors import mapping_error
from hub.hl7.mapping import MappingSet
from hub.hl7.parse import DEFAULT_ENCODING, escape

# a built field: list of repetitions, each a list of components, each a list of subcomponents
V2 = list[list[list[str]]]
OutFn = Callable[..., Any]
OUT_FUNCTIONS: dict[str, OutFn] = {}


def out_fn(name: str) -> Callable[[OutFn], OutFn]:
    def deco(fn: OutFn) -> OutFn:
        OUT_FUNCTIONS[name] = fn
        return fn

    return deco


def get(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def get_all(obj: Any, path: str) -> list[Any]:
    items: list[Any] = [obj]
    for part in path.split("."):
        nxt: list[Any] = []
        for it in items:
            if isinstance(it, dict) and part in it:
                v = it[part]
                nxt.extend(v if isinstance(v, list) else [v])
        items = nxt
    return items


# ---------------------------------------------------------------- functions


def fhir_to_dtm(value: str) -> str:
    """FHIR date/dateTime/instant -> v2 DTM (offset kept)."""
    m = re.match(
        r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:T(\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?)?$",
        value,
    )
    if not m:
        return ""
    y, mo, d, hh, mi, ss, tz = m.groups()
    out = y + (mo or "") + (d or "") + (hh or "") + (mi or "") + (ss or "")
    if tz:
        out += "+0000" if tz == "Z" else tz.replace(":", "")
    return out


@out_fn("dtm")
def _dtm(value: Any, ctx: dict[str, Any]) -> str:
    return fhir_to_dtm(value) if isinstance(value, str) else ""


@out_fn("identifier_by_type")
def _identifier_by_type(value: Any, ctx: dict[str, Any], type: str = "") -> list[str]:
    """Identifier list -> EI (id ^ namespace) of the identifier whose type code is ``type``."""
    for ident in value if isinstance(value, list) else [value]:
        if not isinstance(ident, dict):
            continue
        codes = [c.get("code") for c in (ident.get("type") or {}).get("coding", [])]
        if type in codes:
            return [str(ident.get("value", "")), _authority(ident.get("system", ""))]
    return []


def _authority(system: str) -> str:
    if system.startswith("urn:fhirhub:id:"):
        from urllib.parse import unquote

        return unquote(system[len("urn:fhirhub:id:") :])
    if system.startswith("urn:oid:"):
        return system[len("urn:oid:") :]
    return system


@out_fn("cx")
def _cx(value: Any, ctx: dict[str, Any]) -> V2:
    """Identifier(s) -> CX repetitions: id ^^^ authority ^ type."""
    reps: V2 = []
    for ident in value if isinstance(value, list) else [value]:
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        typ = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
        reps.append([[str(ident["value"])], [""], [""], [_authority(str(ident.get("system", "")))], [typ]])
    return reps


@out_fn("xpn")
def _xpn(value: Any, ctx: dict[str, Any]) -> V2:
    reps: V2 = []
    for name in value if isinstance(value, list) else [value]:
        if not isinstance(name, dict):
            continue
        given = name.get("given") or []
        use = {
            "official": "L",
            "usual": "D",
            "maiden": "M",
            "nickname": "N",
            "anonymous": "MSK",
            "old": "BAD",
            "temp": "TEMP",
        }.get(str(name.get("use", "")), "")
        reps.append(
            [
                [str(name.get("family", ""))],
                [given[0] if given else ""],
                [" ".join(given[1:])],
                [" ".join(name.get("suffix") or [])],
                [" ".join(name.get("prefix") or [])],
                [""],
                [use],
            ]
        )
    return reps


@out_fn("xad")
def _xad(value: Any, ctx: dict[str, Any]) -> V2:
    reps: V2 = []
    for a in value if isinstance(value, list) else [value]:
        if not isinstance(a, dict):
            continue
        lines = a.get("line") or []
        use = {"home": "H", "work": "O", "temp": "C", "old": "BA", "billing": "BI"}.get(
            str(a.get("use", "")), ""
        )
        if a.get("type") == "postal":
            use = "M"
        reps.append(
            [
                [lines[0] if lines else ""],
                [" ".join(lines[1:])],
                [a.get("city", "")],
                [a.get("state", "")],
                [a.get("postalCode", "")],
                [a.get("country", "")],
                [use],
            ]
        )
    return reps


@out_fn("xtn")
def _xtn(value: Any, ctx: dict[str, Any], use: str = "") -> V2:
    """ContactPoints (optionally only ``use``) -> XTN: ^use^equipment^email or number in XTN.1/XTN.12."""
    reps: V2 = []
    for cp in value if isinstance(value, list) else [value]:
        if not isinstance(cp, dict) or not cp.get("value"):
            continue
        if use and cp.get("use") not in (use, None):
            continue
        if use == "" and cp.get("use") == "work":
            continue
        system = cp.get("system", "phone")
        v = str(cp["value"])
        code = {"home": "PRN", "work": "WPN", "mobile": "PRS"}.get(str(cp.get("use", "")), "")
        if system == "email":
            reps.append([[""], ["NET"], ["Internet"], [v]])
        else:
            equip = {"phone": "PH", "fax": "FX", "pager": "BP"}.get(system, "PH")
            if cp.get("use") == "mobile":
                equip = "CP"
            reps.append([[v], [code], [equip]])
    return reps


@out_fn("cwe")
def _cwe(value: Any, ctx: dict[str, Any]) -> list[str]:
    """CodeableConcept / Coding -> CWE (code ^ display ^ system name)."""
    if not isinstance(value, dict):
        return []
    coding = (value.get("coding") or [value])[0]
    system = str(coding.get("system", ""))
    m = re.search(r"/v2-(\d{4})$", system)
    name = (
        f"HL7{m.group(1)}"
        if m
        else {"http://snomed.info/sct": "SCT", "http://loinc.org": "LN"}.get(system, "")
    )
    return [str(coding.get("code", "")), str(coding.get("display", value.get("text", ""))), name]


def _related(ctx: dict[str, Any], ref: Any) -> dict[str, Any] | None:
    if not isinstance(ref, dict):
        return None
    key = ref.get("reference")
    res = ctx["related"].get(key) if key else None
    return res if isinstance(res, dict) else None


@out_fn("actor_xcn")
def _actor_xcn(value: Any, ctx: dict[str, Any]) -> list[str]:
    """participant -> XCN of the related Practitioner (id ^ family ^ given)."""
    res = _related(ctx, (value or {}).get("actor") if isinstance(value, dict) else None)
    if res is None:
        disp = ((value or {}).get("actor") or {}).get("display", "") if isinstance(value, dict) else ""
        return ["", disp]
    ident = (res.get("identifier") or [{}])[0]
    name = (res.get("name") or [{}])[0]
    given = name.get("given") or [""]
    return [
        str(ident.get("value", "")),
        str(name.get("family", "")),
        str(given[0]),
        "",
        "",
        "",
        "",
        "",
        _authority(str(ident.get("system", ""))),
    ]


@out_fn("actor_pl")
def _actor_pl(value: Any, ctx: dict[str, Any]) -> list[str]:
    """participant -> PL of the related Location (its name as point of care)."""
    actor = (value or {}).get("actor") if isinstance(value, dict) else None
    res = _related(ctx, actor)
    name = (res or {}).get("name") or (actor or {}).get("display", "")
    return [str(name)]


@out_fn("minutes_between")
def _minutes_between(value: Any, ctx: dict[str, Any]) -> str:
    from datetime import datetime

    res = ctx["resource"]
    try:
        a = datetime.fromisoformat(str(res["start"]).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(res["end"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return ""
    return str(int((b - a).total_seconds() // 60))


# ------------------------------------------------------------------ engine


def _reverse(ms: MappingSet, name: str, code: str) -> str:
    cm = ms.codemaps[name]
    for k, v in cm.entries.items():
        if str(v.get("code")) == code:
            return k
    return ""


def _to_v2(value: Any) -> V2:
    """Normalise a spec result to repetitions/components/subcomponents."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str | int | float):
        return [[[str(value)]]]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return [[[x] for x in value]]
    if isinstance(value, list) and value and isinstance(value[0], list):
        return value  # already V2
    return []


def _eval(spec: dict[str, Any], ctx: dict[str, Any], ms: MappingSet, base: Any) -> V2:
    if "components" in spec:
        comps: list[list[str]] = []
        for sub in spec["components"]:
            if sub is None:
                comps.append([""])
                continue
            v = _eval(sub, ctx, ms, base)
            comps.append(v[0][0] if v else [""])
        return [comps] if any(any(x for x in c) for c in comps) else []
    if "const" in spec:
        value: Any = str(spec["const"])
    elif "var" in spec:
        value = ctx["vars"].get(spec["var"], "")
    elif "path" in spec:
        value = (
            get_all(base, spec["path"])
            if spec.get("repeat") or spec.get("fn") in ("cx", "xpn", "xad", "xtn", "identifier_by_type")
            else get(base, spec["path"])
        )
        if (
            isinstance(value, list)
            and not spec.get("repeat")
            and spec.get("fn") not in ("cx", "xpn", "xad", "xtn", "identifier_by_type")
        ):
            value = value[0] if value else None
    else:
        value = base
    if "fn" in spec:
        value = OUT_FUNCTIONS[spec["fn"]](value, ctx, **dict(spec.get("args") or {}))
    if "map" in spec:
        value = _reverse(ms, spec["map"], str(value)) if value not in (None, "") else ""
    if isinstance(value, bool):
        value = "Y" if value else "N"
    return _to_v2(value)


def _serialize(fields: list[V2], enc: Any = DEFAULT_ENCODING) -> str:
    out = []
    for f in fields:
        out.append(
            enc.repetition.join(
                enc.component.join(
                    enc.subcomponent.join(escape(s, enc) for s in comp) for comp in rep
                ).rstrip(enc.component)
                for rep in f
            )
        )
    return enc.field.join(out).rstrip(enc.field)


def pick_event(doc: Any, resource: dict[str, Any]) -> str:
    by_status = doc.data.get("event_by_status") or {}
    status = str(resource.get("status", ""))
    if status in by_status:
        return str(by_status[status])
    if doc.data.get("default_event"):
        return str(doc.data["default_event"])
    raise mapping_error(
        "OUT-EVENT", f"no outbound event for {resource.get('resourceType')} status", hl7_code="207"
    )


def to_v2(
    resource: dict[str, Any],
    event: str,
    related: dict[str, dict[str, Any]],
    mappings: MappingSet,
    *,
    control_id: str | None = None,
    timestamp: str | None = None,
    sending_application: str = "FHIRHUB",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    mapping: str | None = None,
) -> str:
    """FHIR resource -> one HL7v2 message through the outbound mapping for its type."""
    rtype = resource.get("resourceType")
    doc = (
        mappings.outbound.get(mapping)
        if mapping
        else next((d for d in mappings.outbound.values() if d.data["resourceType"] == rtype), None)
    )
    if doc is None:
        raise mapping_error("OUT-NONE", f"no outbound mapping for {rtype}", hl7_code="200")
    if event == "auto":
        event = pick_event(doc, resource)
    events = doc.data.get("events") or {}
    if events and event not in events:
        raise mapping_error("OUT-EVENT", f"{doc.name} does not produce {event}", hl7_code="201")
    msg_code = str(events.get(event, "")).split("^")[0] if events else ""
    structure = (doc.data.get("structure") or {}).get(event, "")
    digest = hashlib.sha256(json.dumps(resource, sort_keys=True).encode() + event.encode()).hexdigest()[:20]
    cid = control_id or digest
    ts = timestamp or fhir_to_dtm(str(get(resource, "meta.lastUpdated") or "")) or ""
    ctx: dict[str, Any] = {
        "resource": resource,
        "related": related,
        "vars": {"event": event, "control_id": cid, "timestamp": ts},
    }
    enc = DEFAULT_ENCODING
    lines = [
        "MSH|^~\\&|"
        + _serialize(
            [
                [[[sending_application]]],
                [[[sending_facility]]],
                [[[receiving_application]]],
                [[[receiving_facility]]],
                [[[ts]]],
                [],
                [[[msg_code], [event], [structure]]],
                [[[cid]]],
                [[["P"]]],
                [[["2.5.1"]]],
            ],
            enc,
        )
    ]
    for seg in doc.data["segments"]:
        source = str(seg.get("source", "this"))
        bases: list[Any]
        if source == "this":
            bases = [resource]
        elif source.startswith("related:"):
            ref = get(resource, source.split(":", 1)[1])
            target = _related(ctx, ref) if isinstance(ref, dict) else None
            bases = [target] if target is not None else []
        elif source.startswith("participants:"):
            want = source.split(":", 1)[1]
            bases = []
            for p in resource.get("participant") or []:
                tgt = _related(ctx, p.get("actor"))
                ref = str((p.get("actor") or {}).get("reference", ""))
                if (tgt is not None and tgt.get("resourceType") == want) or ref.startswith(want + "/"):
                    bases.append(p)
        else:
            raise mapping_error("OUT-SOURCE", f"bad source {source!r} in {doc.name}", hl7_code="207")
        when = seg.get("when") or {}
        for i, base in enumerate(bases, start=1):
            if "event_in" in when and event not in when["event_in"]:
                continue
            if "exists" in when and get(base, when["exists"]) in (None, "", []):
                continue
            ctx["vars"]["seq"] = str(i)
            fields_spec = seg.get("fields") or {}
            n = max((int(k) for k in fields_spec), default=0)
            fields: list[V2] = []
            for k in range(1, n + 1):
                spec = fields_spec.get(str(k))
                fields.append(_eval(spec, ctx, mappings, base) if spec else [])
            body = _serialize(fields, enc)
            lines.append(seg["segment"] + (enc.field + body if body else ""))
    return "\r".join(lines) + "\r"


def appointment_event(previous: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """The SIU trigger for an Appointment change (for the subscription that sends it).

    New -> S12 (or S15/S26/S17 when it is created in that status); status becomes
    cancelled -> S15, noshow -> S26, entered-in-error -> S17; start/end moved -> S13
    (reschedule); any other change -> S14 (modification).
    """
    status = str(current.get("status", ""))
    final = {"cancelled": "S15", "noshow": "S26", "entered-in-error": "S17"}
    if previous is None:
        return final.get(status, "S12")
    if status != previous.get("status") and status in final:
        return final[status]
    if (current.get("start"), current.get("end")) != (previous.get("start"), previous.get("end")):
        return "S13"
    return "S14"
