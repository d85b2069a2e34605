"""PostgreSQL: a conditional look-up by identifier reads the index first and the resources by key.

A table that grew since its statistics were taken (the first HL7 feed into a new database, before
autovacuum has analyzed it) made the planner walk every resource of the type and probe the index for
each: a look-up then cost O(resources), and ingest slowed down as it went. The look-up's SQL
(``conditional._fast_sql``) reads the identifier's index rows once and the resources by key (or, while the
table is small, in one scan); this test plans it on a never-analyzed table.
"""

from __future__ import annotations

from typing import Any

import orjson

from hub.app import Content, build_hub
from hub.interactions import conditional
from hub.interactions.request import FhirRequest
from hub.settings import Settings
from hub.store.schema import upgrade
from tests.conftest import fresh_postgres_schema

SYSTEM = "urn:oid:1.2.3.4"


def test_identifier_lookup_is_keyed_on_a_table_without_statistics(content: Content) -> None:
    with fresh_postgres_schema() as url:
        hub = build_hub(Settings(database_url=url), content=content)
        upgrade(hub.ctx.db)
        with hub.ctx.db.write() as conn:  # autovacuum must not analyze the table while the test fills it
            conn.exec_driver_sql("ALTER TABLE resource SET (autovacuum_enabled = false)")
        try:
            for chunk in range(3):
                entries: list[dict[str, Any]] = [
                    {"resource": {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": f"{chunk}-{n}"}]},
                     "request": {"method": "POST", "url": "Patient"}} for n in range(500)]
                resp = hub.router.dispatch(FhirRequest("POST", "", body={"resourceType": "Bundle", "type": "transaction",
                                                                         "entry": entries}, base_url="http://hub.test/fhir"))
                assert resp.status == 200, resp.body
            built = conditional._fast_sql(hub.ctx, "Patient", f"identifier={SYSTEM}|1-7", pg=True)
            assert built is not None
            sql, params = built
            with hub.ctx.db.read() as conn:
                cur: Any = conn.connection.cursor()
                # this schema's table (other tests' schemas hold analyzed tables of the same name)
                assert cur.execute("SELECT count(*) FROM pg_stats WHERE schemaname = current_schema()"
                                   " AND tablename = 'resource'").fetchone()[0] == 0
                plan = "\n".join(r[0] for r in cur.execute("EXPLAIN " + sql, params).fetchall())
                ids = [r[1] for r in cur.execute(sql, params).fetchall()]
            # the identifier's index rows are read once (an InitPlan), not probed once per resource of the type
            assert "InitPlan" in plan and "Nested Loop" not in plan, plan
            assert "ix_resource_type_updated" not in plan, plan
            [match] = ids
            with hub.ctx.db.read() as conn:
                stored = hub.ctx.repo.read(conn, "Patient", match)
            assert stored is not None and orjson.loads(stored.data or b"{}")["identifier"][0]["value"] == "1-7"
        finally:
            hub.close()
