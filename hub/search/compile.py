"""Compiling the search AST (:mod:`hub.search.query`) to SQLAlchemy Core.

Every value from the request reaches the database as a bound parameter; no SQL
text is ever built from input. The shapes:

* a parameter: ``r.pk IN (SELECT t.resource_pk FROM idx_<type> t WHERE <values ORed>)``
  (SQLite walks the index and probes the rowid; PostgreSQL plans a semi-join);
* ``:not`` / ``:missing``: ``NOT IN`` / ``[NOT] EXISTS`` on ``(resource_pk, hash_identity)``;
* a composite: the first component's rows, with an ``EXISTS`` per further
  component on the same ``(resource_pk, grp)``;
* a chain ``subject:Patient.name=x``: reference rows whose ``target_id`` is
  ``IN (SELECT res_id FROM resource s WHERE s.res_type='Patient' AND <inner on s>)``, one
  sub-select per target type joined by ``UNION ALL`` (``subject.identifier`` chains to Patient and Group);
* ``_has:Observation:patient:code=x``: ``r.res_id IN (SELECT target_id FROM
  idx_reference WHERE … AND resource_pk IN (<Observations matching code=x>))``.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    FromClause,
    Select,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import literal
from sqlalchemy.sql.selectable import ScalarSelect
from sqlalchemy.sql.visitors import InternalTraversal

from hub.search.query import (
    And,
    ChainClause,
    Clause,
    Cmp,
    CompartmentClause,
    CompositeValue,
    Cond,
    Contains,
    DateValue,
    HasClause,
    IdClause,
    In,
    IsNull,
    LastUpdatedClause,
    Not,
    Or,
    ParamClause,
    SortKey,
)
from hub.search.tables import TABLE_BY_TYPE, reference_t
from hub.search.values import like_escape
from hub.store.tables import resource_t


def cond_sql(c: Cond, t: FromClause) -> ColumnElement[bool]:
    """A :data:`Cond` over the columns of ``t`` (a table or alias)."""
    if isinstance(c, Cmp):
        col = t.c[c.col]
        v = literal(c.value, col.type)
        if c.op == "=":
            return col == v
        if c.op == "!=":
            return col != v
        if c.op == "<":
            return col < v
        if c.op == "<=":
            return col <= v
        if c.op == ">":
            return col > v
        return col >= v
    if isinstance(c, In):
        return t.c[c.col].in_(list(c.values))
    if isinstance(c, IsNull):
        return t.c[c.col].is_(None) if c.null else t.c[c.col].is_not(None)
    if isinstance(c, Contains):
        return t.c[c.col].like("%" + like_escape(c.value) + "%", escape="\\")
    if isinstance(c, And):
        return and_(*(cond_sql(x, t) for x in c.items))
    if isinstance(c, Or):
        return or_(*(cond_sql(x, t) for x in c.items))
    if isinstance(c, Not):
        return not_(cond_sql(c.item, t))
    raise TypeError(c)


def date_cond_on_resource(v: DateValue, r: FromClause) -> ColumnElement[bool]:
    """``_lastUpdated``: the resource's instant is a point, low == high."""
    c = v.cond(None)
    return _point(c, r.c.last_updated)


def _point(c: Cond, col: Any) -> ColumnElement[bool]:
    if isinstance(c, Cmp):
        v = literal(c.value, col.type)
        return {
            "=": col == v,
            "!=": col != v,
            "<": col < v,
            "<=": col <= v,
            ">": col > v,
            ">=": col >= v,
        }[c.op]
    if isinstance(c, And):
        return and_(*(_point(x, col) for x in c.items))
    if isinstance(c, Or):
        return or_(*(_point(x, col) for x in c.items))
    raise TypeError(c)


OR_CHUNK = 100

_ALIASES: dict[tuple[str, str], Any] = {}
_ALIAS_LOCK = threading.Lock()


