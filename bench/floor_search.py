"""The search floor: the search suite's queries as hand-written SQL behind a bare Starlette app.

    python -m bench.floor_search --database-url URL --port N

It serves the same database as the hub (search only reads), through the same drivers (sqlite3,
psycopg 3), with the same SQLite pragmas as ``hub/store/db.py`` and the same thread-pool model as
``bench/floor.py``. It knows exactly the queries of ``bench/suites/search.py`` (picked by their
parameter names) and answers each with one hand-written statement over the hub's own index tables
(plus a count or an include statement where the hub's answer has one), returning the stored JSON
bytes spliced into a searchset Bundle: ``total`` (when the hub gives one: a first page that is not
full, or a count) and the entries with their ``search.mode``. No parsing beyond splitting the
values, no validation, no links, no SQLAlchemy.

The values are prepared as the hub's index stores them (hashes, normalised strings, date ranges),
with the hub's own pure functions from ``hub.search.values``; everything else is SQL written here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.floor import FHIR_JSON, Pool, app_from_env, serve
from hub.search.values import h64, hash_sys_code, normalize, parse_date_range, prefix_upper

PAGE = 50  # the hub's default _count

# what the page joins to get each row's stored bytes
DATA = "JOIN resource_version v ON v.resource_pk = r.pk AND v.version = r.version"


def ident(res_type: str, code: str) -> int:
    """The ``hash_identity`` of (resource type, parameter), as the hub's index writes it."""
    return h64(res_type, code)


def token(res_type: str, code: str, value: str) -> int:
    system, _, c = value.rpartition("|")
    return hash_sys_code(ident(res_type, code), system, c)


def prefix(value: str) -> tuple[str, str]:
    lo = normalize(value)
    hi = prefix_upper(lo)
    assert hi is not None
    return lo, hi


def day(text: str) -> tuple[int, int]:
    rng = parse_date_range(text)
    if rng is None:
        raise ValueError(text)
    return rng


