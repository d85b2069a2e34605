"""CLI functions: map_file, golden tests, diff_bundles / replay."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from hub.hl7.mapping import MappingSet
from hub.hl7.tools import diff_bundles, map_file, replay, run_golden_tests

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
NG = ROOT / "tests" / "data" / "hl7v2" / "nextgen-connect"


def test_golden_files_pass(ms: MappingSet) -> None:
    """mappings/tests/*.hl7 against the expected .json beside each."""
    failures = run_golden_tests(MAPPINGS / "tests", ms)
    assert not failures, "\n\n".join(str(f) for f in failures)
    assert len(list((MAPPINGS / "tests").glob("*.hl7"))) >= 10


def test_golden_failure_has_readable_diff(ms: MappingSet, tmp_path: Path) -> None:
    shutil.copy(MAPPINGS / "tests" / "adt_a01_minimal.hl7", tmp_path / "x.hl7")
    shutil.copy(MAPPINGS / "tests" / "adt_a01_minimal.json", tmp_path / "x.json")
    (tmp_path / "x.json").write_text((tmp_path / "x.json").read_text().replace('"MOUSE"', '"MAUS"'))
    (tmp_path / "y.hl7").write_bytes((MAPPINGS / "tests" / "adt_a01_minimal.hl7").read_bytes())
    failures = run_golden_tests(tmp_path, ms)
    by = {Path(f.message).name: f for f in failures}
    assert by["x.hl7"].reason == "differs"
    diff = by["x.hl7"].diff
    assert '-              "family": "MAUS",' in diff and '+              "family": "MOUSE",' in diff
    assert by["y.hl7"].reason == "missing expected"


def test_map_file(ms: MappingSet) -> None:
    b = map_file(NG / "nonbatch_04.hl7", ms)
    assert b["type"] == "transaction" and b["entry"][0]["resource"]["resourceType"] == "Patient"


def test_diff_bundles(ms: MappingSet) -> None:
    a = map_file(NG / "nonbatch_nested_06.hl7", ms)
    assert diff_bundles(a, copy.deepcopy(a)) == []
    b = copy.deepcopy(a)
    b["entry"][0]["resource"]["gender"] = "female"
    b["entry"].pop()
    changes = diff_bundles(a, b)
    kinds = {c.kind for c in changes}
    assert kinds == {"changed", "removed"}
    changed = next(c for c in changes if c.kind == "changed")
    assert changed.key.startswith("PUT Patient?identifier=") and changed.changes == [
        'gender: "male" -> "female"'
    ]
    assert "changed" in str(changed)


def test_replay_shows_effect_of_a_mapping_change(ms: MappingSet, tmp_path: Path) -> None:
    dst = tmp_path / "m"
    shutil.copytree(MAPPINGS, dst, ignore=shutil.ignore_patterns("tests"))
    f = dst / "codemaps" / "AdministrativeSex.yaml"
    f.write_text(
        f.read_text().replace(
            '"M": {code: "male", display: "Male"}', '"M": {code: "unknown", display: "Unknown"}'
        )
    )
    new = MappingSet.load(dst)
    msgs = [(NG / "nonbatch_04.hl7").read_bytes(), (NG / "nonbatch_01.hl7").read_bytes()]
    out = replay(msgs, ms, new)
    assert [i for i, *_ in out] == [0, 1]
    assert any('gender: "male" -> "unknown"' in c for ch in out[0][1] for c in ch.changes)