def alias(table: Any, name: str) -> Any:
    """``table.alias(name)``, made once: an alias builds a proxy per column on first use, which a
    query pays for every table it names; the objects are immutable and shared by every statement."""
    key = (table.name, name)
    found = _ALIASES.get(key)
    if found is None:
        with _ALIAS_LOCK:
            found = _ALIASES.get(key)
            if found is None:
                found = table.alias(name)
                _ = found.c  # populate the column collection before another thread can see it
                _ALIASES[key] = found
    return found


#: value types whose conditions are ranges: a poor driver for a query, a cheap per-row check
RANGE_TABLES = frozenset({"date", "number", "quantity"})


def is_anchor(c: Clause) -> bool:
    """A selective clause (equality on an index hash or id) that can drive the query."""
    if isinstance(c, IdClause | CompartmentClause | ChainClause):
        return True
    return (
        isinstance(c, ParamClause)
        and c.table in ("token", "reference", "uri")
        and c.missing is None
        and not c.negate
    )


class InArray(ColumnElement[bool]):
    """``col IN (SELECT …)`` for a set expected to be small; on PostgreSQL ``col = ANY(ARRAY(SELECT …))``.

    PostgreSQL estimates a window ``low < :end AND (high > :start …)`` as if its bounds were
    independent (thousands of rows for a week of Appointments that holds a dozen), then walks the
    whole primary key in order to fill a page of 50. ``ARRAY(…)`` runs the sub-select first, once,
    and probes the key for its rows only.
    """

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: no "= 1" after it where booleans are integers
    _traverse_internals = [
        ("col", InternalTraversal.dp_clauseelement),
        ("sub", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, col: ColumnElement[Any], sub: ScalarSelect[Any]) -> None:
        self.col = col
        self.sub = sub


@compiles(InArray)
def _in_array(element: InArray, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.col, **kw)} IN {compiler.process(element.sub, **kw)}"


@compiles(InArray, "postgresql")
def _in_array_pg(element: InArray, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.col, **kw)} = ANY(ARRAY{compiler.process(element.sub, **kw)})"


