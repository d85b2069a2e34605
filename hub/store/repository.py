"""The one write path, and the reads that serve stored bytes.

REST, transactions, HL7v2 ingest, EHR sync and workflows all write through
:meth:`Repository.write_many`. In the caller's database transaction it writes,
for each change: the current-pointer row, an append-only version row holding
the JSON bytes exactly as they will be served, the search-index rows, and an
outbox row. Nothing is acknowledged by the callers until that transaction
commits.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson
from sqlalchemy import Connection, Table, select

from hub.errors import Category, FhirError
from hub.store import sql
from hub.store.tables import outbox_t, resource_t, version_t

Interaction = Literal["create", "update", "delete"]
RESOURCE_COLS = ("res_type", "res_id", "version", "deleted", "content_hash", "last_updated")
UPDATE_COLS = ("version", "deleted", "content_hash", "last_updated")
VERSION_COLS = ("resource_pk", "res_type", "res_id", "version", "last_updated", "method", "deleted", "data")
# The hot reads, as driver SQL (see hub/store/sql.py): by (type, id) through the resource table's unique key.
READ_SQL = (
    "SELECT r.pk, r.version, r.deleted, r.last_updated, v.data FROM resource r "
    "JOIN resource_version v ON v.resource_pk = r.pk AND v.version = r.version WHERE r.res_type = {p} AND r.res_id = {p}"
)
VREAD_SQL = (
    "SELECT r.pk, v.last_updated, v.deleted, v.data FROM resource r "
    "JOIN resource_version v ON v.resource_pk = r.pk WHERE r.res_type = {p} AND r.res_id = {p} AND v.version = {p}"
)
OUTBOX_COLS = ("resource_pk", "res_type", "res_id", "version", "interaction", "origin", "at")


class Indexer(Protocol):
    """Turns a resource into search-index rows (``resource_pk`` is filled in by the repository)."""

    @property
    def tables(self) -> Sequence[Table]: ...

    def extract(self, resource: Mapping[str, Any]) -> Mapping[Table, list[dict[str, Any]]]: ...

    def independent_of_version(self, res_type: str) -> bool: ...


class NoIndexer:
    """The in-memory twin used where search does not matter."""

    tables: Sequence[Table] = ()

    def extract(self, resource: Mapping[str, Any]) -> Mapping[Table, list[dict[str, Any]]]:
        return {}

    def independent_of_version(self, res_type: str) -> bool:
        return True


def now_micros() -> int:
    """Wall clock in microseconds, truncated to the millisecond shown in ``meta.lastUpdated``."""
    return (time.time_ns() // 1_000_000) * 1000


def instant(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    return str(uuid.uuid4())


def content_hash(resource: Mapping[str, Any]) -> bytes:
    """Hash of the content apart from server-managed ``meta.versionId``/``lastUpdated``."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = {**resource, "meta": rest} if rest else {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


