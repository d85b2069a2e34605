"""Fixtures for the HL7v2 tests: the repository's mapping set, and hubs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.app import Hub, build_hub
from hub.hl7.mapping import MappingSet
from hub.settings import Settings
from hub.store.schema import upgrade
from hub.validation import Validator
from tests.conftest import DIALECTS, fresh_database

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def ms() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


@pytest.fixture(scope="session")
def validator() -> Validator:
    return Validator.load(Settings().profiles_dir)


@pytest.fixture(scope="module", params=DIALECTS)
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, validator: Validator) -> Iterator[Hub]:
    """A hub with the real validator and search engine on an empty database, once per dialect and module."""
    workdir = tmp_path_factory.mktemp(f"hl7-{request.param}")
    with fresh_database(request.param, workdir) as url:
        h = build_hub(Settings(database_url=url), validator=validator)
        upgrade(h.ctx.db)
        try:
            yield h
        finally:
            h.close()
