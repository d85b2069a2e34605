"""Index rows extracted before the write (``Repository.index_rows``, used by the HTTP create path) are exactly the
rows the repository would extract from the stored version inside the write transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from hub.app import Content
from hub.search.index import SearchIndexer
from hub.store.repository import Repository, _with_meta

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "data" / "fhir-examples" / "r4-official").glob("*.json")
                  if p.name != "package.json")  # the package manifest is not a resource


def _normal(rows: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {table.name: sorted((tuple(sorted(r.items())) for r in table_rows), key=repr) for table, table_rows in rows.items()}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_rows_before_the_write_are_the_rows_of_the_stored_version(path: Path, content: Content) -> None:
    assert content.registry is not None
    indexer = SearchIndexer(content.registry)
    repo = Repository(indexer=indexer)
    resource: dict[str, Any] = orjson.loads(path.read_bytes())
    resource.setdefault("meta", {})["tag"] = [{"system": "urn:t", "code": "x"}]  # meta-derived parameters too
    before = repo.index_rows(resource["resourceType"], "id-1", resource)
    assert before is not None  # no R4 parameter reads meta.versionId or meta.lastUpdated
    stored = _with_meta(resource, "id-1", 3, 1_700_000_000_000_000)
    assert _normal(before) == _normal(indexer.extract(stored))
    assert any(rows for rows in before.values())