class Compiler:
    def __init__(self, correlate_ranges: bool = False) -> None:
        self._n = 0
        #: check range clauses row by row (EXISTS on (resource_pk, hash_identity)) rather than
        #: collecting every matching pk: set when an equality clause already narrows the query
        self.correlate_ranges = correlate_ranges

    def alias(self, table: Any, prefix: str) -> Any:
        self._n += 1
        return alias(table, f"{prefix}{self._n}")

    # ---------------------------------------------------------------- clauses
    def clause(self, c: Clause, r: FromClause, types: tuple[str, ...] | None = None) -> ColumnElement[bool]:
        """``types``: the resource types ``r`` can hold (None: any)."""
        if isinstance(c, ParamClause):
            return self.param(c, r)
        if isinstance(c, IdClause):
            return r.c.res_id.in_(list(c.ids)) if len(c.ids) > 1 else r.c.res_id == c.ids[0]
        if isinstance(c, LastUpdatedClause):
            return or_(*(date_cond_on_resource(v, r) for v in c.values))
        if isinstance(c, ChainClause):
            return self.chain(c, r)
        if isinstance(c, HasClause):
            return self.has(c, r, types)
        if isinstance(c, CompartmentClause):
            return self.compartment(c, r)
        raise TypeError(c)

    def param(self, c: ParamClause, r: FromClause) -> ColumnElement[bool]:
        if c.missing is not None:
            where_present: list[ColumnElement[bool]] = []
            for table_type, idents in c.presence:
                t = self.alias(TABLE_BY_TYPE[table_type], "m")
                ident = t.c.hash_identity == idents[0] if len(idents) == 1 else t.c.hash_identity.in_(idents)
                where_present.append(
                    exists(select(literal(1)).select_from(t).where(t.c.resource_pk == r.c.pk, ident))
                )
            has = or_(*where_present) if len(where_present) > 1 else where_present[0]
            return not_(has) if c.missing else has
        if c.table == "composite":
            return r.c.pk.in_(self.composite(c))
        conds = c.value_conds()
        if self.correlate_ranges and c.table in RANGE_TABLES and len(conds) <= OR_CHUNK:
            t = self.alias(TABLE_BY_TYPE[c.table], "x")
            part = [cond_sql(vc, t) for vc in conds]
            hit = exists(
                select(literal(1))
                .select_from(t)
                .where(t.c.resource_pk == r.c.pk, or_(*part) if len(part) > 1 else part[0])
            )
            return not_(hit) if c.negate else hit
        # a long OR list is split into sub-selects of OR_CHUNK (SQLite caps expression depth at 1,000)
        tests: list[ColumnElement[bool]] = []
        for i in range(0, len(conds), OR_CHUNK):
            t = self.alias(TABLE_BY_TYPE[c.table], "i")
            part = [cond_sql(vc, t) for vc in conds[i : i + OR_CHUNK]]
            tests.append(r.c.pk.in_(select(t.c.resource_pk).where(or_(*part) if len(part) > 1 else part[0])))
        found = or_(*tests) if len(tests) > 1 else tests[0]
        return not_(found) if c.negate else found

    def same_row(self, cs: list[ParamClause], r: FromClause) -> ColumnElement[bool]:
        """Range clauses of one parameter that has at most one index row per resource: all on that row."""
        conds: list[Cond] = [vc for c in cs for vc in c.value_conds()]
        if self.correlate_ranges:
            t = self.alias(TABLE_BY_TYPE[cs[0].table], "x")
            return exists(select(literal(1)).select_from(t).where(t.c.resource_pk == r.c.pk, *(cond_sql(x, t) for x in conds)))
        t = self.alias(TABLE_BY_TYPE[cs[0].table], "i")
        return InArray(r.c.pk, select(t.c.resource_pk).where(*(cond_sql(x, t) for x in conds)).scalar_subquery())

    def composite(self, c: ParamClause) -> Select[Any]:
        """pks of resources where one item matches every component of one of the values."""
        branches: list[ColumnElement[bool]] = []
        first_type, first_idents = c.components[0]
        t0 = self.alias(TABLE_BY_TYPE[first_type], "c")
        for value in c.values:
            assert isinstance(value, CompositeValue)
            conds: list[ColumnElement[bool]] = [cond_sql(value.parts[0].cond(first_idents), t0)]
            for (ctype, cidents), part in zip(c.components[1:], value.parts[1:], strict=True):
                ti = self.alias(TABLE_BY_TYPE[ctype], "c")
                conds.append(
                    exists(
                        select(literal(1))
                        .select_from(ti)
                        .where(
                            ti.c.resource_pk == t0.c.resource_pk,
                            ti.c.grp == t0.c.grp,
                            cond_sql(part.cond(cidents), ti),
                        )
                    )
                )
            branches.append(and_(*conds))
        return select(t0.c.resource_pk).where(t0.c.grp > 0, or_(*branches))

    def chain(self, c: ChainClause, r: FromClause) -> ColumnElement[bool]:
        # one sub-select per target type, UNION ALL: each probes (hash_identity, target_id, target_type)
        # with its targets' ids; an OR of the types inside one WHERE would scan every reference of the
        # parameter instead (PostgreSQL: a bitmap OR and hashed sub-plans over all of them)
        idents = [p.identity for p in c.params]
        per_type: list[Select[Any]] = []
        for target_type, inner in c.inners:
            ref = self.alias(reference_t, "ref")
            s = self.alias(resource_t, "s")
            targets = select(s.c.res_id).where(
                s.c.res_type == target_type, s.c.deleted == false(), self.clause(inner, s, (target_type,))
            )
            ident = ref.c.hash_identity == idents[0] if len(idents) == 1 else ref.c.hash_identity.in_(idents)
            per_type.append(
                select(ref.c.resource_pk).where(ident, ref.c.target_type == target_type, ref.c.target_id.in_(targets))
            )
        if len(per_type) == 1:
            return r.c.pk.in_(per_type[0])
        return r.c.pk.in_(union_all(*per_type))

    def has(self, c: HasClause, r: FromClause, types: tuple[str, ...] | None) -> ColumnElement[bool]:
        ref = self.alias(reference_t, "ref")
        s = self.alias(resource_t, "s")
        sources = select(s.c.pk).where(
            s.c.res_type == c.src_type, s.c.deleted == false(), self.clause(c.inner, s, (c.src_type,))
        )
        ident = (
            ref.c.hash_identity == c.idents[0] if len(c.idents) == 1 else ref.c.hash_identity.in_(c.idents)
        )
        if types is not None and len(types) == 1:
            same_type: ColumnElement[bool] = ref.c.target_type == types[0]  # uncorrelated: evaluated once
        else:
            same_type = ref.c.target_type == r.c.res_type
        sub = select(ref.c.target_id).where(ident, same_type, ref.c.resource_pk.in_(sources))
        return r.c.res_id.in_(sub)

    def compartment(self, c: CompartmentClause, r: FromClause) -> ColumnElement[bool]:
        parts: list[ColumnElement[bool]] = []
        if c.idents:
            ref = self.alias(reference_t, "cmp")
            ident = (
                ref.c.hash_identity == c.idents[0]
                if len(c.idents) == 1
                else ref.c.hash_identity.in_(c.idents)
            )
            parts.append(
                r.c.pk.in_(
                    select(ref.c.resource_pk).where(
                        ident, ref.c.target_id == c.comp_id, ref.c.target_type == c.comp_type
                    )
                )
            )
        if c.include_self:
            parts.append(and_(r.c.res_type == c.comp_type, r.c.res_id == c.comp_id))
        if not parts:
            return false()
        return or_(*parts) if len(parts) > 1 else parts[0]

    # ---------------------------------------------------------------- sorting
    def sort_expr(self, key: SortKey, r: FromClause) -> Any:
        if key.name == "_id":
            return r.c.res_id
        if key.name == "_lastUpdated":
            return r.c.last_updated
        ptype = key.params[0].type
        table = TABLE_BY_TYPE[ptype]
        t = self.alias(table, "srt")
        col = {
            "string": "value_norm",
            "token": "code",
            "reference": "target_id",
            "uri": "uri",
        }.get(ptype)
        agg: Any
        if col is not None:
            agg = (func.max if key.desc else func.min)(t.c[col])
        else:  # date, number, quantity: the range's far end in the sort direction
            agg = func.max(t.c.high) if key.desc else func.min(t.c.low)
        idents = [p.identity for p in key.params]
        ident = t.c.hash_identity == idents[0] if len(idents) == 1 else t.c.hash_identity.in_(idents)
        return select(agg).where(t.c.resource_pk == r.c.pk, ident).scalar_subquery()


def keyset(exprs: list[tuple[Any, bool]], values: tuple[Any, ...], backward: bool) -> ColumnElement[bool]:
    """Rows strictly after (or before) the boundary row, for ORDER BY exprs NULLS LAST, pk.

    ``exprs`` are (expression, descending) and end with (r.pk, False); ``values``
    the boundary row's values of the same expressions.
    """
    ors: list[ColumnElement[bool]] = []
    eqs: list[ColumnElement[bool]] = []
    for (expr, desc), v in zip(exprs, values, strict=True):
        if v is None:
            step = expr.is_not(None) if backward else false()
            eq = expr.is_(None)
        else:
            forward_cmp = (expr < v) if desc else (expr > v)
            backward_cmp = (expr > v) if desc else (expr < v)
            step = backward_cmp if backward else or_(forward_cmp, expr.is_(None))
            eq = expr == v
        ors.append(and_(*eqs, step) if eqs else step)
        eqs.append(eq)
    return or_(*ors) if ors else true()
