"""Cached driver-level SQL for the hot write path.

SQLAlchemy Core builds and compiles a statement per call; on the write path (one
resource, a version, an outbox row, an audit row and a dozen index rows per create)
that overhead was larger than the database work. These statements are built once
per (dialect, table) from the table metadata and run on the DBAPI cursor of the
connection's own transaction with plain tuples — still bound parameters, never values
in the SQL text. (SQLAlchemy's ``exec_driver_sql`` alone cost ~40 µs a statement.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import Connection, Table

CHUNK = 500


def _placeholder(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _cursor(conn: Connection) -> Any:
    """A DBAPI cursor on the connection SQLAlchemy holds, inside its current transaction."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _execute(conn: Connection, sql: str, params: Any, many: bool = False) -> Any:
    if not conn.in_transaction() and not conn.info.get("no_begin"):
        conn.begin()  # SQLAlchemy starts the transaction (our BEGIN / BEGIN IMMEDIATE) as it would itself
    cur = _cursor(conn)
    if many:
        cur.executemany(sql, params)
    else:
        cur.execute(sql, params)
    return cur


@cache
def _insert_sql(table: Table, columns: tuple[str, ...], ph: str, returning: str | None) -> str:
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(ph for _ in columns)})"
    return f"{sql} RETURNING {returning}" if returning else sql


@cache
def _unnest_sql(table: Table, columns: tuple[str, ...], dialect: Any) -> str:
    # the column's type without its collation (the column applies that): VARCHAR(512) COLLATE "C" -> VARCHAR(512)
    types = [table.columns[c].type.compile(dialect=dialect).split(" COLLATE ")[0] for c in columns]
    arrays = ", ".join(f"%b::{t}[]" for t in types)  # %b: psycopg dumps arrays in binary ~6x faster than as text
    return f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"


@cache
def _update_unnest_sql(table: Table, columns: tuple[str, ...], dialect: Any) -> str:
    types = [table.columns[c].type.compile(dialect=dialect).split(" COLLATE ")[0] for c in (*columns, "pk")]
    arrays = ", ".join(f"%b::{t}[]" for t in types)
    sets = ", ".join(f"{c} = u.{c}" for c in columns)
    return (f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS u({', '.join(columns)}, pk)"
            f" WHERE {table.name}.pk = u.pk")


def insert_columns(table: Table) -> tuple[str, ...]:
    """Every column but the surrogate key, in table order."""
    return tuple(c.name for c in table.columns if c.name != "pk")


COPY_THRESHOLD = 20


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """PostgreSQL: send the statements of the block without waiting for each answer (psycopg pipeline mode):
    one round trip for a write's versions, index rows, outbox and deletes instead of one per statement. Errors
    surface at the end of the block, which fails the transaction as before. Elsewhere: nothing."""
    if conn.dialect.name != "postgresql":
        yield
        return
    if not conn.in_transaction():
        conn.begin()
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.pipeline():
        yield


def _in_pipeline(driver: Any) -> bool:
    return bool(getattr(driver.pgconn, "pipeline_status", 0))


def cursor(conn: Connection, template: str, params: tuple[Any, ...] = ()) -> Any:
    """Run a driver-SQL statement (placeholders ``{p}``) and return its DBAPI cursor. Inside :func:`pipeline`
    its ``rowcount`` is known once a later result has been read or the block has ended."""
    return _execute(conn, _format(template, _placeholder(conn)), params)


def execute(conn: Connection, template: str, params: tuple[Any, ...] = ()) -> None:
    """Run a driver-SQL statement (placeholders ``{p}``) and drop its result (it may be pipelined)."""
    _execute(conn, _format(template, _placeholder(conn)), params).close()


