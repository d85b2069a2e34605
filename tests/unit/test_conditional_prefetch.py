"""A wave of conditional look-ups at once (``conditional.prefetch``), on SQLite and PostgreSQL.

On PostgreSQL the one-token look-ups (``identifier=system|value``) of a wave go as one statement over
arrays, the others as a ``UNION ALL``; either way each criteria must get exactly what ``find`` would give
it alone: every match, in ``pk`` order, none deleted, none of another type. The expected answers are
written by hand from the resources created here.
"""

from __future__ import annotations

from typing import Any

from hub.app import Hub
from hub.interactions import conditional
from hub.interactions.request import FhirRequest

BASE = "http://hub.test/fhir"
SYS = "urn:test:mrn"


def put(hub: Hub, res_type: str, res_id: str, **fields: Any) -> None:
    body = {"resourceType": res_type, "id": res_id, **fields}
    assert hub.router.dispatch(FhirRequest("PUT", f"{res_type}/{res_id}", [], {}, body, BASE)).status in (200, 201)


def ident(value: str) -> list[dict[str, str]]:
    return [{"system": SYS, "value": value}]


def test_one_token_shape_is_the_text_the_batched_lookup_expects(hub: Hub) -> None:
    """If _fast_sql's text for one token changed, PostgreSQL waves would quietly fall back to UNION ALL."""
    built = conditional._fast_sql(hub.ctx, "Patient", f"identifier={SYS}|a", True)
    assert built is not None
    assert built[0] == conditional._ONE_TOKEN_PG
    assert built[1][1:] == [False, "Patient"]


def test_a_wave_of_lookups_answers_as_each_alone(hub: Hub) -> None:
    put(hub, "Patient", "p-one", identifier=ident("one"))
    put(hub, "Patient", "p-twin-b", identifier=ident("twin"))
    put(hub, "Patient", "p-twin-a", identifier=ident("twin"))  # created second: after p-twin-b in pk order
    put(hub, "Patient", "p-gone", identifier=ident("gone"))
    assert hub.router.dispatch(FhirRequest("DELETE", "Patient/p-gone", [], {}, None, BASE)).status in (200, 204)
    put(hub, "Practitioner", "dr-one", identifier=ident("one"))  # same identifier, another type
    put(hub, "Patient", "p-named", identifier=ident("named"), name=[{"family": "Quartz"}])
    criteria = [
        ("Patient", f"identifier={SYS}|one"),
        ("Patient", f"identifier={SYS}|twin"),
        ("Patient", f"identifier={SYS}|gone"),
        ("Patient", f"identifier={SYS}|nobody"),
        ("Practitioner", f"identifier={SYS}|one"),
        ("Patient", f"identifier={SYS}|named&family=Quartz"),  # two clauses: not the one-token shape
        ("Patient", f"identifier={SYS}|one,{SYS}|named"),  # two values: not the one-token shape either
    ]
    expected = [["p-one"], ["p-twin-b", "p-twin-a"], [], [], ["dr-one"], ["p-named"], ["p-one", "p-named"]]
    with hub.ctx.db.write() as conn:
        alone = [conditional.find(hub.ctx, conn, t, c) for t, c in criteria]
    assert alone == expected
    with hub.ctx.db.write() as conn:
        conditional.prefetch(hub.ctx, conn, [f"{t}?{c}" for t, c in criteria])
        memo = conn.info[conditional._MEMO]
        assert [memo[(t, c)] for t, c in criteria] == expected
        assert [conditional.find(hub.ctx, conn, t, c) for t, c in criteria] == expected
        conditional.forget(conn)