class Answer:
    """A searchset: (mode, type, id, bytes) entries and a total."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, bytes]] = []
        self.total: int | None = None

    def bundle(self, base: str) -> bytes:
        parts = [b'{"resourceType":"Bundle","type":"searchset"']
        if self.total is not None:
            parts.append(b',"total":%d' % self.total)
        if self.entries:
            items = [
                b'{"fullUrl":"%s/%s/%s","resource":%s,"search":{"mode":"%s"}}'
                % (base.encode(), t.encode(), i.encode(), data, mode.encode())
                for mode, t, i, data in self.entries
            ]
            parts.append(b',"entry":[' + b",".join(items) + b"]")
        parts.append(b"}")
        return b"".join(parts)


class SearchStore(Pool):
    """The connection pool and the hand-written statements, for one dialect."""

    def __init__(self, url: str, pool_size: int = 20) -> None:
        super().__init__(url, pool_size)
        self.p = "?" if self.is_sqlite else "%s"
        self.false = "0" if self.is_sqlite else "false"

    # ------------------------------------------------------------------ helpers
    def _page(self, conn: Any, answer: Answer, sql: str, args: Sequence[Any], count_sql: str | None,
              count_args: Sequence[Any] = ()) -> list[int]:
        """Fetch up to PAGE + 1 rows (pk, type, id, data, ...); count when the page is full."""
        rows = conn.execute(sql, list(args)).fetchall()
        for row in rows[:PAGE]:
            answer.entries.append(("match", row[1], row[2], bytes(row[3])))
        if len(rows) <= PAGE:
            answer.total = len(rows)
        elif count_sql is not None:
            answer.total = int(conn.execute(count_sql, list(count_args or args)).fetchone()[0])
        return [int(row[0]) for row in rows[:PAGE]]

    def _by_pk_in(self, where_pk_in: str) -> str:
        """A page of resources whose pk is in a sub-select, in pk order."""
        return (f"SELECT r.pk, r.res_type, r.res_id, v.data FROM resource r {DATA} "
                f"WHERE r.pk IN ({where_pk_in}) ORDER BY r.pk LIMIT {PAGE + 1}")

    # ------------------------------------------------------------------ the queries
    def token(self, res_type: str, code: str, value: str) -> Answer:
        """``Type?code=system|code``: one probe of the (hash_sys_code, resource_pk) index."""
        p = self.p
        h = token(res_type, code, value)
        sub = f"SELECT t.resource_pk FROM idx_token t WHERE t.hash_sys_code = {p}"
        answer = Answer()
        with self.connection() as conn:
            self._page(conn, answer, self._by_pk_in(sub), [h],
                       f"SELECT count(DISTINCT t.resource_pk) FROM idx_token t WHERE t.hash_sys_code = {p}")
        return answer

    def name(self, res_type: str, value: str) -> Answer:
        """``Patient?name=x``: a range scan of (hash_identity, value_norm)."""
        p = self.p
        lo, hi = prefix(value)
        sub = (f"SELECT s.resource_pk FROM idx_string s WHERE s.hash_identity = {p} "
               f"AND s.value_norm >= {p} AND s.value_norm < {p}")
        args = [ident(res_type, "name"), lo, hi]
        answer = Answer()
        with self.connection() as conn:
            self._page(conn, answer, self._by_pk_in(sub), args, f"SELECT count(DISTINCT q.resource_pk) FROM ({sub}) q")
        return answer

    def patient_date(self, res_type: str, patient: str, date: str) -> Answer:
        """``Observation?patient=Patient/x&date=geD&_sort=-date``: the patient's rows, their dates, sorted."""
        p = self.p
        target_type, _, target_id = patient.partition("/")
        lo, hi = day(date.removeprefix("ge"))
        hd, hp = ident(res_type, "date"), ident(res_type, "patient")
        matches = (
            f"SELECT x.resource_pk AS pk, max(x.high) AS k FROM idx_reference ref "
            f"JOIN idx_date x ON x.resource_pk = ref.resource_pk AND x.hash_identity = {p} "
            f"WHERE ref.hash_identity = {p} AND ref.target_id = {p} AND ref.target_type = {p} "
            f"GROUP BY x.resource_pk "
            f"HAVING max(CASE WHEN x.high > {p} OR (x.low >= {p} AND x.high <= {p}) THEN 1 ELSE 0 END) = 1"
        )
        args = [hd, hp, target_id, target_type, hi, lo, hi]
        sql = (f"SELECT r.pk, r.res_type, r.res_id, v.data FROM ({matches} ORDER BY k DESC, pk LIMIT {PAGE + 1}) page "
               f"JOIN resource r ON r.pk = page.pk {DATA} ORDER BY page.k DESC, page.pk")
        answer = Answer()
        with self.connection() as conn:
            self._page(conn, answer, sql, args, f"SELECT count(*) FROM ({matches}) q")
        return answer

    def chain_name(self, res_type: str, ref_code: str, target: str, value: str) -> Answer:
        """``Observation?subject:Patient.name=x``: names → patients → referring rows."""
        p = self.p
        lo, hi = prefix(value)
        sub = (f"SELECT ref.resource_pk FROM idx_string s JOIN resource t ON t.pk = s.resource_pk "
               f"JOIN idx_reference ref ON ref.hash_identity = {p} AND ref.target_type = {p} AND ref.target_id = t.res_id "
               f"WHERE s.hash_identity = {p} AND s.value_norm >= {p} AND s.value_norm < {p}")
        args = [ident(res_type, ref_code), target, ident(target, "name"), lo, hi]
        answer = Answer()
        with self.connection() as conn:
            self._page(conn, answer, self._by_pk_in(sub), args, f"SELECT count(DISTINCT q.resource_pk) FROM ({sub}) q")
        return answer

    def chain_identifier(self, res_type: str, ref_code: str, target: str, value: str) -> Answer:
        """``Encounter?subject.identifier=system|value``: identifier → patient → referring rows."""
        p = self.p
        sub = (f"SELECT ref.resource_pk FROM idx_token i JOIN resource t ON t.pk = i.resource_pk "
               f"JOIN idx_reference ref ON ref.hash_identity = {p} AND ref.target_type = {p} AND ref.target_id = t.res_id "
               f"WHERE i.hash_sys_code = {p}")
        args = [ident(res_type, ref_code), target, token(target, "identifier", value)]
        answer = Answer()
        with self.connection() as conn:
            self._page(conn, answer, self._by_pk_in(sub), args, f"SELECT count(DISTINCT q.resource_pk) FROM ({sub}) q")
        return answer

    def dates_include(self, res_type: str, dates: list[str], include: str) -> Answer:
        """``Appointment?date=geA&date=ltB&_include=Appointment:patient``: a date range, then the patients."""
        p = self.p
        (ge,) = [d for d in dates if d.startswith("ge")]
        (lt,) = [d for d in dates if d.startswith("lt")]
        ge_lo, ge_hi = day(ge[2:])
        lt_lo, _ = day(lt[2:])
        sub = (f"SELECT d.resource_pk FROM idx_date d WHERE d.hash_identity = {p} "
               f"AND (d.high > {p} OR (d.low >= {p} AND d.high <= {p})) AND d.low < {p}")
        args = [ident(res_type, "date"), ge_hi, ge_lo, ge_hi, lt_lo]
        src, _, code = include.partition(":")
        # PostgreSQL misjudges the window (bounds taken as independent) and would walk a pk index in
        # order; ARRAY(…) runs the window's index range first
        page = self._by_pk_in(sub) if self.is_sqlite else (
            f"SELECT r.pk, r.res_type, r.res_id, v.data FROM resource r {DATA} "
            f"WHERE r.pk = ANY(ARRAY({sub})) ORDER BY r.pk LIMIT {PAGE + 1}")
        answer = Answer()
        with self.connection() as conn:
            pks = self._page(conn, answer, page, args, f"SELECT count(DISTINCT q.resource_pk) FROM ({sub}) q")
            if pks:
                marks = ", ".join([p] * len(pks))
                inc = (f"SELECT r.pk, r.res_type, r.res_id, v.data FROM resource r {DATA} "
                       f"WHERE r.res_type = {p} AND r.deleted = {self.false} AND r.res_id IN ("
                       f"SELECT ref.target_id FROM idx_reference ref WHERE ref.hash_identity = {p} "
                       f"AND ref.target_type = {p} AND ref.resource_pk IN ({marks}))")
                rows = conn.execute(inc, ["Patient", ident(src, code), "Patient", *pks]).fetchall()
                answer.entries += [("include", row[1], row[2], bytes(row[3])) for row in rows]
        return answer

    def count_types(self, types: list[str]) -> Answer:
        """``?_type=A,B&_summary=count``: the current resources of those types."""
        p = self.p
        marks = ", ".join([p] * len(types))
        answer = Answer()
        with self.connection() as conn:
            row = conn.execute(f"SELECT count(*) FROM resource WHERE res_type IN ({marks}) AND deleted = {self.false}",
                               types).fetchone()
        answer.total = int(row[0])
        return answer

    def count_token(self, res_type: str, code: str, value: str) -> Answer:
        """``Type?code=system|code&_summary=count``."""
        answer = Answer()
        with self.connection() as conn:
            row = conn.execute(f"SELECT count(DISTINCT t.resource_pk) FROM idx_token t WHERE t.hash_sys_code = {self.p}",
                               [token(res_type, code, value)]).fetchone()
        answer.total = int(row[0])
        return answer

    def count_type(self, res_type: str) -> Answer:
        """``Type?_summary=count``."""
        answer = Answer()
        with self.connection() as conn:
            row = conn.execute(f"SELECT count(*) FROM resource WHERE res_type = {self.p} AND deleted = {self.false}",
                               [res_type]).fetchone()
        answer.total = int(row[0])
        return answer

    # ------------------------------------------------------------------ dispatch
    def run(self, res_type: str | None, params: list[tuple[str, str]]) -> Answer:
        """Pick the statement for the suite's query by its parameter names."""
        names = sorted({k for k, _ in params})
        one = dict(params)
        if res_type is None:
            if names == ["_summary", "_type"]:
                return self.count_types(one["_type"].split(","))
        elif names == ["_summary"]:
            return self.count_type(res_type)
        elif names in (["code"], ["identifier"]):
            return self.token(res_type, names[0], one[names[0]])
        elif names in (["_summary", "code"], ["_summary", "identifier"], ["_summary", "status"]):
            code = names[1]
            return self.count_token(res_type, code, one[code])
        elif names == ["name"]:
            return self.name(res_type, one["name"])
        elif names == ["_sort", "date", "patient"] and one["_sort"] == "-date":
            return self.patient_date(res_type, one["patient"], one["date"])
        elif len(names) == 1 and names[0].endswith(".name") and ":" in names[0]:
            ref, _, rest = names[0].partition(":")
            target = rest.split(".", 1)[0]
            return self.chain_name(res_type, ref, target, one[names[0]])
        elif names == ["subject.identifier"]:
            return self.chain_identifier(res_type, "subject", "Patient", one["subject.identifier"])
        elif names == ["_include", "date"]:
            return self.dates_include(res_type, [v for k, v in params if k == "date"], one["_include"])
        raise LookupError(f"no floor statement for {res_type}?{'&'.join(names)}")


def create_app(store: SearchStore) -> Starlette:
    async def search(request: Request) -> Response:
        res_type = request.path_params.get("res_type")
        params = list(request.query_params.multi_items())
        try:
            answer = await run_in_threadpool(store.run, res_type, params)
        except LookupError as exc:
            return Response(str(exc).encode(), 400, media_type="text/plain")
        base = f"{request.url.scheme}://{request.url.netloc}/fhir"
        return Response(answer.bundle(base), 200, media_type=FHIR_JSON)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        store.close()

    async def health(_: Request) -> Response:
        return Response(b"ok", 200, media_type="text/plain")

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/fhir", search, methods=["GET"]),
            Route("/fhir/{res_type}", search, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _app(url: str, pool_size: int) -> Starlette:
    return create_app(SearchStore(url, pool_size))


def main(argv: list[str] | None = None, run: Callable[..., None] | None = None) -> None:
    serve("The search floor: hand-written SQL behind a bare Starlette app", _app, "bench.floor_search:factory", argv, run)


def factory() -> Starlette:
    return app_from_env(_app)


if __name__ == "__main__":
    main()
