"""Resolving conditional criteria (``Type?query``) through the search engine.

Conditional creates, updates and references run for most entries of a transaction (an HL7v2
message names its patient, encounter, practitioner and room by business identifier), so the
common shape, plain parameters matched by equality in the index tables (``identifier=system|value``),
is answered by one driver-level SQL statement built from the search engine's own parsed query and
conditions (:func:`hub.search.compile.cond_sql`): the same clauses, the same index rows, the same order
(``pk``). Its shape differs from a search page's where it must: on PostgreSQL the index rows are read
first and the resources by key (``pk = ANY(ARRAY(…))``, see :func:`_fast_sql`), and a wave of look-ups runs
as one ``UNION ALL`` (:func:`prefetch`; on PostgreSQL its one-token look-ups as one statement over arrays).
Anything else (chains, ``_has``, ``:missing``, composites, long OR lists) goes to :meth:`SearchEngine.find`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import Connection

from hub.errors import Category, FhirError
from hub.interactions.context import Context
from hub.search.compile import Dialect, any_of, cond_sql
from hub.search.engine import _parse_qs
from hub.search.query import ParamClause, parse_query
from hub.search.tables import TABLE_BY_TYPE
from hub.store.sql import pipeline

_FAST_TABLES = frozenset({"token", "reference", "uri", "string"})  # equality / prefix look-ups
_MAX_VALUES = 100  # the engine's OR_CHUNK: longer OR lists go to the engine


def find(ctx: Context, conn: Connection, res_type: str, criteria: str) -> list[str]:
    if ctx.search is None:
        raise FhirError(Category.NOT_SUPPORTED, "FHIRHUB-CONDITIONAL-UNSUPPORTED", "Conditional operations need the search engine")
    criteria = criteria.split("?", 1)[1] if "?" in criteria else criteria
    if not criteria.strip():
        raise FhirError(Category.INVALID, "FHIRHUB-CONDITIONAL-EMPTY", "Conditional criteria must not be empty")
    memo: dict[tuple[str, str], list[str]] | None = conn.info.get(_MEMO)
    if memo is not None and (res_type, criteria) in memo:
        return list(memo[(res_type, criteria)])
    ids = _lookup(ctx, conn, res_type, criteria)
    if not ids and conn.dialect.name == "postgresql":  # about to create, perhaps: see lock()
        lock(conn, [(res_type, criteria)])
        ids = _lookup(ctx, conn, res_type, criteria)
    return ids


def _lookup(ctx: Context, conn: Connection, res_type: str, criteria: str) -> list[str]:
    fast = _fast_find(ctx, conn, res_type, criteria)
    if fast is not None:
        return fast
    assert ctx.search is not None
    return [res_id for _, res_id in ctx.search.find(conn, res_type, criteria)]


def match_one(ctx: Context, conn: Connection, res_type: str, criteria: str) -> str | None:
    """The id of the one match, None for no match; 412 when several match."""
    ids = find(ctx, conn, res_type, criteria)
    if len(ids) > 1:
        raise FhirError(
            Category.PRECONDITION,
            "FHIRHUB-CONDITIONAL-MULTIPLE",
            f"The criteria match {len(ids)} {res_type} resources; they must match at most one",
        )
    return ids[0] if ids else None


# --------------------------------------------------------------------------- several look-ups at once
_MEMO = "fhirhub.conditional"


def prefetch(ctx: Context, conn: Connection, refs: Sequence[str]) -> None:
    """Resolve many ``Type?criteria`` in **one** statement and keep the answers on ``conn`` for :func:`find`,
    until :func:`forget`. Only for a stretch of planning that writes nothing in between (the answers would
    go stale): :func:`hub.interactions.transaction.process_many` plans a wave of Bundles this way. Criteria
    the common shape does not cover are left to :func:`find` as usual."""
    if ctx.search is None:
        return
    pg = conn.dialect.name != "sqlite"
    parts: list[tuple[str, list[Any]]] = []
    keys: list[tuple[str, str]] = []
    for ref in dict.fromkeys(refs):
        res_type, _, criteria = ref.partition("?")
        if not criteria.strip():
            continue
        built = _fast_sql(ctx, res_type, criteria, pg)
        if built is None:
            continue
        sql, values = built
        parts.append((sql, values))
        keys.append((res_type, criteria))
    memo = _run_parts(conn, keys, parts)
    if pg:  # the criteria that match nothing (about to be created, perhaps): lock, then look again (see lock())
        missing = [j for j, key in enumerate(keys) if not memo[key]]
        if missing:
            with pipeline(conn):  # the lock and the second look: one round trip
                lock(conn, [keys[j] for j in missing])
                memo.update(_run_parts(conn, [keys[j] for j in missing], [parts[j] for j in missing]))
    for (res_type, criteria), ids in list(memo.items()):  # as a conditional update's URL reaches find()
        memo.setdefault((res_type, urlencode(parse_qsl(criteria, keep_blank_values=True))), ids)
    conn.info[_MEMO] = memo


LOCK_CLASS = 7245  # pg_advisory_xact_lock(LOCK_CLASS, hash of the criteria); the one-key locks are another space


def lock(conn: Connection, keys: Sequence[tuple[str, str]]) -> None:
    """PostgreSQL: hold a transaction lock on each ``Type?criteria`` before it is looked up.

    Two transactions that conditionally create the same resource (``If-None-Exist``, a conditional update
    that creates, an HL7v2 message naming the same practitioner) would otherwise both find nothing, neither
    seeing the other's uncommitted row, and both create it; every later look-up would then match two (412).
    So a look-up that finds nothing takes the lock and looks again: the second waits for the first to commit,
    and its second look-up (read committed: a new snapshot per statement) finds the row. A look-up that finds
    its resource (the common case: a known practitioner) takes no lock. Keys are taken in one statement in
    sorted order. SQLite has one writer.
    """
    if conn.dialect.name != "postgresql" or not keys:
        return
    hashes = sorted({_lock_key(res_type, criteria) for res_type, criteria in keys})
    cur: Any = conn.connection.cursor()
    try:
        cur.execute(f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, k) FROM unnest(%s::int[]) AS k", [hashes])
    finally:
        cur.close()


def _lock_key(res_type: str, criteria: str) -> int:
    canonical = f"{res_type}?{urlencode(sorted(parse_qsl(criteria, keep_blank_values=True)))}"
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=4).digest(), "big", signed=True)


def _run_parts(conn: Connection, keys: list[tuple[str, str]], parts: list[tuple[str, list[Any]]]) -> dict[tuple[str, str], list[str]]:
    """Run the look-ups ``parts`` (``SELECT q, pk, res_id`` each, q its position) in UNION ALL statements.

    On PostgreSQL the look-ups of one token (``identifier=system|value``, nearly all of an HL7v2 wave) go
    as one statement over arrays instead (:data:`_BY_TOKENS`): its text never changes, so it is planned
    once per connection, where a ``UNION ALL`` of n look-ups is planned anew for each wave (measured on a
    wave of 58: 8.6 ms planning, 10 ms executing)."""
    memo: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
    rest = list(range(len(parts)))
    if conn.dialect.name == "postgresql":
        tokens = [q for q in rest if parts[q][0] == _ONE_TOKEN_PG and parts[q][1][1] is False]
        if len(tokens) > 1:
            taken = set(tokens)
            rest = [q for q in rest if q not in taken]
            cur: Any = conn.connection.cursor()
            try:
                cur.execute(_BY_TOKENS, [tokens, [parts[q][1][0] for q in tokens], [parts[q][1][2] for q in tokens]])
                for q, _, rid in cur.fetchall():
                    memo[keys[int(q)]].append(str(rid))
            finally:
                cur.close()
    for i in range(0, len(rest), 200):  # SQLite allows 500 compound SELECTs
        chunk = rest[i : i + 200]
        cur = conn.connection.cursor()
        try:
            cur.execute(" UNION ALL ".join(f"SELECT {q} AS q, pk, res_id FROM ({parts[q][0]}) AS m{q}" for q in chunk)
                        + " ORDER BY q, pk", [v for q in chunk for v in parts[q][1]])
            for q, _, rid in cur.fetchall():
                memo[keys[int(q)]].append(str(rid))
        finally:
            cur.close()
    return memo


def forget(conn: Connection) -> None:
    conn.info.pop(_MEMO, None)


# --------------------------------------------------------------------------- the common shape in driver SQL
def _fast_find(ctx: Context, conn: Connection, res_type: str, criteria: str) -> list[str] | None:
    """The matches of simple criteria in one driver-level statement; None when the engine must answer
    (including every case where it would raise: unknown type, no clause, a bad parameter)."""
    built = _fast_sql(ctx, res_type, criteria, conn.dialect.name != "sqlite")
    if built is None:
        return None
    sql, params = built
    cur: Any = conn.connection.cursor()
    try:
        cur.execute(sql, params)
        return [str(rid) for _, rid in cur.fetchall()]
    finally:
        cur.close()


def _fast_sql(ctx: Context, res_type: str, criteria: str, pg: bool) -> tuple[str, list[Any]] | None:
    """``SELECT pk, res_id ... ORDER BY pk`` for simple criteria, with its parameters (None: not simple)."""
    engine: Any = ctx.search
    registry = getattr(engine, "registry", None)
    if registry is None or res_type not in registry.resource_types:
        return None
    try:
        q = parse_query(registry, (res_type,), _parse_qs(criteria), strict=True)
    except FhirError:
        return None  # the engine raises the same error, with its own wording
    if not q.clauses:
        return None
    dialect = Dialect(pg)
    p = dialect.p
    where: list[tuple[str, list[Any]]] = []  # tests of the resource row, with their parameters
    keyed: list[tuple[str, list[Any]]] = []  # PostgreSQL: the positive tests, by primary key
    for c in q.clauses:
        if not isinstance(c, ParamClause) or c.missing is not None or c.components or c.table not in _FAST_TABLES:
            return None
        conds = c.value_conds()
        if not conds or len(conds) > _MAX_VALUES:
            return None
        test = any_of(cond_sql(cond, "", dialect) for cond in conds)
        values = list(test.params)
        table = TABLE_BY_TYPE[c.table].name
        inner = f"SELECT resource_pk FROM {table} WHERE {test.text}"
        if c.negate:
            where.append((f"NOT (pk IN ({inner}))", values))
        elif pg:
            keyed.append((f"pk = ANY(ARRAY({inner}))", values))
        else:
            where.append((f"pk IN ({inner})", values))
    tests = " AND ".join([f"deleted = {p}", f"res_type = {p}", *(t for t, _ in where)])
    test_params = [False, res_type, *(v for _, vs in where for v in vs)]
    if not keyed:
        return f"SELECT pk, res_id FROM resource WHERE {tests} ORDER BY pk", test_params
    # PostgreSQL: the index rows first (InitPlans), then the resources by primary key, and only then the type and
    # deleted tests (OFFSET 0 keeps them out of the scan). Left to itself the planner may walk every resource of
    # the type and test each, as it does on a table that grew since its statistics were taken (a first HL7 feed
    # into a new database: each look-up then costs O(resources of the type), and ingest slows down as it goes).
    by_key = " AND ".join(t for t, _ in keyed)
    sql = f"SELECT pk, res_id FROM (SELECT pk, res_id, res_type, deleted FROM resource WHERE {by_key} OFFSET 0) AS k WHERE {tests}"
    return sql + " ORDER BY pk", [*(v for _, vs in keyed for v in vs), *test_params]


# What _fast_sql gives on PostgreSQL for one token and one value (``identifier=system|value``), and the same
# look-up for many such criteria at once: (position, token hash, type) arrays, the same index rows and tests
# per row of them, in (position, pk) order. tests/unit/test_conditional_prefetch.py holds _fast_sql to this text.
_ONE_TOKEN_PG = (
    "SELECT pk, res_id FROM (SELECT pk, res_id, res_type, deleted FROM resource WHERE "
    "pk = ANY(ARRAY(SELECT resource_pk FROM idx_token WHERE hash_sys_code = %s)) OFFSET 0) AS k "
    "WHERE deleted = %s AND res_type = %s ORDER BY pk"
)
_BY_TOKENS = (
    "SELECT w.q, k.pk, k.res_id FROM unnest(%b::int[], %b::bigint[], %b::text[]) AS w(q, h, t) "
    "CROSS JOIN LATERAL (SELECT pk, res_id, res_type, deleted FROM resource WHERE "
    "pk = ANY(ARRAY(SELECT resource_pk FROM idx_token WHERE hash_sys_code = w.h)) OFFSET 0) AS k "
    "WHERE k.deleted = false AND k.res_type = w.t ORDER BY w.q, k.pk"
)
