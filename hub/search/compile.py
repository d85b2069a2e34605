"""Compiling the search AST (:mod:`hub.search.query`) to driver SQL.

A clause becomes an :class:`Sql` fragment: text with the driver's placeholders, and its values
in the same order. Every value from the request reaches the database as a bound parameter; the
text holds only table and column names from :mod:`hub.search.tables` and our own aliases, so no
SQL text is ever built from input. The statements run on the DBAPI cursor of the connection's
transaction (:func:`hub.store.sql.rows`): building and compiling them with SQLAlchemy Core cost
more than running them (a third of a selective search's CPU).

The shapes:

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

from collections.abc import Iterable
from typing import Any, NamedTuple

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
from hub.search.tables import TABLE_BY_TYPE
from hub.search.values import like_escape


class Sql(NamedTuple):
    """A fragment of SQL: text with placeholders, and the values they take, in order."""

    text: str
    params: tuple[Any, ...] = ()


TRUE = Sql("1 = 1")
FALSE = Sql("1 = 0")


def cat(*parts: str | Sql) -> Sql:
    """The parts one after the other (strings are SQL text without values)."""
    text: list[str] = []
    params: list[Any] = []
    for p in parts:
        if isinstance(p, str):
            text.append(p)
        else:
            text.append(p.text)
            params.extend(p.params)
    return Sql("".join(text), tuple(params))


def join(sep: str, parts: Iterable[Sql]) -> Sql:
    items = list(parts)
    return Sql(sep.join(p.text for p in items), tuple(v for p in items for v in p.params))


def all_of(parts: Iterable[Sql]) -> Sql:
    items = list(parts)
    if not items:
        return TRUE
    return items[0] if len(items) == 1 else cat("(", join(" AND ", items), ")")


def any_of(parts: Iterable[Sql]) -> Sql:
    items = list(parts)
    if not items:
        return FALSE
    return items[0] if len(items) == 1 else cat("(", join(" OR ", items), ")")


def negate(s: Sql) -> Sql:
    return cat("NOT (", s, ")")


class Dialect(NamedTuple):
    """What differs between the two databases in the statements built here."""

    pg: bool

    @property
    def p(self) -> str:
        """The driver's placeholder."""
        return "%s" if self.pg else "?"

    @property
    def false(self) -> str:
        return "false" if self.pg else "0"

    def in_list(self, column: str, values: Iterable[Any]) -> Sql:
        vs = tuple(values)
        if not vs:
            return FALSE
        if len(vs) == 1:
            return Sql(f"{column} = {self.p}", vs)
        return Sql(f"{column} IN ({', '.join([self.p] * len(vs))})", vs)

    def in_small(self, column: str, sub: Sql) -> Sql:
        """``column IN (SELECT …)`` for a set expected to be small; on PostgreSQL ``= ANY(ARRAY(SELECT …))``.

        PostgreSQL estimates a window ``low < :end AND (high > :start …)`` as if its bounds were
        independent (thousands of rows for a week of Appointments that holds a dozen), then walks the
        whole primary key in order to fill a page of 50. ``ARRAY(…)`` runs the sub-select first, once,
        and probes the key for its rows only.
        """
        if self.pg:
            return cat(f"{column} = ANY(ARRAY(", sub, "))")
        return cat(f"{column} IN (", sub, ")")


_OPS = frozenset({"=", "!=", "<", "<=", ">", ">="})


def cond_sql(c: Cond, t: str, d: Dialect) -> Sql:
    """A :data:`Cond` over the columns of the table aliased ``t`` (``""``: unqualified columns)."""
    if isinstance(c, Cmp):
        if c.op not in _OPS:
            raise ValueError(c.op)
        return Sql(f"{_col(t, c.col)} {c.op} {d.p}", (c.value,))
    if isinstance(c, In):
        return d.in_list(_col(t, c.col), c.values)
    if isinstance(c, IsNull):
        return Sql(f"{_col(t, c.col)} IS {'NULL' if c.null else 'NOT NULL'}")
    if isinstance(c, Contains):
        return Sql(f"{_col(t, c.col)} LIKE {d.p} ESCAPE '\\'", ("%" + like_escape(c.value) + "%",))
    if isinstance(c, And):
        return all_of(cond_sql(x, t, d) for x in c.items)
    if isinstance(c, Or):
        return any_of(cond_sql(x, t, d) for x in c.items)
    if isinstance(c, Not):
        return negate(cond_sql(c.item, t, d))
    raise TypeError(c)


def _col(t: str, col: str) -> str:
    if not col.isidentifier():  # columns come from hub.search.query, never from a request
        raise ValueError(col)
    return f"{t}.{col}" if t else col


def date_cond_on_resource(v: DateValue, r: str, d: Dialect) -> Sql:
    """``_lastUpdated``: the resource's instant is a point, low == high."""
    return _point(v.cond(None), f"{r}.last_updated", d)


def _point(c: Cond, col: str, d: Dialect) -> Sql:
    if isinstance(c, Cmp):
        return Sql(f"{col} {c.op} {d.p}", (c.value,))
    if isinstance(c, And):
        return all_of(_point(x, col, d) for x in c.items)
    if isinstance(c, Or):
        return any_of(_point(x, col, d) for x in c.items)
    raise TypeError(c)


