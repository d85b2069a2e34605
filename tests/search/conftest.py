"""Search fixtures: the registry, the engine, and a loaded corpus on SQLite and PostgreSQL.

``corpus_db`` is module-scoped (one load per test module and dialect, built
with the same ``fresh_database`` helper as ``db_url``) because most search
tests only read; tests that write use ``db_url`` directly.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hub.search.engine import SearchEngine, SearchRequest, SearchResult
from hub.search.params import Registry
from hub.search.tables import create_tables
from hub.store.db import Database
from hub.store.repository import Change, Repository
from hub.store.schema import upgrade
from tests.conftest import DIALECTS, fresh_database

DATA = Path(__file__).parent / "data"
BASE = "http://hub.test/fhir"
DELETED = ("Patient", "h-ghost")


def corpus_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted((DATA / "official").glob("*.json")):
        out.append(json.loads(f.read_bytes()))
    hand = json.loads((DATA / "hand" / "hand-written.json").read_bytes())
    out.extend(e["resource"] for e in hand["entry"])
    return out


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.load()


@pytest.fixture(scope="session")
def engine(registry: Registry) -> SearchEngine:
    return SearchEngine(registry)


@pytest.fixture(scope="session")
def corpus() -> list[dict[str, Any]]:
    """The loaded resources, minus the one the fixture deletes."""
    return [r for r in corpus_resources() if (r["resourceType"], r["id"]) != DELETED]


def open_db(url: str) -> Database:
    db = Database(url, pool_size=2)
    upgrade(db)
    create_tables(db.engine)
    return db


def load(db: Database, engine: SearchEngine, resources: list[dict[str, Any]]) -> Repository:
    repo = Repository(indexer=engine.indexer)
    with db.write() as conn:
        repo.write_many(
            conn, [Change(r["resourceType"], r["id"], copy.deepcopy(r), "PUT") for r in resources]
        )
    return repo


@dataclass
class SearchDB:
    db: Database
    engine: SearchEngine
    repo: Repository
    dialect: str

    def search(
        self, res_type: str | None, qs: str | list[tuple[str, str]], strict: bool = True, **kw: Any
    ) -> SearchResult:
        params = urllib.parse.parse_qsl(qs, keep_blank_values=True) if isinstance(qs, str) else qs
        with self.db.read() as conn:
            return self.engine.search(
                conn, SearchRequest(res_type, params, strict, BASE, kw.get("compartment"))
            )

    def ids(self, res_type: str | None, qs: str | list[tuple[str, str]], **kw: Any) -> set[str]:
        result = self.search(res_type, qs, **kw)
        return {e.res_id for e in result.entries if e.mode == "match"}

    def all_pages(self, res_type: str | None, qs: str, limit: int = 100) -> list[str]:
        """Follow next links; the ids in page order."""
        out: list[str] = []
        result = self.search(res_type, qs)
        for _ in range(limit):
            out.extend(e.res_id for e in result.entries if e.mode == "match")
            nxt = result.links.get("next")
            if not nxt:
                return out
            result = self.search(res_type, urllib.parse.urlsplit(nxt).query)
        raise AssertionError("too many pages")


@pytest.fixture(scope="module", params=DIALECTS)
def corpus_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, engine: SearchEngine
) -> Iterator[SearchDB]:
    with fresh_database(request.param, tmp_path_factory.mktemp(f"search-{request.param}")) as url:
        db = open_db(url)
        try:
            repo = load(db, engine, corpus_resources())
            with db.write() as conn:
                repo.write(conn, Change(DELETED[0], DELETED[1], None, "DELETE"))
            yield SearchDB(db, engine, repo, request.param)
        finally:
            db.dispose()


@pytest.fixture
def empty_db(db_url: str, engine: SearchEngine) -> Iterator[SearchDB]:
    db = open_db(db_url)
    try:
        yield SearchDB(db, engine, Repository(indexer=engine.indexer), db.dialect)
    finally:
        db.dispose()