def insert_many(conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows``; on PostgreSQL larger batches go through COPY (one round trip, no per-row statements),
    except inside :func:`pipeline`, where the prepared insert is pipelined with the rest."""
    if not rows:
        return
    if (conn.dialect.name == "postgresql" and len(rows) >= COPY_THRESHOLD
            and not _in_pipeline(conn.connection.driver_connection)):
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    if conn.dialect.name == "postgresql" and len(rows) > 1:
        # Pipelined: one INSERT … SELECT FROM unnest(array per column). psycopg's executemany costs ~10 µs of
        # Python per row here (a pipeline message each); the columns as arrays are one statement whose text
        # never changes (prepared once) and whose parameters are dumped in C.
        _execute(conn, _unnest_sql(table, columns, conn.dialect), [list(col) for col in zip(*rows, strict=True)]).close()
        return
    statement = _insert_sql(table, columns, _placeholder(conn), None)
    if len(rows) == 1:  # one row: execute, not executemany (psycopg's executemany sets up a pipeline of its own)
        _execute(conn, statement, rows[0]).close()
        return
    _execute(conn, statement, list(rows), many=True).close()


def insert_one_returning_pk(conn: Connection, table: Table, columns: tuple[str, ...], row: tuple[Any, ...]) -> int:
    cur = _execute(conn, _insert_sql(table, columns, _placeholder(conn), "pk"), row)
    pk = int(cur.fetchone()[0])
    cur.close()
    return pk


def next_pks(conn: Connection, table: Table, n: int) -> list[int]:
    """Reserve ``n`` surrogate keys for ``table`` inside the current write transaction.

    PostgreSQL draws them from the table's sequence. SQLite has one writer at a time
    (``BEGIN IMMEDIATE``), so ``max(pk)`` read inside the transaction cannot move.
    """
    if conn.dialect.name == "postgresql":
        # on the DBAPI cursor: inside pipeline(), reading its rows is what sends what was queued before it
        found = fetch_all(conn, f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'pk')) FROM generate_series(1, {{p}})", (n,))
        return [int(r[0]) for r in found]
    start = int(conn.exec_driver_sql(f"SELECT coalesce(max(pk), 0) FROM {table.name}").scalar_one())
    return list(range(start + 1, start + n + 1))


def delete_where_in(conn: Connection, table: Table, column: str, values: Iterable[int]) -> None:
    ph = _placeholder(conn)
    items = list(values)
    for i in range(0, len(items), CHUNK):
        chunk = items[i : i + CHUNK]
        _execute(conn, f"DELETE FROM {table.name} WHERE {column} IN ({', '.join(ph for _ in chunk)})", tuple(chunk)).close()


def update_by_pk(conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """``rows`` are the new values of ``columns`` followed by the pk. On PostgreSQL several rows are one
    ``UPDATE … FROM unnest(array per column)``: one statement, one text, parameters dumped in C."""
    if conn.dialect.name == "postgresql" and len(rows) > 1:
        _execute(conn, _update_unnest_sql(table, columns, conn.dialect), [list(col) for col in zip(*rows, strict=True)]).close()
        return
    if rows:
        ph = _placeholder(conn)
        sets = ", ".join(f"{c} = {ph}" for c in columns)
        _execute(conn, f"UPDATE {table.name} SET {sets} WHERE pk = {ph}", list(rows), many=True).close()


@lru_cache(maxsize=4096)
def _format(template: str, ph: str) -> str:
    return template.replace("{p}", ph)


def fetch_one(conn: Connection, template: str, params: tuple[Any, ...]) -> Any:
    """The first row of a driver-SQL query whose placeholders are written ``{p}``."""
    cur = _execute(conn, _format(template, _placeholder(conn)), params)
    row = cur.fetchone()
    cur.close()
    return row


def fetch_all(conn: Connection, template: str, params: tuple[Any, ...]) -> list[Any]:
    """Every row of a driver-SQL query whose placeholders are written ``{p}``."""
    cur = _execute(conn, _format(template, _placeholder(conn)), params)
    rows = cur.fetchall()
    cur.close()
    return list(rows)


def rows(conn: Connection, statement: str, params: Sequence[Any]) -> list[Any]:
    """Every row of a driver-SQL query written with the connection's own placeholders (``?`` or ``%s``)."""
    cur = _execute(conn, statement, tuple(params))
    found = cur.fetchall()
    cur.close()
    return list(found)
