"""``fhirhub export``: current (not deleted) resources as NDJSON, one file per type, from stored bytes."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from sqlalchemy import and_, select

from hub.store.db import Database
from hub.store.tables import resource_t, version_t


def export_ndjson(db: Database, out: Path, types: list[str] | None = None) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    r, v = resource_t.c, version_t.c
    stmt = (
        select(r.res_type, v.data)
        .select_from(resource_t.join(version_t, and_(v.resource_pk == r.pk, v.version == r.version)))
        .where(r.deleted.is_(False))
        .order_by(r.res_type, r.pk)
    )
    if types:
        stmt = stmt.where(r.res_type.in_(types))
    counts: dict[str, int] = {}
    handle: IO[bytes] | None = None
    current: str | None = None
    with db.read() as conn:
        try:
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(stmt):
                if row.res_type != current:
                    if handle:
                        handle.close()
                    current = str(row.res_type)
                    handle = (out / f"{current}.ndjson").open("wb")
                    counts[current] = 0
                assert handle is not None and current is not None
                handle.write(row.data + b"\n")
                counts[current] += 1
        finally:
            if handle:
                handle.close()
    return counts
