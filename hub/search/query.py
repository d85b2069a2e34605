"""Parsing a FHIR search into a typed AST, independent of SQL.

``parse_query(registry, res_types, params, strict=..., base_url=...)`` turns the
(name, value) pairs of a query string or form body into a :class:`Query`:

* ``clauses``: ANDed :data:`Clause` objects (one per repeated parameter), each
  holding ORed values (comma lists), already typed: token system/code, string
  (normalised), reference target, date/number/quantity range with its prefix,
  uri, composite;
* result controls: ``_count``, ``_sort``, ``_include``/``_revinclude``,
  ``_summary``, ``_elements``, ``_total``, the paging cursor.

The same AST is compiled to SQL (:mod:`hub.search.compile`) and matched in
memory against a resource (:mod:`hub.search.memory`, for subscriptions).

Value conditions are expressed once, as small :class:`Cond` trees over index
columns (``value_norm``, ``low``, ``hash_code`` …). SQL and in-memory matching
both interpret the same tree, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import orjson

from hub.errors import Category, FhirError, Issue
from hub.search.params import MODIFIERS, UNSUPPORTED, BoundParam, Registry
from hub.search.values import (
    DATE_MAX,
    DATE_MIN,
    STRING_LEN,
    URI_LEN,
    hash_code,
    hash_sys,
    hash_sys_code,
    implicit_range,
    normalize,
    parse_date_range,
    parse_decimal,
    prefix_upper,
)

MAX_VALUES = 1000  # OR values in one query, all parameters together
MAX_CLAUSES = 100
MAX_CHAIN = 4
MAX_COUNT = 1000
DEFAULT_COUNT = 50
MAX_VALUE_LEN = 4096

#: parameters with no effect on the result (and dropped from links)
IGNORED = frozenset({"_format", "_pretty"})
CONTROL = frozenset(
    {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor", "_type"}
)


# --------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Cmp:
    col: str
    op: Literal["=", "!=", "<", "<=", ">", ">="]
    value: Any


@dataclass(frozen=True)
class In:
    col: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class IsNull:
    col: str
    null: bool = True


@dataclass(frozen=True)
class Contains:
    """``col LIKE '%value%'`` (value is matched literally)."""

    col: str
    value: str


@dataclass(frozen=True)
class And:
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class Not:
    item: Cond


Cond = Cmp | In | IsNull | Contains | And | Or | Not


def _idents(idents: tuple[int, ...]) -> Cond:
    return Cmp("hash_identity", "=", idents[0]) if len(idents) == 1 else In("hash_identity", idents)


def _eq_any(col: str, values: list[Any]) -> Cond:
    return Cmp(col, "=", values[0]) if len(values) == 1 else In(col, tuple(values))


def prefix_cond(col: str, prefix: str) -> Cond:
    """Starts-with over a byte-ordered column, as an index range."""
    upper = prefix_upper(prefix)
    lo = Cmp(col, ">=", prefix)
    return lo if upper is None else And((lo, Cmp(col, "<", upper)))


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; '': no system
    code: str | None  # None: any code

    def cond(self, idents: tuple[int, ...]) -> Cond:
        if self.code is None:
            return _eq_any("hash_sys", [hash_sys(i, self.system) for i in idents])
        if self.system is None:
            return _eq_any("hash_code", [hash_code(i, self.code) for i in idents])
        return _eq_any("hash_sys_code", [hash_sys_code(i, self.system, self.code) for i in idents])


@dataclass(frozen=True)
class StringValue:
    text: str
    mode: Literal["start", "exact", "contains"]

    def cond(self, idents: tuple[int, ...]) -> Cond:
        norm = normalize(self.text)
        if self.mode == "exact":
            c: Cond = And((Cmp("value_norm", "=", norm[:STRING_LEN]), Cmp("value_exact", "=", self.text)))
        elif self.mode == "contains":
            c = Contains("value_norm", norm)
        elif len(norm) >= STRING_LEN:
            c = Cmp("value_norm", "=", norm[:STRING_LEN])
        else:
            c = prefix_cond("value_norm", norm)
        return And((_idents(idents), c))


@dataclass(frozen=True)
class ReferenceValue:
    target_type: str | None
    target_id: str  # id, or the absolute URL when is_url
    is_url: bool = False

    def cond(self, idents: tuple[int, ...]) -> Cond:
        parts: list[Cond] = [_idents(idents), Cmp("target_id", "=", self.target_id)]
        if self.is_url:
            parts.append(IsNull("target_type"))
        elif self.target_type:
            parts.append(Cmp("target_type", "=", self.target_type))
        else:
            parts.append(IsNull("target_type", null=False))
        return And(tuple(parts))


Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


@dataclass(frozen=True)
class DateValue:
    prefix: Prefix
    low: int
    high: int
    text: str = ""

    def cond(self, idents: tuple[int, ...] | None) -> Cond:
        pl, ph = self.low, self.high
        eq = And((Cmp("low", ">=", pl), Cmp("high", "<=", ph)))
        p = self.prefix
        if p == "eq":
            c: Cond = eq
        elif p == "ne":
            c = Or((Cmp("low", "<", pl), Cmp("high", ">", ph)))
        elif p == "gt":
            c = Cmp("high", ">", ph)
        elif p == "lt":
            c = Cmp("low", "<", pl)
        elif p == "ge":
            c = Or((Cmp("high", ">", ph), eq))
        elif p == "le":
            c = Or((Cmp("low", "<", pl), eq))
        elif p == "sa":
            c = Cmp("low", ">", ph)
        elif p == "eb":
            c = Cmp("high", "<", pl)
        else:  # ap: overlap, widened by 10% of the distance to now
            now = time.time_ns() // 1000
            d = max(abs(now - pl), abs(now - ph)) // 10
            c = And((Cmp("low", "<=", min(ph + d, DATE_MAX)), Cmp("high", ">=", max(pl - d, DATE_MIN))))
        return c if idents is None else And((_idents(idents), c))


@dataclass(frozen=True)
class NumberValue:
    """number and quantity: ``value`` exact, [low, high) its implicit precision range."""

    prefix: Prefix
    value: float
    low: float
    high: float
    system: str | None = None  # quantity only
    code: str | None = None
    text: str = ""

    def range_cond(self) -> Cond:
        v = self.value
        p = self.prefix
        if p == "eq":
            return And((Cmp("low", ">=", self.low), Cmp("high", "<", self.high)))
        if p == "ne":
            return Or((Cmp("low", "<", self.low), Cmp("high", ">=", self.high)))
        if p == "gt":
            return Cmp("high", ">", v)
        if p == "lt":
            return Cmp("low", "<", v)
        if p == "ge":
            return Cmp("high", ">=", v)
        if p == "le":
            return Cmp("low", "<=", v)
        if p == "sa":
            return Cmp("low", ">", v)
        if p == "eb":
            return Cmp("high", "<", v)
        d = abs(v) / 10
        return And((Cmp("low", "<=", v + d), Cmp("high", ">=", v - d)))

    def cond(self, idents: tuple[int, ...]) -> Cond:
        parts: list[Cond] = [_idents(idents), self.range_cond()]
        if self.system:
            parts.append(Cmp("system", "=", self.system))
        if self.code:
            if self.system:
                parts.append(Cmp("code", "=", self.code))
            else:
                parts.append(Or((Cmp("code", "=", self.code), Cmp("unit", "=", self.code))))
        return And(tuple(parts))


@dataclass(frozen=True)
class UriValue:
    uri: str
    mode: Literal["eq", "below", "above"]

    def cond(self, idents: tuple[int, ...]) -> Cond:
        u = self.uri[:URI_LEN]
        if self.mode == "below":
            c: Cond = prefix_cond("uri", u)
        elif self.mode == "above":
            c = In("uri", tuple(uri_ancestors(u)))
        else:
            c = Cmp("uri", "=", u)
        return And((_idents(idents), c))


def uri_ancestors(u: str) -> list[str]:
    """``u`` and its prefixes at each ``/`` (with and without the slash): the targets of ``:above``."""
    out = [u]
    cut = u.rstrip("/")
    scheme_end = cut.find("://")
    floor = scheme_end + 3 if scheme_end >= 0 else 0
    while True:
        i = cut.rfind("/")
        if i < floor or i <= 0:
            break
        cut = cut[:i]
        out.extend([cut + "/", cut])
    return list(dict.fromkeys(out))


Value = TokenValue | StringValue | ReferenceValue | DateValue | NumberValue | UriValue


@dataclass(frozen=True)
class CompositeValue:
    parts: tuple[Value, ...]


# --------------------------------------------------------------------------- clauses
@dataclass
class ParamClause:
    """One parameter with ORed values, or ``:missing``, or ``:not``.

    ``table`` is the index table type the values are matched in (``string`` for
    a token ``:text``); ``idents`` the hash identities (one per resource type in
    scope; derived identities for ``:text``, ``:identifier``, ``:of-type``).
    """

    name: str
    params: tuple[BoundParam, ...]
    table: str
    idents: tuple[int, ...]
    values: tuple[Value | CompositeValue, ...] = ()
    missing: bool | None = None
    negate: bool = False
    #: composites: component table types and identities
    components: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: ``:missing``: where a value may be (a logical reference is only in ``:identifier`` rows)
    presence: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def value_conds(self) -> list[Cond]:
        """The ORed value conditions; equalities on one column merged into one IN (a 1,000-code OR list is one probe list)."""
        return merge_equalities(
            [v.cond(self.idents) for v in self.values if not isinstance(v, CompositeValue)]
        )


def merge_equalities(conds: list[Cond]) -> list[Cond]:
    merged: dict[str, list[Any]] = {}
    rest: list[Cond] = []
    for c in conds:
        if isinstance(c, Cmp) and c.op == "=":
            merged.setdefault(c.col, []).append(c.value)
        elif isinstance(c, In):
            merged.setdefault(c.col, []).extend(c.values)
        else:
            rest.append(c)
    out: list[Cond] = [_eq_any(col, list(dict.fromkeys(vals))) for col, vals in merged.items()]
    return out + rest


@dataclass
class IdClause:
    ids: tuple[str, ...]


@dataclass
class LastUpdatedClause:
    values: tuple[DateValue, ...]


@dataclass
class ChainClause:
    """``subject:Patient.name=x``: a reference whose target matches ``inner`` (per target type)."""

    name: str
    params: tuple[BoundParam, ...]
    inners: tuple[tuple[str, Clause], ...]


@dataclass
class HasClause:
    """``_has:Observation:patient:code=x``: referenced by a ``src_type`` that matches ``inner``."""

    src_type: str
    idents: tuple[int, ...]  # of the reference parameter on src_type
    inner: Clause


@dataclass
class CompartmentClause:
    comp_type: str
    comp_id: str
    res_types: tuple[str, ...]
    idents: tuple[int, ...]  # reference parameters that put a resource in the compartment
    include_self: bool  # the compartment's own resource (Patient/{id})


Clause = ParamClause | IdClause | LastUpdatedClause | ChainClause | HasClause | CompartmentClause


@dataclass(frozen=True)
class SortKey:
    name: str
    desc: bool
    params: tuple[BoundParam, ...] = ()  # empty for _id / _lastUpdated


@dataclass(frozen=True)
class Include:
    src_type: str | None  # None for '*'
    code: str | None  # None for '*'
    target: str | None
    iterate: bool
    idents: tuple[int, ...] = ()


@dataclass
class Query:
    res_types: tuple[str, ...] | None  # None: every type (system search without _type)
    clauses: list[Clause] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    total: str | None = None
    cursor: Cursor | None = None
    issues: list[Issue] = field(default_factory=list)
    #: the (name, value) pairs that took effect, for self/next/previous links
    kept: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Cursor:
    direction: Literal["next", "prev"]
    keys: tuple[Any, ...]  # sort-key values of the boundary row, then its pk

    def encode(self) -> str:
        raw = orjson.dumps({"d": self.direction[0], "k": list(self.keys)})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, n_keys: int) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = orjson.loads(raw)
            d = data["d"]
            keys = data["k"]
            if d not in ("n", "p") or not isinstance(keys, list) or len(keys) != n_keys + 1:
                raise ValueError
            if not isinstance(keys[-1], int) or isinstance(keys[-1], bool):
                raise ValueError
            for k in keys:
                if k is not None and not isinstance(k, int | float | str) or isinstance(k, bool):
                    raise ValueError
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise bad(
                "FHIRHUB-SEARCH-CURSOR", "The paging cursor is invalid or belongs to another search"
            ) from exc
        return cls("next" if d == "n" else "prev", tuple(keys))


# --------------------------------------------------------------------------- errors
def bad(code: str, message: str, expression: str | None = None) -> FhirError:
    return FhirError(Category.INVALID, code, message, [Issue("error", "invalid", message, expression)])


def not_supported_issue(message: str) -> Issue:
    return Issue("warning", "not-supported", message)


# --------------------------------------------------------------------------- escaping
def split_escaped(s: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash; escapes are kept (see :func:`unescape`)."""
    if "\\" not in s:
        return s.split(sep)  # the common case: nothing escaped
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unescape(s: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", s)


# --------------------------------------------------------------------------- the parser
def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Unknown(Exception):
    """An unknown parameter inside a chain or _has."""


_PREFIX_RE = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[0-9+\-.])")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class Parser:
    def __init__(self, registry: Registry, strict: bool, base_url: str = "") -> None:
        self.registry = registry
        self.strict = strict
        self.base_url = base_url.rstrip("/")
        self.values_seen = 0
        self.issues: list[Issue] = []

    # -------------------------------------------------------------- entry
    def parse(self, res_types: tuple[str, ...] | None, params: list[tuple[str, str]]) -> Query:
        q = Query(res_types)
        if len(params) > MAX_CLAUSES * 4:
            raise bad("FHIRHUB-SEARCH-TOO-MANY", f"Too many search parameters (more than {MAX_CLAUSES * 4})")
        cursor_text: str | None = None
        for name, value in params:
            if not isinstance(name, str) or not isinstance(value, str):
                raise bad("FHIRHUB-SEARCH-PARAM", "Search parameters must be strings")
            if len(value) > MAX_VALUE_LEN * 16 or len(name) > 512:
                raise bad("FHIRHUB-SEARCH-TOO-LONG", f"The value of {name} is too long")
            if "\x00" in name or "\x00" in value or not _encodable(name + value):
                raise bad(
                    "FHIRHUB-SEARCH-CHARACTERS",
                    f"The parameter {name!r} holds characters that are not allowed",
                )
            base = name.split(":", 1)[0]
            if base in IGNORED:
                continue
            if base in CONTROL:
                if base == "_cursor":
                    cursor_text = value
                    continue
                if base == "_type":
                    q.kept.append((name, value))  # applied by the caller (system search)
                    continue
                self._control(q, name, value)
                continue
            if all(v == "" for v in split_escaped(value, ",")):
                continue  # empty values are ignored
            clause = self.clause(res_types, name, value, depth=0)
            if clause is not None:
                q.clauses.append(clause)
                q.kept.append((name, value))
        if len(q.clauses) > MAX_CLAUSES:
            raise bad("FHIRHUB-SEARCH-TOO-MANY", f"Too many search parameters (more than {MAX_CLAUSES})")
        if cursor_text is not None:
            q.cursor = Cursor.decode(cursor_text, len(q.sort))
        q.issues = self.issues
        return q

    def unknown(self, message: str) -> None:
        if self.strict:
            raise FhirError(
                Category.INVALID,
                "FHIRHUB-SEARCH-UNKNOWN-PARAM",
                message,
                [Issue("error", "not-supported", message)],
            )
        self.issues.append(not_supported_issue(message + "; it was ignored"))

    def count_values(self, n: int) -> None:
        self.values_seen += n
        if self.values_seen > MAX_VALUES:
            raise bad("FHIRHUB-SEARCH-TOO-MANY-VALUES", f"A search may hold at most {MAX_VALUES} values")

    # -------------------------------------------------------------- controls
    def _control(self, q: Query, name: str, value: str) -> None:
        base, _, modifier = name.partition(":")
        if base == "_count":
            if not re.fullmatch(r"[0-9]{1,9}", value):
                raise bad("FHIRHUB-SEARCH-COUNT", f"_count must be a non-negative integer, not {value!r}")
            q.count = min(int(value), MAX_COUNT)
            q.kept.append((name, str(q.count)))
        elif base == "_sort":
            q.sort = self._sort(q.res_types, value)
            q.kept.append((name, value))
        elif base in ("_include", "_revinclude"):
            if modifier not in ("", "iterate", "recurse"):
                raise bad("FHIRHUB-SEARCH-MODIFIER", f"Unknown modifier {modifier!r} on {base}")
            inc = self._include(q.res_types, value, base == "_revinclude", bool(modifier))
            if inc is not None:
                (q.revincludes if base == "_revinclude" else q.includes).append(inc)
                q.kept.append((name, value))
        elif base == "_summary":
            if value not in ("true", "false", "text", "data", "count"):
                raise bad(
                    "FHIRHUB-SEARCH-SUMMARY",
                    f"_summary must be true, false, text, data or count, not {value!r}",
                )
            q.summary = None if value == "false" else value
            q.kept.append((name, value))
        elif base == "_elements":
            els = tuple(e.strip() for e in value.split(",") if e.strip())
            for e in els:
                if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(\[x\])?", e):
                    raise bad("FHIRHUB-SEARCH-ELEMENTS", f"_elements: {e!r} is not an element name")
            q.elements = els or None
            q.kept.append((name, value))
        elif base == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise bad("FHIRHUB-SEARCH-TOTAL", f"_total must be none, estimate or accurate, not {value!r}")
            q.total = value
            q.kept.append((name, value))

    def _sort(self, res_types: tuple[str, ...] | None, value: str) -> list[SortKey]:
        keys: list[SortKey] = []
        for raw in value.split(","):
            raw = raw.strip()
            if not raw:
                continue
            desc = raw.startswith("-")
            code = raw[1:] if desc else raw
            if code in ("_id", "_lastUpdated"):
                keys.append(SortKey(code, desc))
                continue
            params = self._resolve(res_types, code)
            if not params:
                self.unknown(f"Unknown sort parameter {code!r}")
                continue
            if params[0].type not in ("string", "token", "reference", "date", "number", "quantity", "uri"):
                self.unknown(f"Cannot sort on {code!r} (type {params[0].type})")
                continue
            keys.append(SortKey(code, desc, params))
        if len(keys) > 5:
            raise bad("FHIRHUB-SEARCH-SORT", "At most 5 sort keys")
        return keys

    def _include(
        self, res_types: tuple[str, ...] | None, value: str, rev: bool, iterate: bool
    ) -> Include | None:
        if value == "*":
            return Include(None, None, None, iterate)
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(_NAME_RE.match(p) or p == "*" for p in parts):
            raise bad(
                "FHIRHUB-SEARCH-INCLUDE", f"_include/_revinclude must be Type:param[:target], not {value!r}"
            )
        src, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if src not in self.registry.resource_types:
            raise bad("FHIRHUB-SEARCH-INCLUDE", f"Unknown resource type {src!r} in {value!r}")
        if target is not None and target not in self.registry.resource_types:
            raise bad("FHIRHUB-SEARCH-INCLUDE", f"Unknown target type {target!r} in {value!r}")
        if not rev and not iterate and res_types is not None and src not in res_types:
            raise bad("FHIRHUB-SEARCH-INCLUDE", f"_include {value!r} does not start from the searched type")
        if code == "*":
            refs = [p for p in self.registry.params(src) if p.type == "reference" and p.indexed]
            return Include(src, None, target, iterate, tuple(p.identity for p in refs))
        bp = self.registry.get(src, code)
        if bp is None or bp.type != "reference":
            self.unknown(f"{src} has no reference parameter {code!r} (in {value!r})")
            return None
        return Include(src, code, target, iterate, (bp.identity,))

    # -------------------------------------------------------------- parameters
    def _resolve(self, res_types: tuple[str, ...] | None, code: str) -> tuple[BoundParam, ...]:
        """The parameter ``code`` for each type in scope; empty unless every type has it (same type)."""
        types = res_types if res_types is not None else tuple(sorted(self.registry.resource_types))
        out: list[BoundParam] = []
        for t in types:
            bp = self.registry.get(t, code)
            if bp is None:
                return ()
            out.append(bp)
        if len({p.type for p in out}) != 1:
            return ()
        return tuple(out)

    def clause(self, res_types: tuple[str, ...] | None, name: str, value: str, depth: int) -> Clause | None:
        if depth > MAX_CHAIN:
            raise bad("FHIRHUB-SEARCH-CHAIN", f"Chains and _has may nest at most {MAX_CHAIN} levels")
        if name.startswith("_has:"):
            return self._has(res_types, name, value, depth)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if not _NAME_RE.match(code):
            raise bad("FHIRHUB-SEARCH-PARAM", f"{name!r} is not a valid parameter name")
        if dot:
            return self._chain(res_types, name, code, modifier, rest, value, depth)
        if code == "_id":
            return self._id(name, modifier, value)
        if code == "_lastUpdated":
            if modifier:
                raise bad(
                    "FHIRHUB-SEARCH-MODIFIER", f"Modifier {modifier!r} is not supported on _lastUpdated"
                )
            vals = self._values(value)
            return LastUpdatedClause(tuple(self._date(v, name) for v in vals))
        if code in UNSUPPORTED:
            self.unknown(f"Search parameter {code!r} is not supported")
            return None
        params = self._resolve(res_types, code)
        if not params or not params[0].indexed:
            scope = ",".join(res_types) if res_types else "all resource types"
            self.unknown(f"Unknown search parameter {code!r} for {scope}")
            return None
        return self._typed(name, params, modifier, value)

    def _values(self, value: str) -> list[str]:
        vals = [v for v in split_escaped(value, ",") if v != ""]
        self.count_values(len(vals))
        return vals

    def _id(self, name: str, modifier: str, value: str) -> Clause:
        if modifier:
            raise bad("FHIRHUB-SEARCH-MODIFIER", f"Modifier {modifier!r} is not supported on _id")
        ids = tuple(unescape(v) for v in self._values(value))
        return IdClause(ids)

    def _typed(self, name: str, params: tuple[BoundParam, ...], modifier: str, value: str) -> Clause:
        ptype = params[0].type
        idents = tuple(p.identity for p in params)
        if modifier == "missing":
            if value not in ("true", "false"):
                raise bad("FHIRHUB-SEARCH-MISSING", f"{name} must be true or false")
            presence: tuple[tuple[str, tuple[int, ...]], ...]
            if ptype == "composite":
                presence = ((params[0].component_types[0], tuple(p.sub_identity("$0") for p in params)),)
            elif ptype == "reference":
                presence = ((ptype, idents), ("token", tuple(p.sub_identity(":identifier") for p in params)))
            elif ptype == "token":
                presence = ((ptype, idents), ("string", tuple(p.sub_identity(":text") for p in params)))
            else:
                presence = ((ptype, idents),)
            return ParamClause(name, params, ptype, idents, missing=value == "true", presence=presence)
        allowed = MODIFIERS.get(ptype, ())
        if (
            modifier
            and modifier not in allowed
            and not (ptype == "reference" and modifier in self.registry.resource_types)
        ):
            raise bad(
                "FHIRHUB-SEARCH-MODIFIER",
                f"Modifier {modifier!r} is not supported on {params[0].code} (type {ptype});"
                f" supported: {', '.join(allowed)}",
            )
        raw = self._values(value)
        if ptype == "string":
            mode: Literal["start", "exact", "contains"] = (
                "exact" if modifier == "exact" else "contains" if modifier == "contains" else "start"
            )
            vals: list[Value | CompositeValue] = [StringValue(unescape(v), mode) for v in raw]
            return ParamClause(name, params, "string", idents, tuple(vals))
        if ptype == "token":
            if modifier == "text":
                t_idents = tuple(p.sub_identity(":text") for p in params)
                vals = [StringValue(unescape(v), "start") for v in raw]
                return ParamClause(name, params, "string", t_idents, tuple(vals))
            if modifier == "of-type":
                o_idents = tuple(p.sub_identity(":of-type") for p in params)
                vals = [self._of_type(v, name) for v in raw]
                return ParamClause(name, params, "token", o_idents, tuple(vals))
            vals = [self._token(v) for v in raw]
            return ParamClause(name, params, "token", idents, tuple(vals), negate=modifier == "not")
        if ptype == "reference":
            if modifier == "identifier":
                i_idents = tuple(p.sub_identity(":identifier") for p in params)
                vals = [self._token(v) for v in raw]
                return ParamClause(name, params, "token", i_idents, tuple(vals))
            target = modifier or None
            if target is not None:
                self._check_target(params, target)
            vals = [self._reference(v, target, params) for v in raw]
            return ParamClause(name, params, "reference", idents, tuple(vals))
        if ptype == "date":
            return ParamClause(name, params, "date", idents, tuple(self._date(v, name) for v in raw))
        if ptype in ("number", "quantity"):
            vals = [self._number(v, name, ptype) for v in raw]
            return ParamClause(name, params, ptype, idents, tuple(vals))
        if ptype == "uri":
            umode: Literal["eq", "below", "above"] = (
                "below" if modifier == "below" else "above" if modifier == "above" else "eq"
            )
            return ParamClause(name, params, "uri", idents, tuple(UriValue(unescape(v), umode) for v in raw))
        if ptype == "composite":
            comps = params[0].component_types
            components = tuple(
                (ct, tuple(p.sub_identity(f"${i}") for p in params)) for i, ct in enumerate(comps)
            )
            cvals: list[Value | CompositeValue] = []
            for v in raw:
                pieces = split_escaped(v, "$")
                if len(pieces) != len(comps):
                    raise bad(
                        "FHIRHUB-SEARCH-COMPOSITE",
                        f"{name} takes {len(comps)} components separated by '$', not {v!r}",
                    )
                cvals.append(
                    CompositeValue(
                        tuple(
                            self._component(ct, piece, name, params)
                            for ct, piece in zip(comps, pieces, strict=True)
                        )
                    )
                )
            return ParamClause(name, params, "composite", idents, tuple(cvals), components=components)
        raise bad("FHIRHUB-SEARCH-PARAM", f"Parameters of type {ptype} are not supported ({name})")

    def _component(self, ctype: str, piece: str, name: str, params: tuple[BoundParam, ...]) -> Value:
        if ctype == "token":
            return self._token(piece)
        if ctype == "string":
            return StringValue(unescape(piece), "start")
        if ctype == "date":
            return self._date(piece, name)
        if ctype in ("number", "quantity"):
            return self._number(piece, name, ctype)
        if ctype == "uri":
            return UriValue(unescape(piece), "eq")
        if ctype == "reference":
            return self._reference(piece, None, ())
        raise bad("FHIRHUB-SEARCH-COMPOSITE", f"Unsupported composite component type {ctype} in {name}")

    # -------------------------------------------------------------- value parsers
    @staticmethod
    def _token(v: str) -> TokenValue:
        parts = split_escaped(v, "|")
        if len(parts) == 1:
            return TokenValue(None, unescape(parts[0]))
        if len(parts) == 2:
            system, code = unescape(parts[0]), unescape(parts[1])
            if system == "" and code == "":
                raise bad("FHIRHUB-SEARCH-TOKEN", "A token needs a system or a code, not just '|'")
            return TokenValue(system, code or None)
        raise bad("FHIRHUB-SEARCH-TOKEN", f"A token is [system|]code, not {v!r}")

    @staticmethod
    def _of_type(v: str, name: str) -> TokenValue:
        parts = split_escaped(v, "|")
        if len(parts) != 3 or not all(parts):
            raise bad("FHIRHUB-SEARCH-OF-TYPE", f"{name} takes type-system|type-code|value, not {v!r}")
        s, c, val = (unescape(p) for p in parts)
        return TokenValue(s, f"{c}|{val}")

    def _check_target(self, params: tuple[BoundParam, ...], target: str) -> None:
        if target not in self.registry.resource_types:
            raise bad("FHIRHUB-SEARCH-MODIFIER", f"{target!r} is not a resource type")
        for p in params:
            if p.param.targets and target not in p.param.targets:
                raise bad("FHIRHUB-SEARCH-REFERENCE", f"{p.code} cannot refer to a {target}")

    def _reference(self, v: str, target: str | None, params: tuple[BoundParam, ...]) -> ReferenceValue:
        v = unescape(v)
        if self.base_url and v.startswith(self.base_url + "/"):
            v = v[len(self.base_url) + 1 :]
        m = re.fullmatch(r"([A-Z][A-Za-z]+)/([^/]+)(?:/_history/[^/]+)?", v)
        if m:
            rtype, rid = m.group(1), m.group(2)
            if rtype not in self.registry.resource_types:
                raise bad("FHIRHUB-SEARCH-REFERENCE", f"{rtype!r} is not a resource type")
            if target is not None and target != rtype:
                raise bad("FHIRHUB-SEARCH-REFERENCE", f"{v!r} contradicts the :{target} modifier")
            if params:
                self._check_target(params, rtype)
            return ReferenceValue(rtype, rid)
        if ":" in v:
            return ReferenceValue(None, v[:URI_LEN], is_url=True)
        if target is None and params:
            targets = {t for p in params for t in p.param.targets}
            if len(targets) == 1:
                target = targets.pop()
        return ReferenceValue(target, v)

    @staticmethod
    def _prefix(v: str) -> tuple[Prefix, str]:
        m = _PREFIX_RE.match(v)
        if m:
            return m.group(1), v[2:]  # type: ignore[return-value]
        return "eq", v

    def _date(self, v: str, name: str) -> DateValue:
        prefix, rest = self._prefix(v)
        # an unencoded '+' of a zone offset arrives as a space ("T10:00:00 05:00")
        rest = re.sub(r"(T[0-9:.]+) (\d{2}:\d{2})$", r"\1+\2", rest)
        rng = parse_date_range(rest)
        if rng is None:
            raise bad(
                "FHIRHUB-SEARCH-DATE",
                f"{name}: {v!r} is not a valid date, e.g. ge2020-01-31 or 2020-01-31T10:00:00Z",
            )
        return DateValue(prefix, rng[0], rng[1], v)

    def _number(self, v: str, name: str, ptype: str) -> NumberValue:
        prefix, rest = self._prefix(v)
        system = code = None
        if ptype == "quantity":
            parts = split_escaped(rest, "|")
            if len(parts) == 3:
                rest, system, code = parts[0], unescape(parts[1]) or None, unescape(parts[2]) or None
            elif len(parts) != 1:
                raise bad(
                    "FHIRHUB-SEARCH-QUANTITY",
                    f"{name}: a quantity is [prefix]number[|system|code], not {v!r}",
                )
        d = parse_decimal(rest)
        if d is None:
            raise bad("FHIRHUB-SEARCH-NUMBER", f"{name}: {v!r} is not a number")
        low, high = implicit_range(d)
        return NumberValue(prefix, float(d), low, high, system, code, v)

    # -------------------------------------------------------------- chains and _has
    def _chain(
        self,
        res_types: tuple[str, ...] | None,
        name: str,
        code: str,
        modifier: str,
        rest: str,
        value: str,
        depth: int,
    ) -> Clause | None:
        params = self._resolve(res_types, code)
        if not params:
            self.unknown(f"Unknown search parameter {code!r} in chain {name!r}")
            return None
        if params[0].type != "reference":
            raise bad(
                "FHIRHUB-SEARCH-CHAIN",
                f"{code} is not a reference parameter, so it cannot be chained ({name})",
            )
        if modifier:
            if modifier not in self.registry.resource_types:
                raise bad("FHIRHUB-SEARCH-CHAIN", f"{modifier!r} is not a resource type ({name})")
            self._check_target(params, modifier)
            candidates: list[str] = [modifier]
        else:
            candidates = sorted({t for p in params for t in p.targets()})
        inner_code = rest.partition(".")[0].partition(":")[0]
        inners: list[tuple[str, Clause]] = []
        for t in candidates:
            plain = not inner_code.startswith("_has") and inner_code not in ("_id", "_lastUpdated")
            if plain and self.registry.get(t, inner_code) is None:
                continue
            try:
                inner = self._inner((t,), rest, value, depth)
            except _Unknown as exc:
                self.unknown(f"{exc} (in {name!r})")
                return None
            inners.append((t, inner))
        if not inners:
            self.unknown(f"No target type of {code!r} has a search parameter {inner_code!r} ({name})")
            return None
        return ChainClause(name, params, tuple(inners))

    def _has(self, res_types: tuple[str, ...] | None, name: str, value: str, depth: int) -> Clause | None:
        parts = name.split(":", 3)
        if len(parts) != 4 or not parts[3]:
            raise bad("FHIRHUB-SEARCH-HAS", f"_has is _has:Type:reference:parameter, not {name!r}")
        _, src, ref_code, rest = parts
        if src not in self.registry.resource_types:
            raise bad("FHIRHUB-SEARCH-HAS", f"{src!r} is not a resource type ({name})")
        ref = self.registry.get(src, ref_code)
        if ref is None or ref.type != "reference":
            self.unknown(f"{src} has no reference parameter {ref_code!r} ({name})")
            return None
        if res_types is not None and ref.param.targets and not set(res_types) & set(ref.param.targets):
            raise bad(
                "FHIRHUB-SEARCH-HAS", f"{src}.{ref_code} cannot refer to {', '.join(res_types)} ({name})"
            )
        try:
            inner = self._inner((src,), rest, value, depth)
        except _Unknown as exc:
            self.unknown(f"{exc} (in {name!r})")
            return None
        return HasClause(src, (ref.identity,), inner)

    def _inner(self, res_types: tuple[str, ...], name: str, value: str, depth: int) -> Clause:
        """A parameter inside a chain or ``_has``: an unknown one drops the whole outer parameter."""
        saved, saved_issues = self.strict, self.issues
        self.strict = True
        try:
            inner = self.clause(res_types, name, value, depth + 1)
        except FhirError as exc:
            if exc.code == "FHIRHUB-SEARCH-UNKNOWN-PARAM":
                raise _Unknown(exc.message) from exc
            raise
        finally:
            self.strict, self.issues = saved, saved_issues
        assert inner is not None
        return inner


def parse_query(
    registry: Registry,
    res_types: tuple[str, ...] | None,
    params: list[tuple[str, str]],
    strict: bool = True,
    base_url: str = "",
) -> Query:
    return Parser(registry, strict, base_url).parse(res_types, params)


def decimal_text(d: Decimal) -> str:
    return format(d, "f")
