"""Parsing FHIR instants and dateTimes given as search/history parameters."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hub.errors import invalid

_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?$")


def parse_instant_micros(value: str, param: str) -> int:
    """``2024-01-02T03:04:05.123Z`` (or a date) -> microseconds since the epoch, UTC."""
    text = value.strip()
    if not _INSTANT.match(text):
        raise invalid("FHIRHUB-PARAM-INSTANT", f"{param} must be a FHIR instant such as 2024-01-31T12:00:00Z")
    if "." in text:  # Python keeps at most 6 fraction digits
        head, _, tail = text.partition(".")
        digits = "".join(ch for ch in tail if ch.isdigit())
        zone = tail[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid("FHIRHUB-PARAM-INSTANT", f"{param} is not a valid date/time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)
