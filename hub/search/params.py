"""The search-parameter registry: every R4 SearchParameter plus custom ones from ``profiles/``.

Sources, in order (later ones override earlier ones with the same type and code):

* ``profiles/search-parameters.json``: the official R4 bundle (1,378 parameters);
* ``profiles/SearchParameter-*.json``: one custom SearchParameter each;
* ``profiles/search-parameters-*.json``: bundles of custom SearchParameters.

A parameter with several bases (``clinical-patient`` has 32) carries one
expression per resource type: the ``|``-parts whose root is that type (or
``Resource``/``DomainResource``; relative parts go to every base). Each
(type, parameter) gets one :class:`~hub.search.paths.Evaluator`, i.e. the fast
path where the expression allows it, else fhirpathpy compiled once.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hub.search.paths import RESOURCE_TYPES, TYPE2PARENT, Evaluator, root_of, split_union
from hub.search.values import h64

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"

#: parameters answered from the ``resource`` table, never indexed
RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})
#: parameters with no expression that we do not support
UNSUPPORTED = frozenset(
    {"_text", "_content", "_query", "_list", "_contained", "_containedType", "_filter", "near"}
)

MODIFIERS: dict[str, tuple[str, ...]] = {
    "string": ("missing", "exact", "contains"),
    "token": ("missing", "not", "text", "of-type"),
    "reference": ("missing", "identifier", "[type]"),
    "date": ("missing",),
    "number": ("missing",),
    "quantity": ("missing",),
    "uri": ("missing", "below", "above"),
    "composite": ("missing",),
}
PREFIXES: dict[str, tuple[str, ...]] = {
    "date": ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"),
    "number": ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"),
    "quantity": ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"),
}


@dataclass(frozen=True)
class Component:
    definition: str
    expression: str


@dataclass
class SearchParam:
    """One SearchParameter resource."""

    code: str
    type: str
    url: str
    description: str
    base: tuple[str, ...]
    expression: str | None
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()

    @classmethod
    def from_resource(cls, r: dict[str, Any]) -> SearchParam:
        return cls(
            code=r["code"],
            type=r["type"],
            url=r.get("url", ""),
            description=r.get("description", ""),
            base=tuple(r.get("base") or ()),
            expression=r.get("expression"),
            targets=tuple(r.get("target") or ()),
            components=tuple(Component(c["definition"], c["expression"]) for c in r.get("component") or ()),
        )


@dataclass
class BoundParam:
    """A search parameter as it applies to one resource type."""

    res_type: str
    param: SearchParam
    expression: str | None
    identity: int
    evaluator: Evaluator | None
    #: composites: (component type, component code suffix, expression) per component
    component_types: tuple[str, ...] = ()
    _component_evals: dict[tuple[int, str], Evaluator] = field(default_factory=dict, repr=False)
    _subs: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def code(self) -> str:
        return self.param.code

    @property
    def type(self) -> str:
        return self.param.type

    @property
    def indexed(self) -> bool:
        return self.evaluator is not None and self.param.code not in RESOURCE_COLUMNS

    def sub_identity(self, suffix: str) -> int:
        """Identity of derived index rows: ``:identifier``, ``:of-type``, ``:text``, composite ``$0``."""
        h = self._subs.get(suffix)
        if h is None:
            h = self._subs[suffix] = h64(self.res_type, self.param.code + suffix)
        return h

    def component_evaluator(self, index: int, item_path: str) -> Evaluator:
        key = (index, item_path)
        ev = self._component_evals.get(key)
        if ev is None:
            ev = Evaluator(self.param.components[index].expression, self.res_type, base_path=item_path)
            self._component_evals[key] = ev
        return ev

    def targets(self) -> tuple[str, ...]:
        t = self.param.targets
        if not t:
            return tuple(sorted(RESOURCE_TYPES))
        return t


def identity(res_type: str, code: str) -> int:
    return h64(res_type, code)


def _expand_base(base: str) -> list[str]:
    if base == "Resource":
        return sorted(RESOURCE_TYPES)
    if base == "DomainResource":
        return sorted(t for t in RESOURCE_TYPES if TYPE2PARENT.get(t) == "DomainResource")
    return [base]


#: element types one value of which is one date index row (a Timing is several)
ONE_ROW_DATE_TYPES = frozenset({"date", "dateTime", "instant", "Period"})
_PLAIN_PATH = re.compile(r"[A-Z][A-Za-z]*(?:\.[a-z][A-Za-z0-9]*)+")


@functools.cache
def _at_most_one(profiles_file: Path) -> dict[str, frozenset[str]]:
    """Element paths of the resources with ``max`` 1 (a choice without ``[x]``) → their types."""
    out: dict[str, frozenset[str]] = {}
    if not profiles_file.exists():
        return out
    for entry in orjson.loads(profiles_file.read_bytes()).get("entry", []):
        sd = entry.get("resource", {})
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource":
            continue
        if sd.get("derivation") == "constraint":
            continue
        for el in sd.get("snapshot", {}).get("element", []):
            if el.get("max") == "1" and "contentReference" not in el:
                out[el["path"].removesuffix("[x]")] = frozenset(t.get("code", "") for t in el.get("type", []))
    return out


class Registry:
    def __init__(self) -> None:
        self.profiles_dir = PROFILES_DIR
        self._one_date_row: dict[int, bool] = {}
        self.by_url: dict[str, SearchParam] = {}
        self._by_type: dict[str, dict[str, BoundParam]] = {t: {} for t in RESOURCE_TYPES}
        self.compartment: dict[str, tuple[str, ...]] = {}
        self.problems: list[str] = []

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, profiles_dir: Path | str | None = None) -> Registry:
        d = Path(profiles_dir) if profiles_dir else PROFILES_DIR
        reg = cls()
        reg.profiles_dir = d
        reg.add_all(_bundle_resources(d / "search-parameters.json"))
        for f in sorted(d.glob("SearchParameter-*.json")):
            reg.add_all([json.loads(f.read_bytes())])
        for f in sorted(d.glob("search-parameters-*.json")):
            reg.add_all(_bundle_resources(f))
        comp = d / "compartmentdefinition-patient.json"
        if comp.exists():
            reg.load_compartment(json.loads(comp.read_bytes()))
        reg.finish()
        return reg

    def add_all(self, resources: Iterable[dict[str, Any]]) -> None:
        for r in resources:
            if r.get("resourceType") == "SearchParameter":
                self.add(SearchParam.from_resource(r))

    def add(self, sp: SearchParam) -> None:
        if sp.url:
            self.by_url[sp.url] = sp
        per_type: dict[str, list[str]] = {}
        bases = [t for b in sp.base for t in _expand_base(b) if t in RESOURCE_TYPES]
        parts = split_union(sp.expression) if sp.expression else []
        for part in parts:
            root = root_of(part)
            if root in ("Resource", "DomainResource") or root is None:
                targets = bases
            elif root in bases:
                targets = [root]
            else:
                self.problems.append(f"{sp.url}: part {part!r} has no base")
                continue
            for t in targets:
                per_type.setdefault(t, []).append(part)
        for t in bases:
            exprs = per_type.get(t)
            expr = " | ".join(exprs) if exprs else None
            ev = Evaluator(expr, t) if expr and sp.code not in RESOURCE_COLUMNS else None
            self._by_type[t][sp.code] = BoundParam(t, sp, expr, h64(t, sp.code), ev)

    def load_compartment(self, comp: dict[str, Any]) -> None:
        for r in comp.get("resource", []):
            params = tuple(r.get("param") or ())
            if params:
                self.compartment[r["code"]] = params

    def finish(self) -> None:
        for params in self._by_type.values():
            for bp in params.values():
                if bp.type == "composite":
                    types = []
                    for comp in bp.param.components:
                        sp = self.by_url.get(comp.definition)
                        types.append(sp.type if sp else "token")
                        if sp is None:
                            self.problems.append(f"{bp.param.url}: component {comp.definition} unknown")
                    bp.component_types = tuple(types)
        for t, codes in self.compartment.items():
            for code in codes:
                found = self.get(t, code)
                if found is None or found.type != "reference":
                    self.problems.append(f"compartment Patient: {t}.{code} is not a reference parameter")

    def one_date_row(self, bp: BoundParam) -> bool:
        """Does a resource have at most one index row of date parameter ``bp``?

        True for a plain path of elements with ``max`` 1 ending in a date, dateTime, instant or
        Period (``Appointment.start``, ``Observation.effective``, ``Encounter.period``): then several
        range conditions on the parameter (``date=ge…&date=lt…``) can be checked on the same row.
        The R4 definitions are read on the first call.
        """
        found = self._one_date_row.get(bp.identity)
        if found is None:
            expr = bp.expression or ""
            found = bp.type == "date" and _PLAIN_PATH.fullmatch(expr) is not None
            if found:
                elements = _at_most_one(self.profiles_dir / "profiles-resources.json")
                steps = expr.split(".")
                prefixes = [".".join(steps[: i + 1]) for i in range(1, len(steps))]
                found = all(p in elements for p in prefixes) and bool(elements[prefixes[-1]]) and (
                    elements[prefixes[-1]] <= ONE_ROW_DATE_TYPES
                )
            self._one_date_row[bp.identity] = found
        return found

    # ------------------------------------------------------------------ lookup
    def get(self, res_type: str, code: str) -> BoundParam | None:
        params = self._by_type.get(res_type)
        return params.get(code) if params else None

    def params(self, res_type: str) -> list[BoundParam]:
        return list(self._by_type.get(res_type, {}).values())

    def indexed(self, res_type: str) -> list[BoundParam]:
        return [p for p in self._by_type.get(res_type, {}).values() if p.indexed]

    @property
    def resource_types(self) -> frozenset[str]:
        return RESOURCE_TYPES

    def compartment_params(self, res_type: str) -> tuple[str, ...]:
        return self.compartment.get(res_type, ())


def _bundle_resources(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_bytes())
    if data.get("resourceType") == "Bundle":
        return [e["resource"] for e in data.get("entry", []) if "resource" in e]
    return [data]


#: the name the application wiring uses
SearchRegistry = Registry
