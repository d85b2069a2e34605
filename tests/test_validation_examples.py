"""Every official R4 example validates without error, except the documented invalid ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.validation import Validator, parse_json

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "data" / "fhir-examples" / "r4-official"
KNOWN_INVALID: dict[str, str] = json.loads(
    (ROOT / "tests" / "data" / "fhir-examples" / "known-invalid.json").read_text()
)
FILES = sorted(p.name for p in EXAMPLES.glob("*.json") if p.name != "package.json")


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator.load(ROOT / "profiles")


def test_example_set_is_complete() -> None:
    assert len(FILES) == 161
    assert set(KNOWN_INVALID) <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_example(validator: Validator, name: str) -> None:
    data, issues = parse_json((EXAMPLES / name).read_bytes())
    issues = issues + validator.validate(data)
    errors = [f"{i.expression}: {i.diagnostics}" for i in issues if i.severity in ("error", "fatal")]
    if name in KNOWN_INVALID:
        assert errors, f"{name} is listed as invalid ({KNOWN_INVALID[name]}) but validates"
    else:
        assert not errors, errors
