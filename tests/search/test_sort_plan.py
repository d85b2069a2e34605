"""SQLite: a ``_sort`` key is read through the index on (resource_pk, hash_identity), one probe per match.

``min(low)`` over a parameter's rows can also be answered from the (hash_identity, low) index by SQLite's
min/max optimization: walk the parameter's rows in ``low`` order and stop at the first one of this resource.
Chosen for the correlated sort sub-select, that walk ran once per match, over every row of the parameter:
``Observation?value-quantity=le50&_sort=value-quantity`` on the 1,000-patient benchmark data took minutes
(0.5 s with the right index). The compiler names the index on SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.search.compile import Compiler, Dialect
from hub.search.params import Registry
from hub.search.query import SortKey
from hub.search.tables import TABLE_BY_TYPE
from tests.search.conftest import open_db

SORTS = [("Observation", "value-quantity"), ("Observation", "date"), ("Patient", "birthdate"), ("Patient", "name"),
         ("RiskAssessment", "probability")]


@pytest.mark.parametrize(("res_type", "code"), SORTS)
@pytest.mark.parametrize("desc", [False, True])
def test_sort_key_probes_the_resource_index(tmp_path: Path, registry: Registry, res_type: str, code: str,
                                            desc: bool) -> None:
    bp = registry.get(res_type, code)
    assert bp is not None
    db = open_db(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        expr = Compiler(Dialect(pg=False)).sort_expr(SortKey(code, desc, (bp,)), "r")
        with db.read() as conn:
            cur: Any = conn.connection.cursor()
            plan = [row[3] for row in cur.execute(f"EXPLAIN QUERY PLAN SELECT {expr.text} FROM resource r", expr.params)]
        table = TABLE_BY_TYPE[bp.type].name
        assert any(f"INDEX ix_{table}_resource (resource_pk=? AND hash_identity=?)" in step for step in plan), plan
    finally:
        db.dispose()
