"""FHIRPath for search parameters: a fast evaluator for the simple shapes, fhirpathpy for the rest.

Nearly every R4 search expression is a dotted path with a few decorations::

    Patient.name                              Appointment.participant.actor
    (Observation.value as Quantity)           Observation.value.as(Quantity)
    CarePlan.subject.where(resolve() is Patient)
    Patient.telecom.where(system='phone')     Bundle.entry[0].resource
    Patient.deceased.exists() and Patient.deceased != false

:func:`compile_fast` turns such an expression (one ``|``-part at a time) into a
list of *branches*: static sequences of dictionary operations, with choice types
(``value[x]``) and ``as``/``ofType`` resolved at compile time against the
fhirpathpy R4 model. Walking a branch over the JSON dict costs a few
microseconds, where fhirpathpy costs 40-300 µs per expression.

Anything outside that subset falls back to fhirpathpy, compiled once (lazily,
on first use: compiling all 2,000 expression parts up front takes seconds).
The fast path must give the same values as fhirpathpy; ``tests/search/
test_paths.py`` checks that over the official examples and Synthea data.

Deliberate, documented differences from fhirpathpy:

* ``X as T`` filters item by item (``ofType`` semantics). FHIRPath (and
  fhirpathpy) raise an error when ``X`` has more than one item; every search
  server treats ``as`` in search expressions as a filter.
* fhirpathpy has no ``resolve()``; both paths use :func:`resolve_type`: a
  reference resolves to a stub of the type named in ``Reference.reference``
  (relative, absolute or versioned), else ``Reference.type``.
* ``Resource.x`` / ``DomainResource.x`` roots: fhirpathpy does not match a
  ``Patient`` against ``Resource``; the fallback rewrites the root to the
  concrete type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fhirpathpy import compile as fp_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

MODEL: dict[str, Any] = models["r4"]
PATH2TYPE: dict[str, str] = MODEL["path2Type"]
CHOICES: dict[str, list[str]] = MODEL["choiceTypePaths"]
ELSEWHERE: dict[str, str] = MODEL["pathsDefinedElsewhere"]
TYPE2PARENT: dict[str, str] = MODEL["type2Parent"]

PRIMITIVES = frozenset(
    [
        "boolean",
        "integer",
        "string",
        "decimal",
        "uri",
        "url",
        "canonical",
        "base64Binary",
        "instant",
        "date",
        "dateTime",
        "time",
        "code",
        "oid",
        "id",
        "markdown",
        "unsignedInt",
        "positiveInt",
        "uuid",
        "xhtml",
    ]
)
#: every concrete resource type of R4
RESOURCE_TYPES: frozenset[str] = frozenset(
    t for t, p in TYPE2PARENT.items() if p in ("DomainResource", "Resource") and t != "DomainResource"
)
_BACKBONE: frozenset[str] = frozenset(
    k.rsplit(".", i)[0] for k in PATH2TYPE for i in range(1, k.count(".")) if k.count(".") > 1
)

_REF_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def resolve_type(ref: Any) -> str | None:
    """The resource type a Reference (or reference string) resolves to, by its text alone."""
    if isinstance(ref, dict):
        text = ref.get("reference")
        if not isinstance(text, str):
            t = ref.get("type")
            return t if isinstance(t, str) else None
    elif isinstance(ref, str):
        text = ref
    else:
        return None
    if text.startswith("#"):
        return None
    m = _REF_RE.search(text)
    if m and m.group(1) in RESOURCE_TYPES:
        return m.group(1)
    return None


def is_subtype(t: str, of: str) -> bool:
    seen = 0
    while t and seen < 20:
        if t == of:
            return True
        t = TYPE2PARENT.get(t, "")
        seen += 1
    return False


def _fhir_type(choice: str) -> str:
    """'DateTime' (as listed in choiceTypePaths) -> 'dateTime'."""
    low = choice[0].lower() + choice[1:]
    return low if low in PRIMITIVES else choice


# --------------------------------------------------------------------------- the fast subset
# A branch is a tuple of ops; each op maps a list of values to a list of values.
Op = Callable[[list[Any]], list[Any]]


def _get(key: str) -> Op:
    def op(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for it in items:
            if isinstance(it, dict):
                v = it.get(key)
                if v is None:
                    continue
                if isinstance(v, list):
                    out.extend(x for x in v if x is not None)
                else:
                    out.append(v)
        return out

    return op


def _where_eq(field: str, literal: str) -> Op:
    def op(items: list[Any]) -> list[Any]:
        return [it for it in items if isinstance(it, dict) and it.get(field) == literal]

    return op


def _where_resolve_is(types: frozenset[str]) -> Op:
    def op(items: list[Any]) -> list[Any]:
        return [it for it in items if resolve_type(it) in types]

    return op


def _resource_type_is(types: frozenset[str]) -> Op:
    def op(items: list[Any]) -> list[Any]:
        return [it for it in items if isinstance(it, dict) and it.get("resourceType") in types]

    return op


def _index(n: int) -> Op:
    def op(items: list[Any]) -> list[Any]:
        return items[n : n + 1]

    return op


def _root(types: frozenset[str] | None) -> Op:
    def op(items: list[Any]) -> list[Any]:
        if types is None:
            return items
        return [it for it in items if isinstance(it, dict) and it.get("resourceType") in types]

    return op


@dataclass(frozen=True)
class Branch:
    path: str  # model path of the values this branch yields ('HumanName', 'Patient.contact', 'string')
    ops: tuple[Op, ...]
    first_key: str | None = None  # the first JSON key read: no such key, no values

    def then(self, op: Op, path: str | None = None, key: str | None = None) -> Branch:
        return Branch(path or self.path, (*self.ops, op), self.first_key or key)

    def run(self, items: list[Any]) -> list[Any]:
        for op in self.ops:
            if not items:
                return items
            items = op(items)
        return items


class NotFast(Exception):
    """The expression is outside the fast subset."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<where_res>\.where\(\s*resolve\(\)\s+is\s+(?P<wr_t>[A-Za-z]+)\s*\))
    | (?P<where_eq>\.where\(\s*(?P<we_f>[a-z][A-Za-z]*)\s*=\s*'(?P<we_v>[^'\\]*)'\s*\))
    | (?P<as_fn>\.(?:as|ofType)\(\s*(?P<af_t>[A-Za-z]+)\s*\))
    | (?P<index>\[(?P<ix>\d+)\])
    | (?P<dot>\.(?P<name>[a-z][A-Za-z0-9]*))
    | (?P<as_op>as\s+(?P<ao_t>[A-Za-z]+))
    )""",
    re.VERBOSE,
)


def _step(path: str, name: str) -> list[tuple[str, str]]:
    """(json key, model path of the value) for child ``name`` of an element at ``path``."""
    full = f"{path}.{name}"
    full = ELSEWHERE.get(full, full)
    if full in CHOICES:
        return [(name + c, _type_path(_fhir_type(c))) for c in CHOICES[full]]
    t = PATH2TYPE.get(full)
    if t is None:
        if full in _BACKBONE:
            return [(name, full)]
        raise NotFast(f"unknown element {full}")
    return [(name, _type_path(t))]


def _type_path(t: str) -> str:
    if t.startswith("System."):
        return "string"
    if t in ("BackboneElement", "Element"):
        raise NotFast(f"untyped element {t}")
    return t


def _as_filter(path: str, t: str) -> bool | None:
    """Does a value at ``path`` pass ``as t``? None when it depends on the data (Resource)."""
    if path == "Resource" or path == "DomainResource":
        return None
    if path in _BACKBONE:
        return False
    return is_subtype(path, t)


def compile_fast(expr: str, root_type: str | None) -> list[Branch]:
    """Compile one ``|``-part. ``root_type`` is the model path relative expressions start from."""
    expr = expr.strip()
    if expr.startswith("("):
        close = _matching_paren(expr, 0)
        if close == len(expr) - 1:
            return compile_fast(expr[1:-1], root_type)
        rest = expr[close + 1 :]
        out: list[Branch] = []
        for b in compile_fast(expr[1:close], root_type):
            out.extend(_continue_all(b, rest))
        return out
    m = re.match(r"([A-Za-z][A-Za-z0-9]*)", expr)
    if not m:
        raise NotFast(expr)
    first = m.group(1)
    if first[0].isupper():
        if first not in RESOURCE_TYPES and first not in ("Resource", "DomainResource"):
            raise NotFast(f"unknown root {first}")
        types = None if first in ("Resource", "DomainResource") else frozenset([first])
        start = Branch(first, (_root(types),))
        rest = expr[m.end() :]
    else:
        if root_type is None:
            raise NotFast("relative path without a base")
        start = Branch(root_type, ())
        rest = "." + expr
    return _continue_all(start, rest)


def _continue_all(start: Branch, rest: str) -> list[Branch]:
    branches = [start]
    pos = 0
    while pos < len(rest):
        if not rest[pos:].strip():
            break
        m = _TOKEN.match(rest, pos)
        if not m:
            raise NotFast(f"cannot parse {rest[pos:]!r}")
        pos = m.end()
        nxt: list[Branch] = []
        for b in branches:
            if m.group("dot"):
                if b.path in PRIMITIVES or b.path == "string":
                    raise NotFast("navigation into a primitive")
                for key, p in _step(b.path, m.group("name")):
                    nxt.append(b.then(_get(key), p, key))
            elif m.group("where_res"):
                nxt.append(b.then(_where_resolve_is(frozenset([m.group("wr_t")]))))
            elif m.group("where_eq"):
                field = m.group("we_f")
                # the compared field must be a plain primitive child of the element
                kids = _step(b.path, field) if b.path not in PRIMITIVES else []
                if len(kids) != 1 or (kids[0][1] not in PRIMITIVES and kids[0][1] != "string"):
                    raise NotFast("where() on a non-primitive")
                nxt.append(b.then(_where_eq(field, m.group("we_v"))))
            elif m.group("as_fn") or m.group("as_op"):
                t = m.group("af_t") or m.group("ao_t")
                ok = _as_filter(b.path, t)
                if ok is None:
                    if t not in RESOURCE_TYPES:
                        raise NotFast("as on a resource with a non-resource type")
                    nxt.append(b.then(_resource_type_is(frozenset([t])), t))
                elif ok:
                    nxt.append(b)
            elif m.group("index"):
                if len(branches) != 1:
                    raise NotFast("indexer over a choice")
                nxt.append(b.then(_index(int(m.group("ix")))))
        branches = nxt
    return branches


def _matching_paren(s: str, i: int) -> int:
    depth = 0
    quoted = False
    for j in range(i, len(s)):
        ch = s[j]
        if ch == "'":
            quoted = not quoted
        elif not quoted:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    return j
    raise NotFast("unbalanced parentheses")


def split_union(expr: str) -> list[str]:
    """Split on top-level ``|``."""
    parts: list[str] = []
    depth = 0
    quoted = False
    cur: list[str] = []
    for ch in expr:
        if ch == "'":
            quoted = not quoted
        elif not quoted:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "|" and depth == 0:
                parts.append("".join(cur).strip())
                cur = []
                continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def root_of(part: str) -> str | None:
    """The leading type name of an expression part (``(Observation.value as X)`` -> Observation)."""
    m = re.match(r"[\s(]*([A-Za-z][A-Za-z0-9]*)", part)
    if not m or not m.group(1)[0].isupper():
        return None
    return m.group(1)


_DECEASED = re.compile(r"^([A-Za-z][A-Za-z.]*)\.exists\(\)\s+and\s+([A-Za-z][A-Za-z.]*)\s*!=\s*false$")


# --------------------------------------------------------------------------- evaluators
def _fp_resolve(inputs: list[Any]) -> list[Any]:
    out = []
    for r in inputs:
        t = resolve_type(r)
        if t is not None:
            out.append(ResourceNode.create_node({"resourceType": t}))
    return out


FP_OPTIONS: dict[str, Any] = {"userInvocationTable": {"resolve": {"fn": _fp_resolve, "arity": {0: []}}}}


class Evaluator:
    """One expression (a whole ``|``-union) for one resource type.

    ``__call__(resource)`` gives the values; ``items(resource)`` also gives each
    value's model path (used for composite parameters, whose components are
    evaluated relative to each item).
    """

    def __init__(self, expression: str, res_type: str | None, base_path: str | None = None) -> None:
        self.expression = expression
        self.res_type = res_type
        self.base_path = base_path or res_type
        self.branches: list[Branch] | None = []
        self.special: list[Branch] | None = None  # exists() and != false
        self._fp: Callable[..., list[Any]] | None = None
        try:
            parts = split_union(expression)
            if len(parts) == 1 and (m := _DECEASED.match(parts[0])) and m.group(1) == m.group(2):
                self.special = compile_fast(m.group(1), self.base_path)
                self.branches = None
            else:
                for part in parts:
                    self.branches.extend(compile_fast(part, self.base_path))
        except NotFast:
            self.branches = None
            self.special = None
        fast = self.branches if self.branches is not None else self.special
        keys = [b.first_key for b in fast] if fast is not None and self.special is None else [None]
        #: top-level keys of the input this expression reads; None: cannot tell
        self.top_keys: frozenset[str] | None = None if None in keys else frozenset(k for k in keys if k)

    @property
    def fast(self) -> bool:
        return self.branches is not None or self.special is not None

    def fhirpath_expression(self) -> str:
        expr = self.expression
        if self.res_type:
            expr = re.sub(r"(?<![A-Za-z.])(?:DomainResource|Resource)\.", f"{self.res_type}.", expr)
        return expr

    def compiled(self) -> Callable[..., list[Any]]:
        if self._fp is None:
            self._fp = fp_compile(self.fhirpath_expression(), MODEL, FP_OPTIONS)
        return self._fp

    def __call__(self, resource: Any, context: dict[str, Any] | None = None) -> list[Any]:
        if self.branches is not None:
            items = [resource]
            if len(self.branches) == 1:
                return self.branches[0].run(items)
            out: list[Any] = []
            for b in self.branches:
                out.extend(b.run(items))
            return out
        if self.special is not None:
            vals = [v for b in self.special for v in b.run([resource])]
            if not vals or (len(vals) == 1 and vals[0] is False):
                return [False]
            return [True]
        return self.slow(resource, context)

    def slow(
        self, resource: Any, context: dict[str, Any] | None = None, path: str | None = None
    ) -> list[Any]:
        """fhirpathpy; ``path`` types a non-resource input (a composite's item)."""
        fn = self.compiled()
        node = ResourceNode.create_node(resource, path) if path else resource
        try:
            out = fn(node, context or {})
        except Exception:  # noqa: BLE001 - an expression error yields no index values, as in HAPI
            return []
        return [v for v in out if v is not None]

    def items(self, resource: Any) -> list[tuple[str, Any]]:
        """(model path, value) pairs; only for the fast subset."""
        if self.branches is None:
            raise NotFast(self.expression)
        out: list[tuple[str, Any]] = []
        for b in self.branches:
            out.extend((b.path, v) for v in b.run([resource]))
        return out


def evaluate_many(evaluators: Iterable[Evaluator], resource: Any) -> list[Any]:
    out: list[Any] = []
    for e in evaluators:
        out.extend(e(resource))
    return out
