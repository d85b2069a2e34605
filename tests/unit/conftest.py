"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hub.app import Content, Hub, build_hub
from hub.settings import Settings
from hub.store.schema import upgrade


@pytest.fixture
def hub(db_url: str, content: Content) -> Iterator[Hub]:
    """A hub with the real conformance content on an empty database, once per dialect."""
    h = build_hub(Settings(database_url=db_url), content=content)
    upgrade(h.ctx.db)
    yield h
    h.close()
