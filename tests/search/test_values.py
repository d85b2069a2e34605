"""Value rules worked out by hand: date precision ranges, string normalisation, escaping, hashing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.search.query import split_escaped, unescape, uri_ancestors
from hub.search.values import h64, implicit_range, normalize, parse_date_range, parse_decimal, prefix_upper


def us(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1_000_000  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", us(2020, 1, 1), us(2021, 1, 1) - 1),
        ("2020-02", us(2020, 2, 1), us(2020, 3, 1) - 1),  # leap February
        ("2021-02", us(2021, 2, 1), us(2021, 3, 1) - 1),
        ("2020-12", us(2020, 12, 1), us(2021, 1, 1) - 1),
        ("2020-02-29", us(2020, 2, 29), us(2020, 3, 1) - 1),
        ("2020-01-01T10:00", us(2020, 1, 1, 10), us(2020, 1, 1, 10, 1) - 1),
        ("2020-01-01T10:00:00Z", us(2020, 1, 1, 10), us(2020, 1, 1, 10, 0, 1) - 1),
        ("2020-01-01T10:00:00+02:00", us(2020, 1, 1, 8), us(2020, 1, 1, 8, 0, 1) - 1),
        ("2020-01-01T00:30:00-01:00", us(2020, 1, 1, 1, 30), us(2020, 1, 1, 1, 30, 1) - 1),
        ("2020-01-01T10:00:00.5Z", us(2020, 1, 1, 10) + 500_000, us(2020, 1, 1, 10) + 600_000 - 1),
        ("2020-01-01T10:00:00.123Z", us(2020, 1, 1, 10) + 123_000, us(2020, 1, 1, 10) + 124_000 - 1),
        ("2020-01-01T10:00:00.1234567Z", us(2020, 1, 1, 10) + 123_456, us(2020, 1, 1, 10) + 123_456),
        ("1969-12-31", us(1969, 12, 31), us(1970, 1, 1) - 1),  # before the epoch
        ("0001", us(1, 1, 1), us(2, 1, 1) - 1),
    ],
)
def test_date_ranges(text: str, low: int, high: int) -> None:
    assert parse_date_range(text) == (low, high)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20",
        "2020-1",
        "2020-13",
        "2021-02-29",
        "2020-01-01T",
        "2020-01-01T10",
        "2020-01-01T10:60",
        "2020-01-01T10:00:00+15:00",
        "2020-01-01 10:00",
        "ge2020",
        "２０２０",
    ],
)
def test_bad_dates(text: str) -> None:
    assert parse_date_range(text) is None


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("Müller", "muller"),
        ("MÜLLER", "muller"),
        ("Mu\u0308ller", "muller"),  # decomposed ü
        ("Ærø", "aero"),
        ("Straße", "strasse"),
        ("Łódź", "lodz"),
        ("Ｆｕｌｌ", "full"),  # full-width
        ("Dvořák", "dvorak"),
        ("O'Brien", "o'brien"),
        ("İstanbul", "istanbul"),
    ],
)
def test_normalize(text: str, norm: str) -> None:
    assert normalize(text) == norm


def test_prefix_upper() -> None:
    assert prefix_upper("abc") == "abd"
    assert prefix_upper("ab\U0010ffff") == "ac"
    assert prefix_upper("\U0010ffff") is None
    assert prefix_upper("a\ud7ff") == "a\ue000"  # skips the surrogates


def test_escaping() -> None:
    assert split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert split_escaped(r"sys|a\|b", "|") == ["sys", r"a\|b"]
    assert unescape(r"a\,b\|c\$d\\e") == "a,b|c$d\\e"
    assert split_escaped("a,,b", ",") == ["a", "", "b"]


def test_numbers() -> None:
    assert implicit_range(parse_decimal("100")) == (99.5, 100.5)  # type: ignore[arg-type]
    assert implicit_range(parse_decimal("1.50")) == (1.495, 1.505)  # type: ignore[arg-type]
    assert implicit_range(parse_decimal("1e2")) == (50.0, 150.0)  # type: ignore[arg-type]
    for bad in ["", "abc", "1e999", "NaN", "Infinity", "1,5", "--1"]:
        assert parse_decimal(bad) is None


def test_uri_ancestors() -> None:
    assert uri_ancestors("http://a.org/fhir/ValueSet/1") == [
        "http://a.org/fhir/ValueSet/1",
        "http://a.org/fhir/ValueSet/",
        "http://a.org/fhir/ValueSet",
        "http://a.org/fhir/",
        "http://a.org/fhir",
        "http://a.org/",
        "http://a.org",
    ]


def test_hash_is_signed_64_bit_and_separates_parts() -> None:
    h = h64("Patient", "name")
    assert -(2**63) <= h < 2**63
    assert h64("Patient", "name") == h
    assert h64("Patientn", "ame") != h
