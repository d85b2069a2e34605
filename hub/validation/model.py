"""Compile R4 StructureDefinition snapshots into a compact lookup structure.

Every complex type, resource and backbone element becomes a :class:`TypeDef`
whose ``props`` maps each JSON property name (choice elements expanded:
``value[x]`` -> ``valueString``, ``valueQuantity`` ...) to an :class:`Elem`.
The walker in :mod:`hub.validation.validator` then needs one dict lookup per
JSON property.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.validation.errata import corrected
from hub.validation.primitives import PrimType, build_primitive

SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"

# Elem.kind
PRIMITIVE = 0
COMPLEX = 1
RESOURCE = 2
XHTML = 3

# constraints handled natively (see validator.py) or not at all
NATIVE_CONSTRAINTS = frozenset(
    {
        "ele-1",  # empty objects / primitives without value or extension
        "ext-1",  # extension xor value
        "ref-1",  # local references resolve to contained resources
        "dom-2",
        "dom-3",
        "dom-4",
        "dom-5",
        "txt-1",  # htmlChecks()
        "txt-2",
    }
)


@dataclass(slots=True, eq=False)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str
    source_type: str  # FHIRPath type path the expression is evaluated on


@dataclass(slots=True, eq=False)
class Binding:
    value_set: str
    strength: str


@dataclass(slots=True, eq=False)
class Elem:
    name: str  # JSON property name
    path: str  # definition path, for messages (e.g. Observation.value[x])
    fhirpath: str  # FHIRPath step for issue expressions (e.g. value.ofType(Quantity))
    min: int
    max: int | None  # None: unbounded
    array: bool
    kind: int
    type_code: str
    prim: PrimType | None = None
    typedef: TypeDef | None = None  # complex/backbone content
    binding: Binding | None = None
    targets: frozenset[str] | None = None  # Reference: allowed target types, None = any
    choice: str | None = None  # choice group base name
    constraints: tuple[Constraint, ...] = ()
    simple_quantity: bool = False


@dataclass(slots=True, eq=False)
class TypeDef:
    name: str  # type name or backbone path
    fp_type: str  # type path for FHIRPath evaluation
    props: dict[str, Elem] = field(default_factory=dict)
    required: tuple[Elem, ...] = ()
    choices: dict[str, tuple[Elem, ...]] = field(default_factory=dict)
    choice_min: dict[str, int] = field(default_factory=dict)
    required_choices: tuple[tuple[str, int], ...] = ()
    is_extension: bool = False
    is_bundle_entry: bool = False
    constraints: tuple[Constraint, ...] = ()
    is_resource: bool = False
    is_domain_resource: bool = False


@dataclass(slots=True)
class Model:
    types: dict[str, TypeDef]  # complex types and resource types by name
    backbones: dict[str, TypeDef]  # backbone elements by path
    primitives: dict[str, PrimType]
    resource_types: frozenset[str]
    extension_holder: TypeDef  # the `_x` sibling of a primitive: Element (id, extension)


def _type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext.get("valueUrl") or ext.get("valueUri") or "string")
        return "string"
    return code


def _max(el: dict[str, Any]) -> int | None:
    m = el.get("max", "*")
    return None if m == "*" else int(m)


def _base_max(el: dict[str, Any]) -> str:
    base = el.get("base") or {}
    return str(base.get("max", el.get("max", "*")))


def _constraints(el: dict[str, Any], fp_type: str) -> tuple[Constraint, ...]:
    out = []
    for c in el.get("constraint", []):
        key = c.get("key", "")
        if key in NATIVE_CONSTRAINTS or c.get("severity") != "error" or not c.get("expression"):
            continue
        out.append(Constraint(key, "error", c.get("human", ""), corrected(key, c["expression"]), fp_type))
    return tuple(out)


def _targets(types: list[dict[str, Any]], resource_types: frozenset[str]) -> frozenset[str] | None:
    allowed: set[str] = set()
    for t in types:
        if t.get("code") != "Reference":
            continue
        profiles = t.get("targetProfile") or []
        if not profiles:
            return None
        for p in profiles:
            name = p[len(SD_PREFIX) :] if p.startswith(SD_PREFIX) else None
            if name is None or name not in resource_types:
                return None  # Resource, or a profile we can't map: any type
            allowed.add(name)
    return frozenset(allowed) if allowed else None


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


class _Compiler:
    def __init__(self, sds: list[dict[str, Any]]) -> None:
        self.sds = {sd["id"]: sd for sd in sds}
        self.primitives: dict[str, PrimType] = {}
        self.types: dict[str, TypeDef] = {}
        self.backbones: dict[str, TypeDef] = {}
        self.pending: list[tuple[Elem, str]] = []  # complex type references to link
        self.pending_cr: list[tuple[Elem, str]] = []  # contentReference
        self.resource_types = frozenset(
            sd["type"]
            for sd in sds
            if sd.get("kind") == "resource"
            and not sd.get("abstract")
            and sd.get("derivation") == "specialization"
            and sd.get("fhirVersion", "4.0.1") == "4.0.1"
        )

    def compile(self) -> Model:
        for sd in self.sds.values():
            if sd.get("kind") == "primitive-type":
                regex = None
                for el in sd["snapshot"]["element"]:
                    if el["path"].endswith(".value"):
                        for t in el.get("type", []):
                            for ext in t.get("extension", []):
                                if ext.get("url") == REGEX_EXT:
                                    regex = ext.get("valueString")
                self.primitives[sd["type"]] = build_primitive(sd["type"], regex)
        self.primitives.setdefault("xhtml", build_primitive("xhtml", None))
        for sd in self.sds.values():
            kind = sd.get("kind")
            if sd.get("derivation") == "constraint" or kind == "primitive-type" or kind == "logical":
                continue
            if (
                kind == "resource"
                and sd["type"] not in self.resource_types
                and sd["type"]
                not in (
                    "Resource",
                    "DomainResource",
                )
            ):
                continue  # e.g. R4B additions in the source bundle
            self._compile_sd(sd)
        for elem, type_name in self.pending:
            elem.typedef = self.types.get(type_name)
        for elem, ref in self.pending_cr:
            elem.typedef = self.backbones.get(ref) or self.types.get(ref)
            if elem.typedef is not None:
                own = {c.key for c in elem.typedef.constraints}
                elem.constraints = tuple(c for c in elem.constraints if c.key not in own)
        holder = TypeDef(name="Element", fp_type="Element")
        element_td = self.types["Element"]
        holder.props = dict(element_td.props)
        return Model(
            types=self.types,
            backbones=self.backbones,
            primitives=self.primitives,
            resource_types=self.resource_types,
            extension_holder=holder,
        )

    def _compile_sd(self, sd: dict[str, Any]) -> None:
        elements = sd["snapshot"]["element"]
        root_path = elements[0]["path"]
        is_resource = sd.get("kind") == "resource"
        root = TypeDef(name=root_path, fp_type=root_path, is_resource=is_resource)
        root.constraints = _constraints(elements[0], root_path)
        if is_resource:
            root.is_domain_resource = any(e["path"] == f"{root_path}.text" for e in elements)
        self.types[sd["type"]] = root
        tds: dict[str, TypeDef] = {root_path: root}
        children_of: set[str] = {e["path"].rsplit(".", 1)[0] for e in elements if "." in e["path"]}
        for el in elements[1:]:
            if el.get("sliceName"):
                continue
            path: str = el["path"]
            parent_path, name = path.rsplit(".", 1)
            parent = tds.get(parent_path)
            if parent is None:
                continue  # child of a slice, or of something we skipped
            types = el.get("type") or []
            array = _base_max(el) != "1"
            mn = int(el.get("min", 0))
            mx = _max(el)
            binding = None
            b = el.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                binding = Binding(b["valueSet"], "required")
            if "contentReference" in el:
                ref = el["contentReference"].lstrip("#")
                elem = Elem(name, path, name, mn, mx, array, COMPLEX, "BackboneElement", binding=binding)
                elem.constraints = _constraints(el, ref)
                self.pending_cr.append((elem, ref))
                parent.props[name] = elem
                continue
            if name.endswith("[x]"):
                base = name[:-3]
                group = []
                for t in types:
                    code = _type_code(t)
                    jname = base + _cap(code)
                    elem = self._make_elem(
                        jname, path, f"{base}.ofType({code})", mn, mx, array, t, [t], binding
                    )
                    elem.choice = base
                    elem.constraints = _constraints(el, code)
                    parent.props[jname] = elem
                    group.append(elem)
                parent.choices[base] = tuple(group)
                parent.choice_min[base] = mn
                continue
            if not types:
                continue
            t = types[0]
            code = _type_code(t)
            if code in ("BackboneElement", "Element") and path in children_of:
                td = TypeDef(name=path, fp_type=path)
                td.constraints = _constraints(el, path)
                tds[path] = td
                self.backbones[path] = td
                elem = Elem(name, path, name, mn, mx, array, COMPLEX, code, typedef=td, binding=binding)
                parent.props[name] = elem
                continue
            elem = self._make_elem(name, path, name, mn, mx, array, t, types, binding)
            elem.constraints = _constraints(el, code)
            parent.props[name] = elem
        for td in tds.values():
            td.required = tuple(e for e in td.props.values() if e.min > 0 and e.choice is None)
            td.required_choices = tuple((b, m) for b, m in td.choice_min.items() if m > 0)
            td.is_extension = td.name == "Extension"
            td.is_bundle_entry = td.name == "Bundle.entry"

    def _make_elem(
        self,
        name: str,
        path: str,
        fhirpath: str,
        mn: int,
        mx: int | None,
        array: bool,
        t: dict[str, Any],
        types: list[dict[str, Any]],
        binding: Binding | None,
    ) -> Elem:
        code = _type_code(t)
        if code in self.primitives:
            kind = XHTML if code == "xhtml" else PRIMITIVE
            return Elem(
                name, path, fhirpath, mn, mx, array, kind, code, prim=self.primitives[code], binding=binding
            )
        if code == "Resource" or code in self.resource_types:
            return Elem(name, path, fhirpath, mn, mx, array, RESOURCE, code, binding=binding)
        elem = Elem(name, path, fhirpath, mn, mx, array, COMPLEX, code, binding=binding)
        if code == "Reference":
            elem.targets = _targets(types, self.resource_types)
        if code == "Quantity" and any(p.endswith("/SimpleQuantity") for p in t.get("profile", [])):
            elem.simple_quantity = True
        self.pending.append((elem, code))
        return elem


def compile_model(sds: list[dict[str, Any]]) -> Model:
    return _Compiler(sds).compile()
