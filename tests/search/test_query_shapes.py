"""SQL shapes chosen for speed (bench/suites/search.py) give the answers of the plain shapes.

* two range clauses on a parameter a resource has at most one index row of (``date=ge…&date=lt…`` on
  ``Encounter.period``) are checked on that one row;
* a chain to several target types is one sub-select per type, ``UNION ALL``;
* a positive index clause confines the type without a ``res_type`` condition.
"""

from __future__ import annotations

import pytest

from hub.search.params import Registry
from tests.search.conftest import SearchDB


@pytest.mark.parametrize(
    ("res_type", "code", "one_row"),
    [
        ("Appointment", "date", True),
        ("Encounter", "date", True),
        ("Patient", "birthdate", True),
        ("Observation", "date", False),  # effective[x] may be a Timing: several rows
        ("Condition", "onset-date", False),  # a union of paths
        ("Immunization", "date", False),  # occurrence[x] includes a string
        ("Observation", "code", False),  # not a date
    ],
)
def test_one_date_row(registry: Registry, res_type: str, code: str, one_row: bool) -> None:
    bp = registry.get(res_type, code)
    assert bp is not None
    assert registry.one_date_row(bp) is one_row


@pytest.mark.parametrize("res_type", ["Encounter", "Observation", "Patient"])
def test_date_window_is_the_intersection_of_its_bounds(corpus_db: SearchDB, res_type: str) -> None:
    code = "birthdate" if res_type == "Patient" else "date"
    found = 0
    for lo, hi in [("1900", "2100"), ("2010-01-01", "2020-01-01"), ("2015-06", "2015-07"), ("2030", "2031")]:
        for ge, lt in [("ge", "lt"), ("gt", "le"), ("sa", "eb")]:
            both = corpus_db.ids(res_type, f"{code}={ge}{lo}&{code}={lt}{hi}")
            assert both == corpus_db.ids(res_type, f"{code}={ge}{lo}") & corpus_db.ids(res_type, f"{code}={lt}{hi}")
            found += len(both)
    assert found > 0


def test_date_window_with_an_anchor(corpus_db: SearchDB) -> None:
    """With an equality clause the window is checked row by row (EXISTS) on the same row."""
    patients = corpus_db.ids("Patient", "")
    for p in sorted(patients)[:5]:
        both = corpus_db.ids("Encounter", f"subject=Patient/{p}&date=ge2000&date=lt2030")
        each = [corpus_db.ids("Encounter", q) for q in (f"subject=Patient/{p}", "date=ge2000", "date=lt2030")]
        assert both == each[0] & each[1] & each[2]


def test_chain_to_several_types_is_the_union_of_the_typed_chains(corpus_db: SearchDB) -> None:
    both = corpus_db.ids("Observation", "subject.name=a")
    typed: set[str] = set()
    for target in ("Patient", "Location"):  # the targets of Observation.subject with a `name`
        typed |= corpus_db.ids("Observation", f"subject:{target}.name=a")
    assert both == typed and both


def test_type_confined_by_the_index_rows(corpus_db: SearchDB) -> None:
    """``_type=A,B`` with a shared parameter: every match is of A or B, none deleted."""
    result = corpus_db.search(None, "_type=Patient,Practitioner&name=a&_count=1000")
    types = {e.res_type for e in result.entries if e.mode == "match"}
    assert types and types <= {"Patient", "Practitioner"}
