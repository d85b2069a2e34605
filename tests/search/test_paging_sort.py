"""_count with keyset paging (incl. writes between pages), _sort, _total, _summary, _elements."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import orjson
import pytest

from hub.errors import FhirError
from hub.store.repository import Change
from tests.search import oracle as o
from tests.search.conftest import SearchDB


def _patient(i: int, family: str, birth: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f"p{i:03d}",
        "name": [{"family": family}],
        "gender": "male",
    }
    if birth:
        r["birthDate"] = birth
    return r


def _write(db: SearchDB, resources: list[dict[str, Any]]) -> None:
    with db.db.write() as conn:
        db.repo.write_many(conn, [Change(r["resourceType"], r["id"], r, "PUT") for r in resources])


def _query(link: str) -> str:
    return urllib.parse.urlsplit(link).query


def test_pages_cover_everything_once(corpus_db: SearchDB, corpus: list[dict[str, Any]]) -> None:
    want = [r["id"] for r in corpus if r["resourceType"] == "Patient"]
    got = corpus_db.all_pages("Patient", "_count=3")
    assert sorted(got) == sorted(want) and len(got) == len(set(got))


def test_links(corpus_db: SearchDB) -> None:
    r1 = corpus_db.search("Patient", "gender=male,female&_count=2")
    assert r1.links["self"] == "http://hub.test/fhir/Patient?gender=male%2Cfemale&_count=2"
    assert "previous" not in r1.links
    r2 = corpus_db.search("Patient", _query(r1.links["next"]))
    assert r2.links["self"] == r1.links["next"]
    back = corpus_db.search("Patient", _query(r2.links["previous"]))
    assert [e.res_id for e in back.entries] == [e.res_id for e in r1.entries]
    assert "previous" not in back.links  # we are back at the first page
    assert r2.total is None and r1.total is not None  # totals on the first page only, by default


def test_backwards_from_the_end(corpus_db: SearchDB) -> None:
    forward = corpus_db.all_pages("Patient", "_count=4&_sort=family")
    r = corpus_db.search("Patient", "_count=4&_sort=family")
    while "next" in r.links:
        r = corpus_db.search("Patient", _query(r.links["next"]))
    backward: list[str] = []
    while True:
        backward[:0] = [e.res_id for e in r.entries]
        if "previous" not in r.links:
            break
        r = corpus_db.search("Patient", _query(r.links["previous"]))
    assert backward == forward


def test_paging_while_others_write(empty_db: SearchDB) -> None:
    _write(empty_db, [_patient(i, f"fam{i:03d}") for i in range(0, 40, 2)])  # 20 patients, even numbers
    first = empty_db.search("Patient", "_count=5&_sort=family")
    seen = [e.res_id for e in first.entries]
    # between pages: create odd-numbered patients everywhere in the order, delete one not yet seen
    _write(empty_db, [_patient(i, f"fam{i:03d}") for i in range(1, 40, 2)])
    with empty_db.db.write() as conn:
        empty_db.repo.write(conn, Change("Patient", "p030", None, "DELETE"))
    r = empty_db.search("Patient", _query(first.links["next"]))
    while True:
        seen.extend(e.res_id for e in r.entries)
        if "next" not in r.links:
            break
        r = empty_db.search("Patient", _query(r.links["next"]))
    assert len(seen) == len(set(seen)), "no resource twice"
    assert seen == sorted(seen), "still in sort order"
    assert "p030" not in seen
    last_first_page = first.entries[-1].res_id  # p008
    expect_after = [f"p{i:03d}" for i in range(40) if f"p{i:03d}" > last_first_page and i != 30]
    assert seen[5:] == expect_after, "every resource after the cursor, the new ones included"


def _family(r: dict[str, Any]) -> str | None:
    names = r.get("name") or []
    return o.norm(names[0]["family"]) if names and "family" in names[0] else None


@pytest.mark.parametrize(
    ("sort", "key"),
    [
        # NULLs last; ties in creation (load) order
        ("birthdate", lambda r, pos: (r.get("birthDate") is None, r.get("birthDate") or "", pos)),
        ("_id", lambda r, pos: (r["id"],)),
        ("family,_id", lambda r, pos: (_family(r) is None, _family(r) or "", r["id"])),
        ("-_id", None),
        ("-birthdate", None),
    ],
)
def test_sort(corpus_db: SearchDB, corpus: list[dict[str, Any]], sort: str, key: Any) -> None:
    patients = [r for r in corpus if r["resourceType"] == "Patient"]
    pos = {r["id"]: i for i, r in enumerate(patients)}
    got = corpus_db.all_pages("Patient", f"_sort={sort}&_count=4")
    assert sorted(got) == sorted(pos)
    if key is not None:
        assert got == [r["id"] for r in sorted(patients, key=lambda r: key(r, pos[r["id"]]))]
    if sort == "-birthdate":
        dated = [g for g in got if _birth(corpus, g)]
        ends = [
            o.date_range(_birth(corpus, g) or "")[1] for g in dated
        ]  # descending: by the end of the range
        assert ends == sorted(ends, reverse=True)
        assert got[len(dated) :] == sorted(
            got[len(dated) :], key=pos.__getitem__
        )  # undated last, by creation
    if sort == "-_id":
        assert got == sorted(got, reverse=True)


def _birth(corpus: list[dict[str, Any]], pid: str) -> str | None:
    return next(r.get("birthDate") for r in corpus if r["resourceType"] == "Patient" and r["id"] == pid)


def test_sort_by_date_with_filter(corpus_db: SearchDB) -> None:
    got = corpus_db.all_pages("Observation", "patient=h-muller,h-mueller&date=ge2021&_sort=-date&_count=2")
    # latest end first: obs3 "2021" ends 2021-12-31, obs2 ends 03-06, obs1 08:30Z, obs4 05:00Z
    assert got == ["h-obs3", "h-obs2", "h-obs1", "h-obs4"]


def test_sort_by_last_updated(empty_db: SearchDB) -> None:
    for i in range(5):
        _write(empty_db, [_patient(i, "x")])
        time.sleep(0.002)  # meta.lastUpdated has millisecond precision: distinct instants, no tie to break
    got = empty_db.all_pages("Patient", "_sort=-_lastUpdated&_count=2")
    assert got == ["p004", "p003", "p002", "p001", "p000"]


def test_total(corpus_db: SearchDB) -> None:
    assert corpus_db.search("Patient", "_count=1").total == 10
    assert corpus_db.search("Patient", "_count=1&_total=none").total is None
    assert corpus_db.search("Patient", "_count=1&_total=accurate").total == 10
    assert corpus_db.search("Patient", "_count=1&_total=estimate").total == 10
    r = corpus_db.search("Patient", "_summary=count")
    assert r.total == 10 and r.entries == [] and r.summary_count_only
    r = corpus_db.search("Patient", "_count=0")
    assert r.total == 10 and r.entries == [] and not r.summary_count_only


def test_summary_and_elements(corpus_db: SearchDB) -> None:
    r = corpus_db.search("Patient", "_id=h-muller&_summary=true")
    body = orjson.loads(r.entries[0].data)
    assert {"name", "gender", "birthDate", "identifier", "meta"} <= set(body)
    assert "text" not in body and "contact" not in body
    assert any(t.get("code") == "SUBSETTED" for t in body["meta"]["tag"])
    r = corpus_db.search("Patient", "_id=example&_summary=text")
    body = orjson.loads(r.entries[0].data)
    assert set(body) == {"resourceType", "id", "meta", "text"}
    r = corpus_db.search("Patient", "_id=example&_summary=data")
    body = orjson.loads(r.entries[0].data)
    assert "text" not in body and "name" in body
    r = corpus_db.search("Patient", "_id=h-zed&_elements=name,deceased")
    body = orjson.loads(r.entries[0].data)
    assert set(body) == {"resourceType", "id", "meta", "name", "deceasedDateTime"}
    r = corpus_db.search("Patient", "_id=h-muller&_elements=gender&_include=Patient:organization")
    inc = [e for e in r.entries if e.mode == "include"][0]
    assert "name" in orjson.loads(inc.data)  # included resources are whole
    r = corpus_db.search("Patient", "_id=h-muller")
    assert b"SUBSETTED" not in r.entries[0].data  # stored bytes untouched


def test_bad_cursor(corpus_db: SearchDB) -> None:
    for cursor in ["garbage", "eyJkIjoibiJ9", "", "%00"]:
        with pytest.raises(FhirError) as err:
            corpus_db.search("Patient", [("_cursor", cursor)])
        assert err.value.http_status == 400
    r = corpus_db.search("Patient", "_count=2&_sort=family")
    cursor = _query(r.links["next"]).split("_cursor=")[1]
    with pytest.raises(FhirError):  # a cursor from a search with other sort keys
        corpus_db.search("Patient", [("_count", "2"), ("_cursor", urllib.parse.unquote(cursor))])