OR_CHUNK = 100

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


def _table(ttype: str) -> str:
    return str(TABLE_BY_TYPE[ttype].name)


class Compiler:
    def __init__(self, dialect: Dialect, correlate_ranges: bool = False) -> None:
        self.d = dialect
        self._n = 0
        #: check range clauses row by row (EXISTS on (resource_pk, hash_identity)) rather than
        #: collecting every matching pk: set when an equality clause already narrows the query
        self.correlate_ranges = correlate_ranges

    def alias(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def idents(self, column: str, idents: tuple[int, ...] | list[int]) -> Sql:
        return self.d.in_list(column, idents)

    # ---------------------------------------------------------------- clauses
    def clause(self, c: Clause, r: str, types: tuple[str, ...] | None = None) -> Sql:
        """``c`` over the resource table aliased ``r``; ``types``: the resource types ``r`` can hold (None: any)."""
        if isinstance(c, ParamClause):
            return self.param(c, r)
        if isinstance(c, IdClause):
            return self.d.in_list(f"{r}.res_id", c.ids)
        if isinstance(c, LastUpdatedClause):
            return any_of(date_cond_on_resource(v, r, self.d) for v in c.values)
        if isinstance(c, ChainClause):
            return self.chain(c, r)
        if isinstance(c, HasClause):
            return self.has(c, r, types)
        if isinstance(c, CompartmentClause):
            return self.compartment(c, r)
        raise TypeError(c)

    def param(self, c: ParamClause, r: str) -> Sql:
        d = self.d
        if c.missing is not None:
            where_present: list[Sql] = []
            for table_type, idents in c.presence:
                t = self.alias("m")
                where_present.append(cat(
                    f"EXISTS (SELECT 1 FROM {_table(table_type)} {t} WHERE {t}.resource_pk = {r}.pk AND ",
                    self.idents(f"{t}.hash_identity", idents), ")",
                ))
            has = any_of(where_present)
            return negate(has) if c.missing else has
        if c.table == "composite":
            return cat(f"{r}.pk IN (", self.composite(c), ")")
        conds = c.value_conds()
        if self.correlate_ranges and c.table in RANGE_TABLES and len(conds) <= OR_CHUNK:
            t = self.alias("x")
            hit = cat(f"EXISTS (SELECT 1 FROM {_table(c.table)} {t} WHERE {t}.resource_pk = {r}.pk AND ",
                      any_of(cond_sql(vc, t, d) for vc in conds), ")")
            return negate(hit) if c.negate else hit
        # a long OR list is split into sub-selects of OR_CHUNK (SQLite caps expression depth at 1,000)
        tests: list[Sql] = []
        for i in range(0, len(conds), OR_CHUNK):
            t = self.alias("i")
            tests.append(cat(f"{r}.pk IN (SELECT {t}.resource_pk FROM {_table(c.table)} {t} WHERE ",
                             any_of(cond_sql(vc, t, d) for vc in conds[i : i + OR_CHUNK]), ")"))
        found = any_of(tests)
        return negate(found) if c.negate else found

    def same_row(self, cs: list[ParamClause], r: str) -> Sql:
        """Range clauses of one parameter that has at most one index row per resource: all on that row."""
        conds: list[Cond] = [vc for c in cs for vc in c.value_conds()]
        table = _table(cs[0].table)
        if self.correlate_ranges:
            t = self.alias("x")
            return cat(f"EXISTS (SELECT 1 FROM {table} {t} WHERE {t}.resource_pk = {r}.pk AND ",
                       all_of(cond_sql(x, t, self.d) for x in conds), ")")
        t = self.alias("i")
        sub = cat(f"SELECT {t}.resource_pk FROM {table} {t} WHERE ", all_of(cond_sql(x, t, self.d) for x in conds))
        return self.d.in_small(f"{r}.pk", sub)

    def composite(self, c: ParamClause) -> Sql:
        """pks of resources where one item matches every component of one of the values."""
        d = self.d
        branches: list[Sql] = []
        first_type, first_idents = c.components[0]
        t0 = self.alias("c")
        for value in c.values:
            assert isinstance(value, CompositeValue)
            conds: list[Sql] = [cond_sql(value.parts[0].cond(first_idents), t0, d)]
            for (ctype, cidents), part in zip(c.components[1:], value.parts[1:], strict=True):
                ti = self.alias("c")
                conds.append(cat(
                    f"EXISTS (SELECT 1 FROM {_table(ctype)} {ti} WHERE {ti}.resource_pk = {t0}.resource_pk"
                    f" AND {ti}.grp = {t0}.grp AND ", cond_sql(part.cond(cidents), ti, d), ")",
                ))
            branches.append(all_of(conds))
        return cat(f"SELECT {t0}.resource_pk FROM {_table(first_type)} {t0} WHERE {t0}.grp > 0 AND ", any_of(branches))

    def chain(self, c: ChainClause, r: str) -> Sql:
        # one sub-select per target type, UNION ALL: each probes (hash_identity, target_id, target_type)
        # with its targets' ids; an OR of the types inside one WHERE would scan every reference of the
        # parameter instead (PostgreSQL: a bitmap OR and hashed sub-plans over all of them)
        idents = [p.identity for p in c.params]
        per_type: list[Sql] = []
        for target_type, inner in c.inners:
            ref = self.alias("ref")
            s = self.alias("s")
            targets = cat(Sql(f"SELECT {s}.res_id FROM resource {s} WHERE {s}.res_type = {self.d.p}", (target_type,)),
                          f" AND {s}.deleted = {self.d.false} AND ", self.clause(inner, s, (target_type,)))
            per_type.append(cat(
                f"SELECT {ref}.resource_pk FROM idx_reference {ref} WHERE ", self.idents(f"{ref}.hash_identity", idents),
                Sql(f" AND {ref}.target_type = {self.d.p}", (target_type,)), f" AND {ref}.target_id IN (", targets, ")",
            ))
        return cat(f"{r}.pk IN (", join(" UNION ALL ", per_type), ")")

    def has(self, c: HasClause, r: str, types: tuple[str, ...] | None) -> Sql:
        ref = self.alias("ref")
        s = self.alias("s")
        p = self.d.p
        sources = cat(Sql(f"SELECT {s}.pk FROM resource {s} WHERE {s}.res_type = {p}", (c.src_type,)),
                      f" AND {s}.deleted = {self.d.false} AND ", self.clause(c.inner, s, (c.src_type,)))
        if types is not None and len(types) == 1:
            same_type = Sql(f"{ref}.target_type = {p}", (types[0],))  # uncorrelated: evaluated once
        else:
            same_type = Sql(f"{ref}.target_type = {r}.res_type")
        return cat(f"{r}.res_id IN (SELECT {ref}.target_id FROM idx_reference {ref} WHERE ",
                   self.idents(f"{ref}.hash_identity", c.idents), " AND ", same_type,
                   f" AND {ref}.resource_pk IN (", sources, "))")

    def compartment(self, c: CompartmentClause, r: str) -> Sql:
        p = self.d.p
        parts: list[Sql] = []
        if c.idents:
            ref = self.alias("cmp")
            parts.append(cat(
                f"{r}.pk IN (SELECT {ref}.resource_pk FROM idx_reference {ref} WHERE ",
                self.idents(f"{ref}.hash_identity", c.idents),
                Sql(f" AND {ref}.target_id = {p} AND {ref}.target_type = {p})", (c.comp_id, c.comp_type)),
            ))
        if c.include_self:
            parts.append(Sql(f"({r}.res_type = {p} AND {r}.res_id = {p})", (c.comp_type, c.comp_id)))
        return any_of(parts)

    # ---------------------------------------------------------------- sorting
    def sort_expr(self, key: SortKey, r: str) -> Sql:
        if key.name == "_id":
            return Sql(f"{r}.res_id")
        if key.name == "_lastUpdated":
            return Sql(f"{r}.last_updated")
        ptype = key.params[0].type
        t = self.alias("srt")
        col = {"string": "value_norm", "token": "code", "reference": "target_id", "uri": "uri"}.get(ptype)
        if col is not None:
            agg = f"{'max' if key.desc else 'min'}({t}.{col})"
        else:  # date, number, quantity: the range's far end in the sort direction
            agg = f"max({t}.high)" if key.desc else f"min({t}.low)"
        table = _table(ptype)
        # SQLite: min(low) would otherwise walk the (hash_identity, low) index of the whole parameter for each row
        # (its min/max optimization), testing resource_pk as it goes: minutes for a sort over thousands of matches
        forced = "" if self.d.pg else f" INDEXED BY ix_{table}_resource"
        return cat(f"(SELECT {agg} FROM {table} {t}{forced} WHERE {t}.resource_pk = {r}.pk AND ",
                   self.idents(f"{t}.hash_identity", [p.identity for p in key.params]), ")")


def keyset(exprs: list[tuple[Sql, bool]], values: tuple[Any, ...], backward: bool, d: Dialect) -> Sql:
    """Rows strictly after (or before) the boundary row, for ORDER BY exprs NULLS LAST, pk.

    ``exprs`` are (expression, descending) and end with (r.pk, False); ``values``
    the boundary row's values of the same expressions.
    """
    ors: list[Sql] = []
    eqs: list[Sql] = []
    for (expr, desc), v in zip(exprs, values, strict=True):
        if v is None:
            step = cat(expr, " IS NOT NULL") if backward else FALSE
            eq = cat(expr, " IS NULL")
        else:
            forward = cat(expr, Sql(f" {'<' if desc else '>'} {d.p}", (v,)))
            back = cat(expr, Sql(f" {'>' if desc else '<'} {d.p}", (v,)))
            step = back if backward else cat("(", forward, " OR ", expr, " IS NULL)")
            eq = cat(expr, Sql(f" = {d.p}", (v,)))
        ors.append(all_of([*eqs, step]))
        eqs.append(eq)
    return any_of(ors) if ors else TRUE