@dataclass(frozen=True)
class Stored:
    """A stored version: what read, vread and history serve."""

    pk: int
    res_type: str
    res_id: str
    version: int
    last_updated: int
    deleted: bool
    data: bytes | None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_modified(self) -> str:
        return datetime.fromtimestamp(self.last_updated / 1_000_000, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")

    def resource(self) -> dict[str, Any]:
        assert self.data is not None
        parsed: dict[str, Any] = orjson.loads(self.data)
        return parsed


@dataclass
class Change:
    """One resource change. ``resource`` is None for a delete."""

    res_type: str
    res_id: str
    resource: dict[str, Any] | None
    method: str  # POST | PUT | PATCH | DELETE (recorded in history)
    if_match: int | None = None
    create_only: bool = False  # POST: the id is new; never updates
    origin: str | None = None  # who caused it (client id, connector name); carried to the outbox
    # search-index rows extracted before the write transaction (Repository.index_rows), or None: extract in it
    index_rows: Mapping[Any, list[dict[str, Any]]] | None = None
    digest: bytes | None = None  # content_hash(resource), computed before the write transaction, or None: in it


@dataclass
class WriteResult:
    change: Change
    outcome: Literal["created", "updated", "deleted", "unchanged", "not-found"]
    stored: Stored | None  # the version written, or the current one when unchanged


@dataclass
class _Current:
    pk: int
    version: int
    deleted: bool
    content_hash: bytes
    last_updated: int


class Repository:
    def __init__(self, indexer: Indexer | None = None, clock: Callable[[], int] = now_micros) -> None:
        self.indexer: Indexer = indexer or NoIndexer()
        self.clock = clock

    # ------------------------------------------------------------------ reads
    def read(self, conn: Connection, res_type: str, res_id: str) -> Stored | None:
        """The current version (a tombstone when deleted), or None if it never existed."""
        row = sql.fetch_one(conn, READ_SQL, (res_type, res_id))
        if row is None:
            return None
        return Stored(row[0], res_type, res_id, row[1], row[3], bool(row[2]), _bytes(row[4]))

    def vread(self, conn: Connection, res_type: str, res_id: str, version: int) -> Stored | None:
        row = sql.fetch_one(conn, VREAD_SQL, (res_type, res_id, version))
        if row is None:
            return None
        return Stored(row[0], res_type, res_id, version, row[1], bool(row[2]), _bytes(row[3]))

    def _read_current(self, conn: Connection, items: list[tuple[_Current, WriteResult]]) -> None:
        """Fill in the current version of each unchanged resource (locked by ``_lock_current``): one statement."""
        for n in range(0, len(items), 200):
            chunk = items[n : n + 200]
            where = " OR ".join(["(resource_pk = {p} AND version = {p})"] * len(chunk))
            rows = sql.fetch_all(conn, f"SELECT resource_pk, data FROM resource_version WHERE {where}",
                                 tuple(x for cur, _ in chunk for x in (cur.pk, cur.version)))
            data = {int(pk): _bytes(blob) for pk, blob in rows}
            for cur, result in chunk:
                c = result.change
                result.stored = Stored(cur.pk, c.res_type, c.res_id, cur.version, cur.last_updated, False, data[cur.pk])

    def exists(self, conn: Connection, res_type: str, res_id: str) -> bool:
        r = resource_t.c
        return conn.execute(select(r.pk).where(r.res_type == res_type, r.res_id == res_id)).first() is not None

    # ----------------------------------------------------------------- writes
    def index_rows(self, res_type: str, res_id: str, resource: Mapping[str, Any]) -> Mapping[Any, list[dict[str, Any]]] | None:
        """The search-index rows ``resource`` will have once written as ``res_type/res_id``, computed before
        the write transaction, so that on SQLite the single writer does not spend its turn on them. None when
        the rows depend on what the write sets (a parameter over ``meta.versionId``/``lastUpdated``)."""
        if not self.indexer.tables or not self.indexer.independent_of_version(res_type):
            return None
        body = {"resourceType": res_type, "id": res_id, **{k: v for k, v in resource.items() if k not in ("resourceType", "id")}}
        return self.indexer.extract(body)

    def write(self, conn: Connection, change: Change,
              before_outbox: Callable[[list[WriteResult]], None] | None = None) -> WriteResult:
        return self.write_many(conn, [change], before_outbox)[0]

    def write_many(self, conn: Connection, changes: Sequence[Change],
                   before_outbox: Callable[[list[WriteResult]], None] | None = None) -> list[WriteResult]:
        """Apply ``changes`` inside the caller's transaction. Each (type, id) at most once.

        ``before_outbox`` gets the results once they are known and may insert rows that belong with the write
        (its AuditEvents) in the same pipeline, before the outbox step: on PostgreSQL that step takes the lock
        that orders the writers' commits, which is then held to COMMIT, so a statement after it would hold every
        other writer for one more round trip.
        """
        if not changes:
            return []
        keys = [(c.res_type, c.res_id) for c in changes]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise FhirError(
                Category.INVALID, "FHIRHUB-WRITE-DUPLICATE", f"{dup[0]}/{dup[1]} is changed more than once in one transaction"
            )
        current = self._lock_current(conn, changes)
        now = self.clock()
        results: list[WriteResult] = []
        new_rows: list[tuple[Any, ...]] = []  # resource rows to insert (RESOURCE_COLS)
        new_results: list[WriteResult] = []
        updates: list[tuple[Any, ...]] = []  # UPDATE_COLS + pk
        reindex: list[tuple[int | None, WriteResult, dict[str, Any] | None]] = []
        unchanged: list[tuple[_Current, WriteResult]] = []
        for change in changes:
            cur = current.get((change.res_type, change.res_id))
            self._check_preconditions(change, cur)
            if change.resource is None:  # delete
                if cur is None or cur.deleted:
                    results.append(WriteResult(change, "not-found", None))
                    continue
                version = cur.version + 1
                stored = Stored(cur.pk, change.res_type, change.res_id, version, now, True, None)
                updates.append((version, True, b"", now, cur.pk))
                result = WriteResult(change, "deleted", stored)
                reindex.append((cur.pk, result, None))
            else:
                digest = change.digest or content_hash(change.resource)
                if cur is not None and not cur.deleted and cur.content_hash == digest and change.method != "POST":
                    result = WriteResult(change, "unchanged", None)  # its stored bytes: read below, all in one
                    unchanged.append((cur, result))
                    results.append(result)
                    continue
                version = 1 if cur is None else cur.version + 1
                body = _with_meta(change.resource, change.res_id, version, now)
                data = orjson.dumps(body)
                if cur is None:
                    stored = Stored(0, change.res_type, change.res_id, version, now, False, data)
                    result = WriteResult(change, "created", stored)
                    new_rows.append((change.res_type, change.res_id, version, False, digest, now))
                    new_results.append(result)
                    reindex.append((None, result, body))
                else:
                    stored = Stored(cur.pk, change.res_type, change.res_id, version, now, False, data)
                    result = WriteResult(change, "updated" if not cur.deleted else "created", stored)
                    updates.append((version, False, digest, now, cur.pk))
                    reindex.append((cur.pk, result, body))
            results.append(result)

        if unchanged:
            self._read_current(conn, unchanged)
        if new_rows:
            if len(new_rows) == 1:
                pks = [sql.insert_one_returning_pk(conn, resource_t, RESOURCE_COLS, new_rows[0])]
            else:
                pks = sql.next_pks(conn, resource_t, len(new_rows))
                sql.insert_many(conn, resource_t, ("pk", *RESOURCE_COLS), [(pk, *row) for pk, row in zip(pks, new_rows, strict=True)])
            for res, pk in zip(new_results, pks, strict=True):
                assert res.stored is not None
                res.stored = _with_pk(res.stored, pk)
        written = [r for r in results if r.outcome in ("created", "updated", "deleted")]
        versions = []
        outbox = []
        for res in written:
            s = res.stored
            assert s is not None
            versions.append((s.pk, s.res_type, s.res_id, s.version, s.last_updated, res.change.method, s.deleted, s.data))
            outbox.append((s.pk, s.res_type, s.res_id, s.version, _interaction(res), res.change.origin, now))
        with sql.pipeline(conn):  # PostgreSQL: what follows needs no answer until the end, one round trip
            sql.update_by_pk(conn, resource_t, UPDATE_COLS, updates)
            sql.insert_many(conn, version_t, VERSION_COLS, versions)
            self._reindex(conn, reindex)
            if before_outbox is not None:
                before_outbox(results)
            if outbox:
                if conn.dialect.name == "postgresql":
                    # Outbox keys must commit in key order, or a reader could pass a key that commits later:
                    # this lock, held to commit, orders the writers' last step (SQLite has one writer anyway).
                    sql.execute(conn, "SELECT pg_advisory_xact_lock(7245001)")
                sql.insert_many(conn, outbox_t, OUTBOX_COLS, outbox)
        return results

    # ---------------------------------------------------------------- helpers
    def _lock_current(self, conn: Connection, changes: Sequence[Change]) -> dict[tuple[str, str], _Current]:
        """The current rows of the changed resources, locked on PostgreSQL (one query per type and 500 ids).

        Creates with a server-assigned id (a fresh UUID) cannot exist yet and are not looked up.
        """
        by_type: dict[str, list[str]] = {}
        for change in changes:
            if not change.create_only:
                by_type.setdefault(change.res_type, []).append(change.res_id)
        out: dict[tuple[str, str], _Current] = {}
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
        # every type in one statement (a round trip each cost more than the look-up), at most 500 ids a statement
        groups: list[tuple[str, list[str]]] = []
        size = 0

        def flush() -> None:
            if groups:
                params = [x for res_type, ids in groups for x in (res_type, *ids)]
                for pk, res_type, res_id, version, deleted, digest, updated in sql.fetch_all(
                    conn, _current_sql(tuple(len(ids) for _, ids in groups), lock), tuple(params)
                ):
                    out[(res_type, res_id)] = _Current(pk, version, bool(deleted), digest, updated)
            groups.clear()

        for res_type, ids in by_type.items():
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                if size + len(chunk) > 500:
                    flush()
                    size = 0
                groups.append((res_type, chunk))
                size += len(chunk)
        flush()
        return out

    @staticmethod
    def _check_preconditions(change: Change, cur: _Current | None) -> None:
        if change.create_only and cur is not None:
            raise FhirError(
                Category.CONFLICT, "FHIRHUB-WRITE-EXISTS", f"{change.res_type}/{change.res_id} already exists"
            )
        if change.if_match is not None:
            current_version = None if cur is None or cur.deleted else cur.version
            if current_version != change.if_match:
                raise FhirError(
                    Category.PRECONDITION,
                    "FHIRHUB-WRITE-VERSION-CONFLICT",
                    f"If-Match version {change.if_match} does not match the current version"
                    f" {current_version if current_version is not None else '(none)'} of {change.res_type}/{change.res_id}",
                )

    def _reindex(self, conn: Connection, items: list[tuple[int | None, WriteResult, dict[str, Any] | None]]) -> None:
        tables = self.indexer.tables
        if not tables:
            return
        old_pks = [pk for pk, _, _ in items if pk is not None]
        if old_pks:
            for table in tables:
                sql.delete_where_in(conn, table, "resource_pk", old_pks)
        batches: dict[Table, list[tuple[Any, ...]]] = {}
        for _, res, body in items:
            if body is None or res.stored is None:
                continue
            pk = res.stored.pk
            extracted = res.change.index_rows if res.change.index_rows is not None else self.indexer.extract(body)
            for table, rows in extracted.items():
                columns = _index_columns(table)
                getter = _row_getter(table)
                bucket = batches.setdefault(table, [])
                for row in rows:
                    row["resource_pk"] = pk
                    try:
                        bucket.append(getter(row))  # the indexer's rows carry every column: one C call
                    except KeyError:
                        bucket.append(tuple(row.get(c, 0 if c == "grp" else None) for c in columns))
        for table, tuples in batches.items():
            sql.insert_many(conn, table, _index_columns(table), tuples)


@functools.lru_cache(maxsize=2048)
def _current_sql(counts: tuple[int, ...], lock: str) -> str:
    """The current rows of ``counts[k]`` ids of the k-th type (parameters: type, its ids, next type ...)."""
    where = " OR ".join(f"(res_type = {{p}} AND res_id IN ({', '.join('{p}' for _ in range(n))}))" for n in counts)
    return f"SELECT pk, res_type, res_id, version, deleted, content_hash, last_updated FROM resource WHERE {where}{lock}"


@functools.cache
def _index_columns(table: Table) -> tuple[str, ...]:
    return sql.insert_columns(table)


@functools.cache
def _row_getter(table: Table) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    columns = _index_columns(table)
    get = operator.itemgetter(*columns)
    if len(columns) == 1:
        return lambda row: (get(row),)
    return get


def _bytes(data: Any) -> bytes | None:
    return None if data is None else bytes(data)


def _interaction(res: WriteResult) -> Interaction:
    if res.outcome == "deleted":
        return "delete"
    if res.outcome == "created":
        return "create"
    return "update"


def _with_pk(stored: Stored, pk: int) -> Stored:
    return Stored(pk, stored.res_type, stored.res_id, stored.version, stored.last_updated, stored.deleted, stored.data)


def _with_meta(resource: Mapping[str, Any], res_id: str, version: int, now: int) -> dict[str, Any]:
    """The resource as stored: resourceType, id and meta first, server-managed meta set."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(now)
    body: dict[str, Any] = {"resourceType": resource["resourceType"], "id": res_id, "meta": meta}
    for key, value in resource.items():
        if key not in body:
            body[key] = value
    return body
