"""Fixtures for the HL7v2 tests: the repository's mapping set, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.hl7.mapping import MappingSet

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def ms() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")
