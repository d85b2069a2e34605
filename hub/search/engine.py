"""The search engine: the entry points the REST layer, conditional operations and subscriptions call.

``search`` runs a parsed query (:mod:`hub.search.query`) compiled to SQL
(:mod:`hub.search.compile`) and pages with a keyset cursor:

* results are ordered by the ``_sort`` keys (NULLs last), then by the
  resource's surrogate ``pk``; the next/previous links carry an opaque cursor
  holding the boundary row's key values, and a page is ``WHERE (keys) > cursor
  ORDER BY keys LIMIT n+1``. Rows written between two page requests land in
  their sorted place: none is repeated or skipped because of them (a resource
  whose sort value changes may move, as in any keyset scheme).
* ``_total``: ``accurate`` and ``estimate`` both count exactly; ``none``
  counts nothing; by default the first page carries the total and later pages
  none.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection

from hub.errors import Category, FhirError, Issue
from hub.fhir import summary as summary_rules
from hub.search.compile import (
    OR_CHUNK,
    Compiler,
    Dialect,
    Sql,
    all_of,
    any_of,
    cat,
    cond_sql,
    is_anchor,
    keyset,
)
from hub.search.index import SearchIndexer
from hub.search.memory import MemoryMatcher
from hub.search.params import MODIFIERS, PREFIXES, UNSUPPORTED, Registry
from hub.search.query import (
    MAX_COUNT,
    ChainClause,
    CompartmentClause,
    Cursor,
    Include,
    ParamClause,
    Query,
    bad,
    parse_query,
)
from hub.search.tables import TABLE_BY_TYPE
from hub.search.values import parse_date_range
from hub.store import sql

MAX_INCLUDES = 1000
MAX_ITERATE = 4
CHUNK = 500


@dataclass
class SearchRequest:
    res_type: str | None
    params: list[tuple[str, str]]
    strict: bool
    base_url: str
    compartment: tuple[str, str] | None = None


@dataclass
class SearchEntry:
    res_type: str
    res_id: str
    data: bytes
    mode: Literal["match", "include"]


@dataclass
class SearchResult:
    entries: list[SearchEntry] = field(default_factory=list)
    total: int | None = None
    links: dict[str, str] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    summary_count_only: bool = False


@dataclass
class _Row:
    pk: int
    res_type: str
    res_id: str
    data: bytes
    keys: tuple[Any, ...]


class SearchEngine:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.indexer = SearchIndexer(registry)

    # ================================================================ search
    def search(self, conn: Connection, req: SearchRequest) -> SearchResult:
        res_types = self._types(req)
        q = parse_query(self.registry, res_types, req.params, strict=req.strict, base_url=req.base_url)
        if req.compartment is not None:
            q.clauses.insert(0, self._compartment_clause(req.compartment, res_types))
        d = _dialect(conn)
        comp = Compiler(d)
        where = self._where(comp, q, "r", res_types)
        result = SearchResult(issues=list(q.issues))
        if q.summary == "count" or q.count == 0:
            result.total = self._count(conn, where, q, req)
            result.summary_count_only = q.summary == "count"
            result.links = {"self": self._link(req, q, None)}
            return result

        sort_exprs: list[tuple[Sql, bool]] = [(comp.sort_expr(k, "r"), k.desc) for k in q.sort]
        sort_exprs.append((Sql("r.pk"), False))
        backward = q.cursor is not None and q.cursor.direction == "prev"
        stmt = self._page_stmt(d, where, sort_exprs, q.cursor, backward, q.count + 1)
        fetched = [_Row(x[0], x[1], x[2], x[3], (*x[4:], x[0])) for x in sql.rows(conn, *stmt)]
        more = len(fetched) > q.count
        rows = fetched[: q.count]
        if backward:
            rows.reverse()

        links = {"self": self._link(req, q, q.cursor)}
        has_next = (more and not backward) or (backward and bool(rows))
        has_prev = (q.cursor is not None and not backward and bool(rows)) or (backward and more)
        if q.cursor is not None and not rows:
            has_next = has_prev = False
        if has_next and rows:
            links["next"] = self._link(req, q, Cursor("next", rows[-1].keys))
        if has_prev and rows:
            links["previous"] = self._link(req, q, Cursor("prev", rows[0].keys))
        result.links = links

        if q.total in ("accurate", "estimate"):
            result.total = self._count(conn, where, q, req)
        elif q.total is None and q.cursor is None:
            result.total = len(rows) if not more else self._count(conn, where, q, req)

        for row in rows:
            data = row.data
            if q.summary or q.elements:
                data = self.subset(data, row.res_type, q.summary, q.elements)
            result.entries.append(SearchEntry(row.res_type, row.res_id, data, "match"))
        if q.includes or q.revincludes:
            result.entries.extend(self._includes(conn, q, rows, result.issues))
        return result

    def _types(self, req: SearchRequest) -> tuple[str, ...] | None:
        if req.res_type is not None:
            if req.res_type not in self.registry.resource_types:
                raise FhirError(
                    Category.NOT_FOUND, "FHIRHUB-SEARCH-TYPE", f"Unknown resource type {req.res_type!r}"
                )
            return (req.res_type,)
        types: list[str] = []
        for name, value in req.params:
            if name == "_type":
                for t in value.split(","):
                    t = t.strip()
                    if not t:
                        continue
                    if t not in self.registry.resource_types:
                        raise bad("FHIRHUB-SEARCH-TYPE", f"_type: unknown resource type {t!r}")
                    types.append(t)
        return tuple(dict.fromkeys(types)) or None

    def _compartment_clause(
        self, compartment: tuple[str, str], res_types: tuple[str, ...] | None
    ) -> CompartmentClause:
        comp_type, comp_id = compartment
        if comp_type != "Patient":
            raise FhirError(
                Category.NOT_SUPPORTED,
                "FHIRHUB-SEARCH-COMPARTMENT",
                f"Only the Patient compartment is supported, not {comp_type}",
            )
        types = res_types or tuple(sorted(set(self.registry.compartment) | {"Patient"}))
        idents: list[int] = []
        for t in types:
            for code in self.registry.compartment_params(t):
                bp = self.registry.get(t, code)
                if bp is not None and bp.type == "reference":
                    idents.append(bp.identity)
        include_self = "Patient" in types
        if not idents and not include_self:
            raise bad("FHIRHUB-SEARCH-COMPARTMENT", f"{', '.join(types)} is not in the Patient compartment")
        return CompartmentClause(comp_type, comp_id, types, tuple(idents), include_self)

    def _where(self, comp: Compiler, q: Query, r: str, res_types: tuple[str, ...] | None) -> list[Sql]:
        where: list[Sql] = [Sql(f"{r}.deleted = {comp.d.false}")]
        # Index rows carry their (type, parameter) in hash_identity and exist only for current resources,
        # so a positive index clause already confines the query to the types: a condition on res_type
        # then only misleads SQLite into (res_type, pk) look-ups, which lose the pk order of the
        # IN-list and must read every match before sorting, instead of stopping after a page.
        if res_types is not None and not any(_typed_rows(c) for c in q.clauses):
            where.append(comp.d.in_list(f"{r}.res_type", res_types))
        # with an equality clause to drive the query, range clauses are checked row by row (EXISTS);
        # without one, each clause collects its pks (a row-by-row check would scan the whole type)
        comp.correlate_ranges = any(is_anchor(c) for c in q.clauses)
        # several range clauses on a parameter a resource has one row of (date=ge…&date=lt… on
        # Appointment.start) are checked on that one row: one index range instead of two sets of pks
        rows: dict[tuple[str, tuple[int, ...]], list[ParamClause]] = {}
        for c in q.clauses:
            if self._one_row_range(c):
                assert isinstance(c, ParamClause)
                rows.setdefault((c.table, c.idents), []).append(c)
        for c in q.clauses:
            group = rows.get((c.table, c.idents)) if isinstance(c, ParamClause) else None
            if group is not None and len(group) > 1:
                if c is group[0]:
                    where.append(comp.same_row(group, r))
                continue
            where.append(comp.clause(c, r, res_types))
        return where

    def _one_row_range(self, c: Any) -> bool:
        return (
            isinstance(c, ParamClause)
            and c.table == "date"
            and c.missing is None
            and not c.negate
            and len(c.values) == 1
            and all(self.registry.one_date_row(bp) for bp in c.params)
        )

    @staticmethod
    def _count(conn: Connection, where: list[Sql], q: Query | None, req: SearchRequest | None) -> int:
        # one plain parameter: count its index rows' resources, without visiting the resource table
        # (index rows exist only for current, non-deleted resources of the type in the identity hash)
        if q is not None and req is not None and req.compartment is None and len(q.clauses) == 1:
            c = q.clauses[0]
            if isinstance(c, ParamClause) and c.missing is None and not c.negate and c.table in TABLE_BY_TYPE:
                conds = c.value_conds()
                if 0 < len(conds) <= OR_CHUNK:
                    d = _dialect(conn)
                    stmt = cat(f"SELECT count(DISTINCT cnt.resource_pk) FROM {TABLE_BY_TYPE[c.table].name} cnt WHERE ",
                               any_of(cond_sql(x, "cnt", d) for x in conds))
                    return int(sql.rows(conn, *stmt)[0][0])
        return int(sql.rows(conn, *cat("SELECT count(*) FROM resource r WHERE ", all_of(where)))[0][0])

    @staticmethod
    def _page_stmt(
        d: Dialect,
        where: list[Sql],
        sort_exprs: list[tuple[Sql, bool]],
        cursor: Cursor | None,
        backward: bool,
        limit: int,
    ) -> Sql:
        """The page: chosen on the resource table alone (``r``); only its rows then fetch their JSON.

        Selects pk, res_type, res_id, data and the sort keys k0, k1, … (``sort_exprs`` ends with r.pk)."""
        conds = list(where)
        if cursor is not None:
            conds.append(keyset(sort_exprs, cursor.keys, backward, d))
        keys = [cat(e, f" AS k{i}") for i, (e, _) in enumerate(sort_exprs[:-1])]

        def ordering(names: list[str]) -> str:
            order = []
            for i, (name, (_, desc)) in enumerate(zip(names, sort_exprs, strict=True)):
                is_pk = i == len(names) - 1
                if backward:
                    o = f"{name} {'ASC' if desc else 'DESC'}"
                    order.append(o if is_pk else o + " NULLS FIRST")
                else:
                    o = f"{name} {'DESC' if desc else 'ASC'}"
                    order.append(o if is_pk else o + " NULLS LAST")
            return ", ".join(order)

        n_keys = len(keys)
        inner_names = [f"k{i}" for i in range(n_keys)] + ["r.pk"]
        outer_names = [f"page.k{i}" for i in range(n_keys)] + ["page.pk"]
        key_cols = "".join(f", page.k{i}" for i in range(n_keys))
        return cat(
            f"SELECT page.pk, page.res_type, page.res_id, v.data{key_cols} FROM ("
            "SELECT r.pk, r.res_type, r.res_id, r.version", *(cat(", ", k) for k in keys),
            " FROM resource r WHERE ", all_of(conds),
            f" ORDER BY {ordering(inner_names)}", Sql(f" LIMIT {d.p}", (limit,)),
            ") page JOIN resource_version v ON v.resource_pk = page.pk AND v.version = page.version"
            f" ORDER BY {ordering(outer_names)}",
        )

    # ================================================================ links
    def _link(self, req: SearchRequest, q: Query, cursor: Cursor | None) -> str:
        base = req.base_url.rstrip("/")
        if req.compartment is not None:
            path = f"{base}/{req.compartment[0]}/{urllib.parse.quote(req.compartment[1], safe='')}"
            path += f"/{req.res_type}" if req.res_type else "/*"
        elif req.res_type:
            path = f"{base}/{req.res_type}"
        else:
            path = base
        params = list(q.kept)
        if cursor is not None:
            params.append(("_cursor", cursor.encode()))
        if not params:
            return path
        return path + "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)

    # ================================================================ includes
    def _includes(
        self, conn: Connection, q: Query, matches: Sequence[_Row], issues: list[Issue]
    ) -> list[SearchEntry]:
        seen = {(m.res_type, m.res_id) for m in matches}
        out: list[SearchEntry] = []
        frontier: list[tuple[int, str, str]] = [(m.pk, m.res_type, m.res_id) for m in matches]
        for round_ in range(MAX_ITERATE + 1):
            incs = [i for i in q.includes if round_ == 0 or i.iterate]
            revs = [i for i in q.revincludes if round_ == 0 or i.iterate]
            if not frontier or not (incs or revs):
                break
            found: list[tuple[int, str, str, bytes]] = []
            if incs:
                found.extend(self._forward(conn, incs, frontier))
            if revs:
                found.extend(self._reverse(conn, revs, frontier))
            frontier = []
            for pk, t, i, data in found:
                if (t, i) in seen:
                    continue
                if len(out) >= MAX_INCLUDES:
                    issues.append(
                        Issue("warning", "too-costly", f"Included resources were cut at {MAX_INCLUDES}")
                    )
                    return out
                seen.add((t, i))
                out.append(SearchEntry(t, i, data, "include"))
                frontier.append((pk, t, i))
        return out

    def _forward(
        self, conn: Connection, incs: list[Include], frontier: list[tuple[int, str, str]]
    ) -> list[Any]:
        conds: list[str] = []
        params: list[Any] = []
        for inc in incs:
            if inc.src_type is not None and not inc.idents:
                continue  # a parameter that is no reference: nothing to follow
            parts = ["target_type IS NOT NULL"]
            if inc.src_type is not None:
                sql_in, values = _in(conn, "hash_identity", inc.idents)
                parts.append(sql_in)
                params += values
            if inc.target is not None:
                parts.append("target_type = {p}")
                params.append(inc.target)
            conds.append("(" + " AND ".join(parts) + ")")
        if not conds:
            return []
        targets: set[tuple[str, str]] = set()
        pks = [f[0] for f in frontier]
        for chunk in _chunks(pks):
            # no DISTINCT (the set is): with it SQLite prefers the covering (hash_identity, target_id,
            # target_type) index and reads every reference of the parameter, not the page's rows
            sql_in, values = _in(conn, "resource_pk", chunk)
            template = f"SELECT target_type, target_id FROM idx_reference WHERE {sql_in} AND ({' OR '.join(conds)})"
            targets.update((t, i) for t, i in sql.fetch_all(conn, template, (*values, *params)))
        return self._fetch_by_ids(conn, targets)

    def _reverse(
        self, conn: Connection, revs: list[Include], frontier: list[tuple[int, str, str]]
    ) -> list[Any]:
        by_type: dict[str, list[str]] = {}
        for _, t, i in frontier:
            by_type.setdefault(t, []).append(i)
        pks: set[int] = set()
        for rev in revs:
            if rev.src_type is not None and not rev.idents:
                continue
            for t, ids in by_type.items():
                if rev.target is not None and rev.target != t:
                    continue
                for chunk in _chunks(ids):
                    ids_in, params = _in(conn, "target_id", chunk)
                    template = f"SELECT DISTINCT resource_pk FROM idx_reference WHERE target_type = {{p}} AND {ids_in}"
                    params = [t, *params]
                    if rev.src_type is not None:
                        idents_in, values = _in(conn, "hash_identity", rev.idents)
                        template += f" AND {idents_in}"
                        params += values
                    pks.update(x for (x,) in sql.fetch_all(conn, template, tuple(params)))
        return self._fetch_by_pks(conn, pks)

    def _fetch_by_ids(self, conn: Connection, targets: Iterable[tuple[str, str]]) -> list[Any]:
        by_type: dict[str, list[str]] = {}
        for t, i in targets:
            by_type.setdefault(t, []).append(i)
        out: list[Any] = []
        for t, ids in sorted(by_type.items()):
            found: list[Any] = []
            for chunk in _chunks(sorted(ids)):
                # no ORDER BY: with one, SQLite walks the type's (res_type, pk) index (every resource of the
                # type) rather than probing (res_type, res_id) once per id; the order is set below
                sql_in, values = _in(conn, "r.res_id", chunk)
                found += sql.fetch_all(conn, f"{CURRENT_SQL} WHERE r.res_type = {{p}} AND {sql_in} AND r.deleted = {{p}}",
                                       (t, *values, False))
            out.extend(sorted(found, key=lambda x: x[0]))
        return out

    def _fetch_by_pks(self, conn: Connection, pks: Iterable[int]) -> list[Any]:
        out: list[Any] = []
        for chunk in _chunks(sorted(pks)):
            sql_in, values = _in(conn, "r.pk", chunk)
            out += sql.fetch_all(conn, f"{CURRENT_SQL} WHERE {sql_in} AND r.deleted = {{p}} ORDER BY r.pk", (*values, False))
        return out

    # ================================================================ _summary / _elements
    @staticmethod
    def subset(data: bytes, res_type: str, summary: str | None, elements: tuple[str, ...] | None) -> bytes:
        return summary_rules.subset(data, res_type, summary, elements)

    # ================================================================ conditional operations
    def find(self, conn: Connection, res_type: str, query: str, base_url: str = "") -> list[tuple[int, str]]:
        """Current, non-deleted matches of ``query`` (a query string), for conditional operations."""
        if res_type not in self.registry.resource_types:
            raise bad("FHIRHUB-SEARCH-TYPE", f"Unknown resource type {res_type!r}")
        params = _parse_qs(query)
        q = parse_query(self.registry, (res_type,), params, strict=True, base_url=base_url)
        if not q.clauses:
            raise bad(
                "FHIRHUB-SEARCH-CONDITIONAL", f"Conditional criteria {query!r} hold no search parameter"
            )
        where = self._where(Compiler(_dialect(conn)), q, "r", (res_type,))
        stmt = cat("SELECT r.pk, r.res_id FROM resource r WHERE ", all_of(where), " ORDER BY r.pk")
        return [(int(pk), str(rid)) for pk, rid in sql.rows(conn, *stmt)]

    def matches(self, resource: dict[str, Any], res_type: str, query: str, base_url: str = "") -> bool:
        """In-memory match of one resource (subscriptions); no chains, ``_has`` or compartments."""
        q = parse_query(self.registry, (res_type,), _parse_qs(query), strict=True, base_url=base_url)
        if resource.get("resourceType") != res_type:
            return False
        rows = self.indexer.extract(resource)
        return MemoryMatcher(resource, rows).query(q)

    def check_criteria(self, res_type: str, query: str) -> None:
        """Raise INVALID unless ``query`` can be matched in memory (validate a Subscription)."""
        self.matches({"resourceType": res_type, "id": "x"}, res_type, query)

    # ================================================================ capability
    def capability(self, res_type: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for bp in sorted(self.registry.params(res_type), key=lambda p: p.code):
            if bp.code in UNSUPPORTED or (bp.evaluator is None and bp.code not in ("_id", "_lastUpdated")):
                continue
            mods = list(MODIFIERS.get(bp.type, ()))
            if bp.type == "reference":
                mods = [m for m in mods if m != "[type]"] + ["[type]", "chained"]
            doc = bp.param.description.strip()
            extra = f"Modifiers: {', '.join(':' + m for m in mods)}." if mods else ""
            if bp.type in PREFIXES:
                extra += f" Prefixes: {', '.join(PREFIXES[bp.type])}."
            if bp.code in ("_id",):
                extra = "No modifiers."
            if bp.code == "_lastUpdated":
                extra = f"Prefixes: {', '.join(PREFIXES['date'])}."
            out.append(
                {
                    "name": bp.code,
                    "definition": bp.param.url,
                    "type": bp.type,
                    "documentation": (doc + ("\n\n" if doc else "") + extra).strip(),
                }
            )
        return out

    # ================================================================ $everything
    def everything(
        self, conn: Connection, patient_id: str, params: list[tuple[str, str]], base_url: str
    ) -> SearchResult:
        """``Patient/{id}/$everything``: the patient, its compartment, and what those refer to (per page).

        ``params`` are the request's (name, value) pairs: ``_since``, ``_type``, ``_count``, ``_cursor``.
        """
        since: str | None = None
        types: list[str] | None = None
        count: int | None = None
        cursor: str | None = None
        for name, value in params:
            if name == "_since":
                since = value
            elif name == "_type":
                types = [t.strip() for t in value.split(",") if t.strip()]
            elif name == "_count":
                if not re.fullmatch(r"[0-9]{1,9}", value):
                    raise bad("FHIRHUB-SEARCH-COUNT", "_count must be a non-negative integer")
                count = int(value)
            elif name == "_cursor":
                cursor = value
        d = _dialect(conn)
        exists_row = sql.rows(conn, f"SELECT pk FROM resource WHERE res_type = {d.p} AND res_id = {d.p}"
                                    f" AND deleted = {d.false}", ("Patient", patient_id))
        if not exists_row:
            raise FhirError(
                Category.NOT_FOUND, "FHIRHUB-SEARCH-PATIENT", f"Patient/{patient_id} is not known"
            )
        members = sorted(set(self.registry.compartment) | {"Patient"})
        if types:
            for t in types:
                if t not in self.registry.resource_types:
                    raise bad("FHIRHUB-SEARCH-TYPE", f"_type: unknown resource type {t!r}")
            chosen = tuple(t for t in dict.fromkeys(types) if t in members)
        else:
            chosen = tuple(members)
        n = MAX_COUNT if count is None else max(1, min(count, MAX_COUNT))
        kept: list[tuple[str, str]] = []
        since_us: int | None = None
        if since is not None:
            rng = parse_date_range(since)
            if rng is None:
                raise bad("FHIRHUB-SEARCH-DATE", "_since is not a valid instant")
            since_us = rng[0]
            kept.append(("_since", since))
        if types:
            kept.append(("_type", ",".join(types)))
        if count is not None:
            kept.append(("_count", str(n)))
        cur = Cursor.decode(cursor, 0) if cursor else None

        if not chosen:
            return SearchResult(
                total=0, links={"self": self._everything_link(base_url, patient_id, kept, None)}
            )
        clause = self._compartment_clause(("Patient", patient_id), chosen)
        comp = Compiler(d)
        where: list[Sql] = [Sql(f"r.deleted = {d.false}"), d.in_list("r.res_type", chosen), comp.clause(clause, "r", chosen)]
        if since_us is not None:
            where.append(Sql(f"r.last_updated >= {d.p}", (since_us,)))
        backward = cur is not None and cur.direction == "prev"
        sort_exprs: list[tuple[Sql, bool]] = [(Sql("r.pk"), False)]
        stmt = self._page_stmt(d, where, sort_exprs, cur, backward, n + 1)
        fetched = [_Row(x[0], x[1], x[2], x[3], ()) for x in sql.rows(conn, *stmt)]
        more = len(fetched) > n
        rows = fetched[:n]
        if backward:
            rows.reverse()
        result = SearchResult()
        result.links["self"] = self._everything_link(base_url, patient_id, kept, cur)
        if rows and ((more and not backward) or backward):
            result.links["next"] = self._everything_link(
                base_url, patient_id, kept, Cursor("next", (rows[-1].pk,))
            )
        if rows and ((cur is not None and not backward) or (backward and more)):
            result.links["previous"] = self._everything_link(
                base_url, patient_id, kept, Cursor("prev", (rows[0].pk,))
            )
        if cur is None:
            result.total = len(rows) if not more else self._count(conn, where, None, None)
        result.entries = [SearchEntry(x.res_type, x.res_id, x.data, "match") for x in rows]
        # what the page refers to outside the compartment (Practitioner, Organization, Medication, …)
        member_set = set(members)
        seen = {(x.res_type, x.res_id) for x in rows}
        targets: set[tuple[str, str]] = set()
        for chunk in _chunks([x.pk for x in rows]):
            stmt2 = cat("SELECT DISTINCT target_type, target_id FROM idx_reference WHERE ", d.in_list("resource_pk", chunk),
                        " AND target_type IS NOT NULL AND NOT (", d.in_list("target_type", sorted(member_set)), ")")
            targets.update((t, i) for t, i in sql.rows(conn, *stmt2))
        for _, t, i, data in self._fetch_by_ids(conn, targets - seen):
            result.entries.append(SearchEntry(t, i, data, "include"))
        return result

    @staticmethod
    def _everything_link(
        base_url: str, patient_id: str, kept: list[tuple[str, str]], cursor: Cursor | None
    ) -> str:
        path = f"{base_url.rstrip('/')}/Patient/{urllib.parse.quote(patient_id, safe='')}/$everything"
        params = list(kept)
        if cursor is not None:
            params.append(("_cursor", cursor.encode()))
        return path + ("?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote) if params else "")


def _typed_rows(c: Any) -> bool:
    """Does clause ``c`` match only index rows of its own resource types?"""
    if isinstance(c, ChainClause):
        return True
    return isinstance(c, ParamClause) and c.missing is None and not c.negate and c.table in TABLE_BY_TYPE


def _dialect(conn: Connection) -> Dialect:
    return Dialect(pg=conn.dialect.name != "sqlite")


def _parse_qs(query: str) -> list[tuple[str, str]]:
    query = query.lstrip("?")
    m = re.match(r"^[A-Z][A-Za-z]+\?", query)
    if m:  # "Patient?identifier=…" as written in conditional references
        query = query[m.end() :]
    try:
        return urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, max_num_fields=2000
        )
    except ValueError as exc:
        raise bad("FHIRHUB-SEARCH-QUERY", f"Malformed query string: {exc}") from exc


# Includes run as driver SQL (hub.store.sql), as the page does: building and compiling SQLAlchemy Core statements
# cost more than running them (a page of seven appointments and their patients: 1.5 ms of 5).
CURRENT_SQL = ("SELECT r.pk, r.res_type, r.res_id, v.data FROM resource r"
               " JOIN resource_version v ON v.resource_pk = r.pk AND v.version = r.version")


def _in(conn: Connection, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """``column`` among ``values``: one array parameter on PostgreSQL (one statement text whatever the count),
    an IN list on SQLite."""
    if conn.dialect.name == "postgresql":
        return f"{column} = ANY({{p}})", [list(values)]
    return f"{column} IN ({', '.join(['{p}'] * len(values))})", list(values)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]
