"""Turning a resource into index rows: the :class:`~hub.store.repository.Indexer` of search.

``Repository(indexer=SearchIndexer.load())`` calls :meth:`SearchIndexer.extract`
for every written resource inside the write transaction. Values are taken by
the parameter's FHIRPath expression (see :mod:`hub.search.paths`), then turned
into rows by parameter type and FHIR data type:

=========  ==================================================================
string     string/markdown; HumanName family, given, prefix, suffix, text;
           Address line, city, district, state, postalCode, country, text
token      code/id/uri/string/boolean; Coding; CodeableConcept (each coding,
           text → ``:text`` rows); Identifier (system|value, type →
           ``:of-type`` rows, type.text → ``:text``); ContactPoint
           (system|value, as HAPI)
reference  Reference (local ``Type/id`` or absolute URL; identifier →
           ``:identifier`` token rows); canonical/uri strings as URLs
date       date/dateTime/instant (precision range), Period, Timing (events
           and repeat.boundsPeriod)
number     integer/decimal
quantity   Quantity (and Age, Duration, …), Range (low..high), Money
uri        uri/url/canonical/oid/uuid
=========  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from hub.search.params import BoundParam, Registry
from hub.search.paths import NotFast
from hub.search.tables import INDEX_TABLES, TABLE_BY_TYPE, number_t, reference_t, string_t, token_t
from hub.search.values import (
    DATE_MAX,
    DATE_MIN,
    NUM_MAX,
    NUM_MIN,
    STRING_LEN,
    URI_LEN,
    hash_code,
    hash_sys,
    hash_sys_code,
    normalize,
    parse_date_range,
    split_reference,
)


class Rows(dict[Table, list[dict[str, Any]]]):
    """Rows per table, deduplicated on insertion."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[Any, ...]] = set()


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


