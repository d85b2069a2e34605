"""A fast evaluator for the simple FHIRPath invariants, on fhirpathpy's parse tree.

fhirpathpy evaluates an invariant in ~30-90 µs, which alone would exceed the
validator's budget (a typical resource evaluates 3-10 invariants). Most R4
invariants only test children of their context node with ``exists()``,
``empty()``, ``count()``, ``=``/``in`` against literals and boolean logic. For
those, this module turns the tree that :func:`fhirpathpy.parser.parse` produces
(the FHIRPath grammar is not re-implemented here) into Python closures, typed
statically against the compiled :class:`~hub.validation.model.TypeDef`, which
run in 1-5 µs.

Anything outside the supported subset raises :class:`Unsupported` while
compiling, and data the closures cannot judge exactly like fhirpathpy would
(dates, quantities, multi-item boolean operands, ...) raises :class:`Fallback`
while evaluating; in both cases the caller evaluates with fhirpathpy instead.
``tests/test_validation_unit.py`` checks that both agree on every invariant
evaluated over the official examples and the validator test cases.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from hub.validation.model import PRIMITIVE, RESOURCE, TypeDef


class Unsupported(Exception):
    """The expression uses something this evaluator does not implement."""


class Fallback(Exception):
    """This data needs the full evaluator."""


class _NoValue:
    """A primitive present only through its ``_name`` sibling (extensions, no value)."""

    __slots__ = ()


NOVALUE = _NoValue()
_MISSING = object()

Env = tuple[Any, Any]  # (%resource, %rootResource)
Fn = Callable[[list[Any], Env], list[Any]]
_DATE_TYPES = frozenset({"date", "dateTime", "instant", "time"})
_STRINGY = frozenset(
    {
        "string",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "markdown",
        "base64Binary",
        "xhtml",
        "String",
    }
)
_NUMERIC = frozenset({"integer", "decimal", "unsignedInt", "positiveInt", "Integer", "Decimal"})


@dataclass(slots=True)
class _Choice:
    """Static type of a choice element navigated without a type (``value``)."""

    parent: Fn
    base: str
    keys: dict[str, tuple[str, Any]]  # type code -> (json key, static type)


_RESOURCE = "<Resource>"  # static type of a resource-typed element or %resource
StaticType = Any  # TypeDef | str (primitive type name) | _Choice | None (unknown)


def _bool(coll: list[Any]) -> bool | None:
    """Singleton boolean evaluation of an operand."""
    if not coll:
        return None
    if len(coll) == 1 and type(coll[0]) is bool:
        return coll[0]
    raise Fallback()


def _single(coll: list[Any]) -> Any:
    if len(coll) != 1:
        raise Fallback()
    v = coll[0]
    if v is NOVALUE or type(v) is dict:
        raise Fallback()
    return v


class _Compiler:
    def __init__(self, types: dict[str, TypeDef], context: TypeDef) -> None:
        self.types = types
        # the type of %resource, when the context says it (a resource or one of its backbones)
        root = types.get(context.fp_type.split(".", 1)[0])
        self.resource_td = root if root is not None and root.is_resource else None

    # -- entry -------------------------------------------------------------------------------
    def compile(self, tree: dict[str, Any], td: TypeDef) -> Fn:
        fn, _ = self.expr(tree["children"][0], td)
        return fn

    def expr(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        kind = node.get("type")
        method = getattr(self, f"_{kind}", None)
        if method is None:
            raise Unsupported(kind)
        result: tuple[Fn, StaticType] = method(node, st)
        return result

    # -- terms -------------------------------------------------------------------------------
    def _TermExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        return self.expr(node["children"][0], st)

    def _ParenthesizedTerm(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        return self.expr(node["children"][0], st)

    def _InvocationTerm(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        return self.invocation(node["children"][0], (lambda focus, env: focus), st)

    def _LiteralTerm(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        lit = node["children"][0]
        text = lit.get("text", "")
        kind = lit.get("type")
        value: Any
        if kind == "StringLiteral":
            value = _unescape(text[1:-1])
            return (lambda focus, env: [value]), "String"
        if kind == "BooleanLiteral":
            value = text == "true"
            return (lambda focus, env: [value]), "Boolean"
        if kind == "NumberLiteral":
            value = int(text) if re.fullmatch(r"[0-9]+", text) else float(Decimal(text))
            return (lambda focus, env: [value]), "Decimal"
        if kind == "NullLiteral":
            return (lambda focus, env: []), None
        raise Unsupported(kind)

    def _ExternalConstantTerm(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        const = node["children"][0]["children"][0]
        name = const.get("text", "")
        if name == "ucum":
            return (lambda focus, env: ["http://unitsofmeasure.org"]), "String"
        if name == "resource":
            return (lambda focus, env: [env[0]]), self.resource_td or _RESOURCE
        if name == "rootResource":
            return (lambda focus, env: [env[1]]), _RESOURCE
        raise Unsupported(name)

    # -- invocations -------------------------------------------------------------------------
    def _InvocationExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        left, lst = self.expr(node["children"][0], st)
        return self.invocation(node["children"][1], left, lst)

    def _IndexerExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        left, lst = self.expr(node["children"][0], st)
        idx_fn, _ = self.expr(node["children"][1], st)
        if isinstance(lst, _Choice):
            lst = None

        def index(focus: list[Any], env: Env) -> list[Any]:
            coll = left(focus, env)
            i = _single(idx_fn(focus, env))
            if type(i) is not int:
                raise Fallback()
            return coll[i : i + 1] if 0 <= i < len(coll) else []

        return index, lst

    def invocation(self, inv: dict[str, Any], left: Fn, lst: StaticType) -> tuple[Fn, StaticType]:
        kind = inv.get("type")
        if kind == "MemberInvocation":
            return self.member(inv["children"][0]["text"], left, lst)
        if kind == "FunctionInvocation":
            return self.function(inv["children"][0], left, lst)
        if kind == "ThisInvocation":
            return left, lst
        raise Unsupported(kind)

    def member(self, name: str, left: Fn, lst: StaticType) -> tuple[Fn, StaticType]:
        if lst is _RESOURCE:
            lst = self.types.get("DomainResource")  # id, meta, text ... of any resource
        if not isinstance(lst, TypeDef):
            raise Unsupported(f"navigation from {lst!r}")
        if lst.is_resource and name == lst.name:
            # `Appointment.status` written from the Appointment itself
            def same(focus: list[Any], env: Env) -> list[Any]:
                return [x for x in left(focus, env) if type(x) is dict and x.get("resourceType") == name]

            return same, lst
        el = lst.props.get(name)
        if el is not None and el.choice is None:
            if el.kind == RESOURCE:
                return _nav(left, name, False), _RESOURCE
            out: StaticType = el.prim.name if el.kind == PRIMITIVE and el.prim else el.typedef
            if el.kind != PRIMITIVE and el.typedef is None:
                out = None
            return _nav(left, name, el.kind == PRIMITIVE), out
        group = lst.choices.get(name)
        if group:
            keys = {
                e.type_code: (e.name, e.prim.name if e.kind == PRIMITIVE and e.prim else e.typedef)
                for e in group
            }
            navs = [_nav(left, e.name, e.kind == PRIMITIVE) for e in group]

            def choice(focus: list[Any], env: Env) -> list[Any]:
                out: list[Any] = []
                for nav in navs:
                    out.extend(nav(focus, env))
                return out

            return choice, _Choice(left, name, keys)
        raise Unsupported(f"unknown element {name}")

    def function(self, fn_node: dict[str, Any], left: Fn, lst: StaticType) -> tuple[Fn, StaticType]:
        name = fn_node["children"][0]["text"]
        params = fn_node["children"][1]["children"] if len(fn_node["children"]) > 1 else []
        elem_st = None if isinstance(lst, _Choice) else lst

        if name in ("ofType", "as", "is"):
            if len(params) != 1:
                raise Unsupported(name)
            if lst is _RESOURCE:
                return self._resource_type_op(name, _type_name(params[0]), left)
            if not isinstance(lst, _Choice):
                raise Unsupported(name)
            return self._type_op(name, _type_name(params[0]), lst)
        if params and name not in (
            "exists",
            "where",
            "all",
            "select",
            "matches",
            "startsWith",
            "contains",
            "trace",
            "intersect",
            "combine",
        ):
            raise Unsupported(name)
        if name in ("intersect", "combine"):
            other, ost = self.expr(params[0], None)
            if name == "combine":
                return (lambda focus, env: left(focus, env) + other(focus, env)), (
                    lst if lst == ost else None
                )

            def intersect(focus: list[Any], env: Env) -> list[Any]:
                theirs = other(focus, env)
                return _dedupe([x for x in left(focus, env) if any(_same(x, y) for y in theirs)])

            return intersect, elem_st
        if name == "exists":
            if params:
                crit, _ = self.expr(params[0], elem_st)
                return (
                    lambda focus, env: [any(crit([x], env) == [True] for x in left(focus, env))]
                ), "Boolean"
            return (lambda focus, env: [bool(left(focus, env))]), "Boolean"
        if name == "empty":
            return (lambda focus, env: [not left(focus, env)]), "Boolean"
        if name == "not":

            def not_(focus: list[Any], env: Env) -> list[Any]:
                b = _bool(left(focus, env))
                return [] if b is None else [not b]

            return not_, "Boolean"
        if name == "count":
            return (lambda focus, env: [len(left(focus, env))]), "Integer"
        if name == "hasValue":

            def has_value(focus: list[Any], env: Env) -> list[Any]:
                coll = left(focus, env)
                return [len(coll) == 1 and coll[0] is not NOVALUE and type(coll[0]) is not dict]

            return has_value, "Boolean"
        if name == "first":
            return (lambda focus, env: left(focus, env)[:1]), elem_st
        if name == "where":
            crit, _ = self.expr(params[0], elem_st)
            return (lambda focus, env: [x for x in left(focus, env) if crit([x], env) == [True]]), elem_st
        if name == "all":
            crit, _ = self.expr(params[0], elem_st)
            return (lambda focus, env: [all(crit([x], env) == [True] for x in left(focus, env))]), "Boolean"
        if name == "select":
            proj, pst = self.expr(params[0], elem_st)

            def select(focus: list[Any], env: Env) -> list[Any]:
                out: list[Any] = []
                for x in left(focus, env):
                    out.extend(proj([x], env))
                return out

            return select, pst
        if name == "trace":
            return left, lst
        if name == "isDistinct":

            def is_distinct(focus: list[Any], env: Env) -> list[Any]:
                coll = left(focus, env)
                return [len(_dedupe(coll)) == len(coll)]

            return is_distinct, "Boolean"
        if name in ("matches", "startsWith", "contains"):
            if len(params) != 1:
                raise Unsupported(name)
            arg_fn, _ = self.expr(params[0], None)
            return self._string_fn(name, left, arg_fn), "Boolean"
        if name == "length":

            def length(focus: list[Any], env: Env) -> list[Any]:
                coll = left(focus, env)
                if not coll:
                    return []
                v = _single(coll)
                if type(v) is not str:
                    raise Fallback()
                return [len(v)]

            return length, "Integer"
        raise Unsupported(name)

    def _resource_type_op(self, name: str, tname: str, left: Fn) -> tuple[Fn, StaticType]:
        td = self.types.get(tname)
        if td is None or not td.is_resource:
            raise Unsupported(f"type {tname}")
        if name == "is":

            def is_(focus: list[Any], env: Env) -> list[Any]:
                coll = left(focus, env)
                if not coll:
                    return []
                if len(coll) > 1:
                    raise Fallback()
                return [type(coll[0]) is dict and coll[0].get("resourceType") == tname]

            return is_, "Boolean"
        return (
            lambda focus, env: [
                x for x in left(focus, env) if type(x) is dict and x.get("resourceType") == tname
            ]
        ), td

    def _type_op(self, name: str, tname: str, ch: _Choice) -> tuple[Fn, StaticType]:
        if tname not in ch.keys:
            # a type the choice does not allow: never present
            if name == "is":
                return _is_fn(ch, None), "Boolean"
            return (lambda focus, env: []), None
        key, st = ch.keys[tname]
        if name == "is":
            return _is_fn(ch, key), "Boolean"
        return _nav(ch.parent, key, isinstance(st, str)), st

    def _string_fn(self, name: str, left: Fn, arg_fn: Fn) -> Fn:
        def fn(focus: list[Any], env: Env) -> list[Any]:
            coll = left(focus, env)
            arg = arg_fn(focus, env)
            if not coll or not arg:
                return []
            s = _single(coll)
            a = _single(arg)
            if type(s) is not str or type(a) is not str:
                raise Fallback()
            if name == "matches":
                return [re.search(a, s, re.DOTALL) is not None]
            if name == "startsWith":
                return [s.startswith(a)]
            return [a in s]

        return fn

    # -- operators ---------------------------------------------------------------------------
    def _binary(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType, Fn, StaticType, str]:
        a, ast = self.expr(node["children"][0], st)
        b, bst = self.expr(node["children"][1], st)
        op = node["terminalNodeText"][0]
        return a, ast, b, bst, op

    def _AndExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, _, b, _, _ = self._binary(node, st)

        def and_(focus: list[Any], env: Env) -> list[Any]:
            x = _bool(a(focus, env))
            if x is False:
                return [False]
            y = _bool(b(focus, env))
            if y is False:
                return [False]
            return [True] if x is True and y is True else []

        return and_, "Boolean"

    def _OrExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, _, b, _, op = self._binary(node, st)
        if op == "xor":

            def xor(focus: list[Any], env: Env) -> list[Any]:
                x = _bool(a(focus, env))
                y = _bool(b(focus, env))
                return [] if x is None or y is None else [x != y]

            return xor, "Boolean"

        def or_(focus: list[Any], env: Env) -> list[Any]:
            x = _bool(a(focus, env))
            if x is True:
                return [True]
            y = _bool(b(focus, env))
            if y is True:
                return [True]
            return [False] if x is False and y is False else []

        return or_, "Boolean"

    def _ImpliesExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, _, b, _, _ = self._binary(node, st)

        def implies(focus: list[Any], env: Env) -> list[Any]:
            x = _bool(a(focus, env))
            if x is False:
                return [True]
            y = _bool(b(focus, env))
            if x is True:
                return [] if y is None else [y]
            return [True] if y is True else []

        return implies, "Boolean"

    def _UnionExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, ast, b, bst, _ = self._binary(node, st)
        return (lambda focus, env: _dedupe(a(focus, env) + b(focus, env))), (ast if ast == bst else None)

    def _EqualityExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, ast, b, bst, op = self._binary(node, st)
        if op not in ("=", "!="):
            raise Unsupported(op)
        for t in (ast, bst):
            if isinstance(t, TypeDef | _Choice) or t in _DATE_TYPES or t is None:
                raise Unsupported("equality on non-primitive or date values")
        negate = op == "!="

        def eq(focus: list[Any], env: Env) -> list[Any]:
            x = a(focus, env)
            y = b(focus, env)
            if not x or not y:
                return []
            r = _equal(_single(x), _single(y))
            return [r != negate]

        return eq, "Boolean"

    def _MembershipExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, ast, b, bst, op = self._binary(node, st)
        item_fn, coll_fn = (a, b) if op == "in" else (b, a)
        item_st = ast if op == "in" else bst
        if isinstance(item_st, TypeDef | _Choice) or item_st in _DATE_TYPES or item_st is None:
            raise Unsupported("membership of non-primitive values")

        def member(focus: list[Any], env: Env) -> list[Any]:
            x = item_fn(focus, env)
            if not x:
                return []
            v = _single(x)
            coll = coll_fn(focus, env)
            return [any(_equal(v, c) for c in coll if c is not NOVALUE and type(c) is not dict)]

        return member, "Boolean"

    def _InequalityExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, ast, b, bst, op = self._binary(node, st)
        dates = ast in _DATE_TYPES and bst in _DATE_TYPES
        for t in (ast, bst):
            if not (t in _NUMERIC or t in _STRINGY or dates):
                raise Unsupported("comparison of non-numeric, non-string values")

        def cmp(focus: list[Any], env: Env) -> list[Any]:
            x = a(focus, env)
            y = b(focus, env)
            if not x or not y:
                return []
            u = _single(x)
            v = _single(y)
            if type(u) is bool or type(v) is bool:
                raise Fallback()
            if dates:
                u, v = _comparable_dates(u, v)
            elif type(u) is str and type(v) is str or type(u) in (int, float) and type(v) in (int, float):
                pass
            else:
                raise Fallback()
            if op == "<":
                return [u < v]
            if op == "<=":
                return [u <= v]
            if op == ">":
                return [u > v]
            return [u >= v]

        return cmp, "Boolean"

    def _AdditiveExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        a, ast, b, bst, op = self._binary(node, st)
        if op == "&":

            def concat(focus: list[Any], env: Env) -> list[Any]:
                x = a(focus, env)
                y = b(focus, env)
                u = "" if not x else _single(x)
                v = "" if not y else _single(y)
                if type(u) is not str or type(v) is not str:
                    raise Fallback()
                return [u + v]

            return concat, "String"
        if op not in ("+", "-") or not (ast in _NUMERIC and bst in _NUMERIC):
            raise Unsupported(op)

        def add(focus: list[Any], env: Env) -> list[Any]:
            x = a(focus, env)
            y = b(focus, env)
            if not x or not y:
                return []
            u = _single(x)
            v = _single(y)
            if type(u) not in (int, float) or type(v) not in (int, float):
                raise Fallback()
            return [u + v if op == "+" else u - v]

        return add, "Decimal"

    def _TypeExpression(self, node: dict[str, Any], st: StaticType) -> tuple[Fn, StaticType]:
        left, lst = self.expr(node["children"][0], st)
        op = node["terminalNodeText"][0]
        if lst is _RESOURCE:
            return self._resource_type_op(op, _type_name(node["children"][1]), left)
        if not isinstance(lst, _Choice):
            raise Unsupported("is/as on a non-choice element")
        return self._type_op(op, _type_name(node["children"][1]), lst)


def _comparable_dates(u: Any, v: Any) -> tuple[Any, Any]:
    """Two date/dateTime strings as comparable values, when FHIRPath gives a definite answer."""
    if type(u) is not str or type(v) is not str:
        raise Fallback()
    if "T" not in u and "T" not in v and len(u) == len(v):
        return u, v  # same precision, no time: lexical order is chronological
    if "T" in u and "T" in v and len(u) >= 19 and len(v) >= 19:
        try:
            du = datetime.fromisoformat(u)
            dv = datetime.fromisoformat(v)
        except ValueError:
            raise Fallback() from None
        if du.tzinfo is not None and dv.tzinfo is not None:
            return du, dv
    raise Fallback()


def _same(a: Any, b: Any) -> bool:
    if type(a) is dict or type(b) is dict:
        return a == b
    return _equal(a, b)


def _is_fn(ch: _Choice, key: str | None) -> Fn:
    keys = [k for k, _ in ch.keys.values()]
    parent = ch.parent

    def is_(focus: list[Any], env: Env) -> list[Any]:
        items = parent(focus, env)
        present = [k for it in items if type(it) is dict for k in keys if k in it or f"_{k}" in it]
        if not present:
            return []
        if len(present) > 1:
            raise Fallback()
        return [present[0] == key]

    return is_


def _type_name(node: dict[str, Any]) -> str:
    text: str = node.get("text", "")
    if text.startswith("FHIR."):
        text = text[5:]
    if (
        not re.fullmatch(r"[A-Za-z]+", text)
        or text[0].isupper()
        and text in ("Boolean", "String", "Integer", "Decimal")
    ):
        raise Unsupported(f"type {text}")
    return text


def _nav(left: Fn, key: str, primitive: bool) -> Fn:
    ext_key = f"_{key}"

    def nav(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for it in left(focus, env):
            if type(it) is not dict:
                continue
            v = it.get(key, _MISSING)
            if v is _MISSING:
                if primitive and ext_key in it:
                    ext = it[ext_key]
                    out.extend(NOVALUE for _ in ext) if type(ext) is list else out.append(NOVALUE)
                continue
            if type(v) is list:
                out.extend(NOVALUE if x is None else x for x in v)
            elif v is not None:
                out.append(v)
        return out

    return nav


def _equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    return bool(a == b)


def _dedupe(coll: list[Any]) -> list[Any]:
    """Distinct items in order; primitives by value (booleans apart from numbers)."""
    out: list[Any] = []
    seen: set[tuple[int, Any]] = set()
    dicts: list[Any] = []
    for x in coll:
        if type(x) is dict:
            if any(x == y for y in dicts):
                continue
            dicts.append(x)
        else:
            key = (0 if type(x) is bool else 1 if type(x) in (int, float) else 2, x)
            if key in seen:
                continue
            seen.add(key)
        out.append(x)
    return out


def _unescape(s: str) -> str:
    return re.sub(
        r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(m.group(1), m.group(1)), s
    )


def compile_fast(tree: dict[str, Any], td: TypeDef, types: dict[str, TypeDef]) -> Fn:
    """Compile a parsed invariant for nodes of type ``td``; raises Unsupported."""
    return _Compiler(types, td).compile(tree, td)
