"""Time for the subscription engine and the workflows: integer microseconds (UTC), injectable."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], int]


def system_clock() -> int:
    return time.time_ns() // 1000


def to_instant(micros: int) -> str:
    """FHIR instant with milliseconds, in UTC."""
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> int | None:
    """A FHIR dateTime/instant with a time zone -> microseconds; None when it has no time or zone."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        return None
    return int(value.timestamp() * 1_000_000)


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``48h``, ``2d``, ``1w``, ``-2h``, ``1h30m`` -> seconds. Raises ValueError."""
    import re

    raw = str(text).strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    raw = raw.lstrip("+-")
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)w)?(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", raw)
    if not raw or parts is None or not any(parts.groups()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 48h, 2d, 1h30m)")
    w, d, h, m, s = (float(x) if x else 0.0 for x in parts.groups())
    return sign * (w * 604800 + d * 86400 + h * 3600 + m * 60 + s)