class SearchIndexer:
    """Implements the repository's ``Indexer`` protocol."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._plans: dict[str, list[BoundParam]] = {}

    @classmethod
    def load(cls, profiles_dir: Path | str | None = None) -> SearchIndexer:
        return cls(Registry.load(profiles_dir))

    @property
    def tables(self) -> Sequence[Table]:
        return INDEX_TABLES

    def _plan(self, res_type: str) -> list[BoundParam]:
        plan = self._plans.get(res_type)
        if plan is None:
            plan = self.registry.indexed(res_type)
            self._plans[res_type] = plan
        return plan

    def independent_of_version(self, res_type: str) -> bool:
        """Whether no indexed parameter of ``res_type`` reads ``meta.versionId`` or ``meta.lastUpdated`` (which
        the repository sets at write time): then rows extracted before the write are the rows of the stored
        version. ``_lastUpdated`` itself is a column of the resource row, not an index row."""
        return not any("versionId" in (bp.expression or "") or "lastUpdated" in (bp.expression or "")
                       for bp in self._plan(res_type))

    def extract(self, resource: Mapping[str, Any]) -> Mapping[Table, list[dict[str, Any]]]:
        res_type = resource.get("resourceType")
        if not isinstance(res_type, str):
            return {}
        out = Rows()
        keys = resource.keys()
        for bp in self._plan(res_type):
            ev = bp.evaluator
            assert ev is not None
            tk = ev.top_keys
            if tk is not None and tk.isdisjoint(keys):
                continue
            if bp.type == "composite":
                self._composite(bp, resource, out)
                continue
            values = ev(resource)
            if values:
                emit(bp, bp.type, bp.identity, 0, values, out)
        return out

    def _composite(self, bp: BoundParam, resource: Mapping[str, Any], out: Rows) -> None:
        ev = bp.evaluator
        assert ev is not None
        try:
            items = ev.items(resource)
        except NotFast:
            items = [("", v) for v in ev(resource)]
        n = len(bp.component_types)
        for grp, (path, item) in enumerate(items, start=1):
            cevs = [bp.component_evaluator(i, path or bp.res_type) for i in range(n)]
            if isinstance(item, dict) and any(
                c.top_keys is not None and c.top_keys.isdisjoint(item.keys()) for c in cevs
            ):
                continue
            staged = Rows()
            for i, ctype in enumerate(bp.component_types):
                cev = cevs[i]
                vals = cev(item) if cev.fast else cev.slow(item, {"resource": resource}, path=path or None)
                before = sum(len(v) for v in staged.values())
                emit(bp, ctype, bp.sub_identity(f"${i}"), grp, vals, staged)
                if sum(len(v) for v in staged.values()) == before:
                    break  # a component without values: the item cannot match
            else:
                for table, rows in staged.items():
                    for row in rows:
                        _add(out, table, row)


def emit(bp: BoundParam, ptype: str, ident: int, grp: int, values: list[Any], out: Rows) -> None:
    """Append the rows for ``values`` of a parameter of type ``ptype`` (deduplicated)."""
    if ptype == "string":
        _strings(ident, grp, values, out)
    elif ptype == "token":
        _tokens(bp, ident, grp, values, out)
    elif ptype == "reference":
        _references(bp, ident, grp, values, out)
    elif ptype == "date":
        _dates(ident, grp, values, out)
    elif ptype == "number":
        _numbers(ident, grp, values, out)
    elif ptype == "quantity":
        _quantities(ident, grp, values, out)
    elif ptype == "uri":
        _uris(ident, grp, values, out)


def _add(out: Rows, table: Table, row: dict[str, Any]) -> None:
    key = (table.name, *row.values())
    if key in out.seen:
        return
    out.seen.add(key)
    rows = out.get(table)
    if rows is None:
        out[table] = [row]
    else:
        rows.append(row)


# --------------------------------------------------------------------------- string
def string_values(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        parts = _NAME_PARTS if ("family" in v or "given" in v) else _ADDRESS_PARTS
        if not any(k in v for k in parts):
            parts = _NAME_PARTS
        out: list[str] = []
        for k in parts:
            x = v.get(k)
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, list):
                out.extend(s for s in x if isinstance(s, str))
        return out
    return []


def _strings(ident: int, grp: int, values: list[Any], out: Rows) -> None:
    for v in values:
        for s in string_values(v):
            if s:
                _add(out, string_t, string_row(ident, grp, s))


def string_row(ident: int, grp: int, s: str) -> dict[str, Any]:
    return {"hash_identity": ident, "grp": grp, "value_norm": normalize(s)[:STRING_LEN], "value_exact": s}


# --------------------------------------------------------------------------- token
def token_row(ident: int, grp: int, system: str | None, code: str) -> dict[str, Any]:
    return {
        "hash_identity": ident,
        "grp": grp,
        "system": system,
        "code": code,
        "hash_code": hash_code(ident, code),
        "hash_sys": hash_sys(ident, system),
        "hash_sys_code": hash_sys_code(ident, system, code),
    }


def token_values(v: Any) -> tuple[list[tuple[str | None, str]], list[str]]:
    """((system, code) pairs, display texts) of one token value."""
    if isinstance(v, bool):
        return [(None, "true" if v else "false")], []
    if isinstance(v, str):
        return [(None, v)], []
    if isinstance(v, int | float | Decimal):
        return [(None, str(v))], []
    if not isinstance(v, dict):
        return [], []
    pairs: list[tuple[str | None, str]] = []
    texts: list[str] = []
    if "coding" in v or ("text" in v and "value" not in v and "code" not in v):
        for c in v.get("coding") or ():
            if isinstance(c, dict):
                code = c.get("code")
                if isinstance(code, str):
                    pairs.append((c.get("system"), code))
                if isinstance(c.get("display"), str):
                    texts.append(c["display"])
        if isinstance(v.get("text"), str):
            texts.append(v["text"])
        return pairs, texts
    if "value" in v and not isinstance(v.get("value"), dict | list):  # Identifier, ContactPoint
        val = v.get("value")
        if isinstance(val, str | int | float | Decimal) and not isinstance(val, bool):
            sysv = v.get("system")
            pairs.append((sysv if isinstance(sysv, str) else None, str(val)))
        t = v.get("type")
        if isinstance(t, dict) and isinstance(t.get("text"), str):
            texts.append(t["text"])
        return pairs, texts
    code = v.get("code")
    if isinstance(code, str):  # Coding
        sysv = v.get("system")
        pairs.append((sysv if isinstance(sysv, str) else None, code))
        if isinstance(v.get("display"), str):
            texts.append(v["display"])
    return pairs, texts


def _tokens(bp: BoundParam, ident: int, grp: int, values: list[Any], out: Rows) -> None:
    text_ident = None
    for v in values:
        pairs, texts = token_values(v)
        for system, code in pairs:
            _add(out, token_t, token_row(ident, grp, system, code))
        if texts and grp == 0:
            text_ident = text_ident or bp.sub_identity(":text")
            for t in texts:
                _add(out, string_t, string_row(text_ident, 0, t))
        if grp == 0 and isinstance(v, dict) and "value" in v and isinstance(v.get("type"), dict):
            value = v.get("value")
            if isinstance(value, str):
                oft = bp.sub_identity(":of-type")
                for c in v["type"].get("coding") or ():
                    if isinstance(c, dict) and isinstance(c.get("code"), str):
                        _add(out, token_t, token_row(oft, 0, c.get("system"), f"{c['code']}|{value}"))


# --------------------------------------------------------------------------- reference
def reference_targets(v: Any) -> list[tuple[str | None, str]]:
    if isinstance(v, dict):
        ref = v.get("reference")
        if isinstance(ref, str):
            t = split_reference(ref)
            return [t] if t else []
        return []
    if isinstance(v, str):  # canonical, uri
        t = split_reference(v)
        if t is None:
            return []
        out = [t]
        if t[0] is None and "|" in v:  # canonical with a version: also the bare URL
            out.append((None, v.split("|", 1)[0]))
        return out
    return []


def _references(bp: BoundParam, ident: int, grp: int, values: list[Any], out: Rows) -> None:
    for v in values:
        for target_type, target_id in reference_targets(v):
            _add(
                out,
                reference_t,
                {"hash_identity": ident, "grp": grp, "target_type": target_type, "target_id": target_id},
            )
        if grp == 0 and isinstance(v, dict) and isinstance(v.get("identifier"), dict):
            ident_id = bp.sub_identity(":identifier")
            for system, code in token_values(v["identifier"])[0]:
                _add(out, token_t, token_row(ident_id, 0, system, code))


# --------------------------------------------------------------------------- date
def date_ranges(v: Any) -> list[tuple[int, int]]:
    if isinstance(v, str):
        r = parse_date_range(v)
        return [r] if r else []
    if not isinstance(v, dict):
        return []
    if "start" in v or "end" in v:  # Period
        s = parse_date_range(v["start"]) if isinstance(v.get("start"), str) else None
        e = parse_date_range(v["end"]) if isinstance(v.get("end"), str) else None
        if s is None and e is None:
            return []
        return [(s[0] if s else DATE_MIN, e[1] if e else DATE_MAX)]
    if "event" in v or "repeat" in v:  # Timing
        rs = [r for x in v.get("event") or () if isinstance(x, str) and (r := parse_date_range(x))]
        rep = v.get("repeat")
        if isinstance(rep, dict) and isinstance(rep.get("boundsPeriod"), dict):
            rs.extend(date_ranges(rep["boundsPeriod"]))
        if not rs:
            return []
        return [(min(r[0] for r in rs), max(r[1] for r in rs))]
    return []


def _dates(ident: int, grp: int, values: list[Any], out: Rows) -> None:
    for v in values:
        for low, high in date_ranges(v):
            _add(out, TABLE_BY_TYPE["date"], {"hash_identity": ident, "grp": grp, "low": low, "high": high})


# --------------------------------------------------------------------------- number / quantity
def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float | Decimal):
        return float(v)
    return None


def _numbers(ident: int, grp: int, values: list[Any], out: Rows) -> None:
    for v in values:
        if isinstance(v, dict):  # a Range (RiskAssessment.prediction.probability)
            for _, _, _, low, high in quantity_values(v):
                _add(out, number_t, {"hash_identity": ident, "grp": grp, "low": low, "high": high})
            continue
        n = _num(v)
        if n is not None:
            _add(out, number_t, {"hash_identity": ident, "grp": grp, "low": n, "high": n})


def quantity_values(v: Any) -> list[tuple[str | None, str | None, str | None, float, float]]:
    """(system, code, unit, low, high) of a Quantity, Range or Money."""
    if not isinstance(v, dict):
        n = _num(v)
        return [(None, None, None, n, n)] if n is not None else []
    if "low" in v or "high" in v:  # Range
        lo: dict[str, Any] = v["low"] if isinstance(v.get("low"), dict) else {}
        hi: dict[str, Any] = v["high"] if isinstance(v.get("high"), dict) else {}
        lv, hv = _num(lo.get("value")), _num(hi.get("value"))
        if lv is None and hv is None:
            return []
        src = lo if lv is not None else hi
        return [
            (
                _s(src.get("system")),
                _s(src.get("code")),
                _s(src.get("unit")),
                lv if lv is not None else NUM_MIN,
                hv if hv is not None else NUM_MAX,
            )
        ]
    n = _num(v.get("value"))
    if n is None:
        return []
    if "currency" in v:  # Money
        return [("urn:iso:std:iso:4217", _s(v.get("currency")), None, n, n)]
    return [(_s(v.get("system")), _s(v.get("code")), _s(v.get("unit")), n, n)]


def _s(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def _quantities(ident: int, grp: int, values: list[Any], out: Rows) -> None:
    for v in values:
        for system, code, unit, low, high in quantity_values(v):
            _add(
                out,
                TABLE_BY_TYPE["quantity"],
                {
                    "hash_identity": ident,
                    "grp": grp,
                    "system": system,
                    "code": code,
                    "unit": unit,
                    "low": low,
                    "high": high,
                },
            )


# --------------------------------------------------------------------------- uri
def _uris(ident: int, grp: int, values: list[Any], out: Rows) -> None:
    for v in values:
        if isinstance(v, str) and v:
            _add(out, TABLE_BY_TYPE["uri"], {"hash_identity": ident, "grp": grp, "uri": v[:URI_LEN]})
