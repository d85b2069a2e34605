"""Matching the search AST against one resource in memory (subscriptions).

The resource is turned into index rows by the same :class:`SearchIndexer` that
writes the database, and each value's :data:`~hub.search.query.Cond` is
interpreted over those rows with SQL's three-valued logic, so a criteria string
means exactly what the same search means against the database.

Supported: every parameter type, modifier and prefix, composites, ``_id``,
``_lastUpdated``. Not supported (FhirError INVALID): chains, ``_has``,
compartments: they need other resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table

from hub.errors import Category, FhirError
from hub.search.query import (
    And,
    ChainClause,
    Clause,
    Cmp,
    CompartmentClause,
    CompositeValue,
    Cond,
    Contains,
    HasClause,
    IdClause,
    In,
    IsNull,
    LastUpdatedClause,
    Not,
    Or,
    ParamClause,
    Query,
)
from hub.search.tables import TABLE_BY_TYPE
from hub.search.values import parse_date_range

Row = Mapping[str, Any]


def eval_cond(c: Cond, row: Row) -> bool | None:
    """SQL semantics: None is unknown (a NULL was compared)."""
    if isinstance(c, Cmp):
        v = row.get(c.col)
        if v is None:
            return None
        if c.op == "=":
            return bool(v == c.value)
        if c.op == "!=":
            return bool(v != c.value)
        if c.op == "<":
            return bool(v < c.value)
        if c.op == "<=":
            return bool(v <= c.value)
        if c.op == ">":
            return bool(v > c.value)
        return bool(v >= c.value)
    if isinstance(c, In):
        v = row.get(c.col)
        return None if v is None else v in c.values
    if isinstance(c, IsNull):
        return (row.get(c.col) is None) == c.null
    if isinstance(c, Contains):
        v = row.get(c.col)
        return None if v is None else c.value in v
    if isinstance(c, And):
        result: bool | None = True
        for x in c.items:
            r = eval_cond(x, row)
            if r is False:
                return False
            if r is None:
                result = None
        return result
    if isinstance(c, Or):
        result = False
        for x in c.items:
            r = eval_cond(x, row)
            if r is True:
                return True
            if r is None:
                result = None
        return result
    if isinstance(c, Not):
        r = eval_cond(c.item, row)
        return None if r is None else not r
    raise TypeError(c)


class MemoryMatcher:
    def __init__(self, resource: Mapping[str, Any], rows: Mapping[Table, list[dict[str, Any]]]) -> None:
        self.resource = resource
        self.rows = rows

    def _rows(self, table_type: str) -> list[dict[str, Any]]:
        return self.rows.get(TABLE_BY_TYPE[table_type], [])

    def query(self, q: Query) -> bool:
        return all(self.clause(c) for c in q.clauses)

    def clause(self, c: Clause) -> bool:
        if isinstance(c, IdClause):
            return self.resource.get("id") in c.ids
        if isinstance(c, LastUpdatedClause):
            meta = self.resource.get("meta")
            lu = meta.get("lastUpdated") if isinstance(meta, dict) else None
            rng = parse_date_range(lu) if isinstance(lu, str) else None
            if rng is None:
                return False
            point = {"low": rng[0], "high": rng[0]}
            return any(eval_cond(v.cond(None), point) is True for v in c.values)
        if isinstance(c, ParamClause):
            return self.param(c)
        if isinstance(c, ChainClause | HasClause | CompartmentClause):
            raise FhirError(
                Category.INVALID,
                "FHIRHUB-SEARCH-IN-MEMORY",
                "Chained parameters, _has and compartments cannot be matched in memory (subscription criteria)",
            )
        raise TypeError(c)

    def param(self, c: ParamClause) -> bool:
        if c.missing is not None:
            present = any(
                row["hash_identity"] in set(idents)
                for table_type, idents in c.presence
                for row in self._rows(table_type)
            )
            return not present if c.missing else present
        if c.table == "composite":
            return self.composite(c)
        rows = self._rows(c.table)
        conds = c.value_conds()
        hit = any(eval_cond(vc, row) is True for row in rows for vc in conds)
        return not hit if c.negate else hit

    def composite(self, c: ParamClause) -> bool:
        for value in c.values:
            assert isinstance(value, CompositeValue)
            (t0, i0) = c.components[0]
            for row in self._rows(t0):
                if row["grp"] <= 0 or eval_cond(value.parts[0].cond(i0), row) is not True:
                    continue
                ok = True
                for (ct, ci), part in zip(c.components[1:], value.parts[1:], strict=True):
                    cond = part.cond(ci)
                    if not any(
                        other["grp"] == row["grp"] and eval_cond(cond, other) is True
                        for other in self._rows(ct)
                    ):
                        ok = False
                        break
                if ok:
                    return True
        return False
