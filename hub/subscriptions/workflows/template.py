"""Templates: JSON/YAML values whose strings hold ``{{ FHIRPath }}``.

* A string that is exactly one ``{{ expr }}`` becomes the expression's value: one item, or a
  list when there are several; an empty result removes the key (so no empty FHIR elements).
* Otherwise every ``{{ expr }}`` is replaced by its items joined with ", ".
* A filter after ``|`` formats an instant: ``date`` (Tuesday 8 December 2026), ``time`` (09:00),
  ``datetime`` (both).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from hub.subscriptions import fhirpath

_EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)
_FILTERS = ("date", "time", "datetime")


class _Omit:
    pass


OMIT = _Omit()


def _split(raw: str) -> tuple[str, str | None]:
    expr, sep, filt = raw.rpartition("|")
    if sep and filt.strip() in _FILTERS:
        return expr.strip(), filt.strip()
    return raw.strip(), None


def expressions(text: str) -> Iterator[str]:
    for m in _EXPR.finditer(text):
        yield _split(m.group(1))[0]


def _format(value: Any, filt: str | None) -> Any:
    if filt is None or not isinstance(value, str):
        return value
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    date = f"{dt:%A} {dt.day} {dt:%B %Y}"
    time = f"{dt:%H:%M}"
    return {"date": date, "time": time, "datetime": f"{date} at {time}"}[filt]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render(value: Any, env: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _EXPR.fullmatch(value.strip()) if value.count("{{") == 1 else None
        if whole is not None:
            expr, filt = _split(whole.group(1))
            items = [_format(v, filt) for v in fhirpath.evaluate(expr, env)]
            if not items:
                return OMIT
            return items[0] if len(items) == 1 else items

        def sub(m: re.Match[str]) -> str:
            expr, filt = _split(m.group(1))
            return ", ".join(_text(_format(v, filt)) for v in fhirpath.evaluate(expr, env))

        return _EXPR.sub(sub, value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            r = render(v, env)
            if r is OMIT or r == {} or r == [] or r == "":
                continue
            out[k] = r
        return out
    if isinstance(value, list):
        items = []
        for v in value:
            r = render(v, env)
            if r is OMIT or r == {} or r == "":
                continue
            items.extend(r if isinstance(r, list) and not isinstance(v, list) and isinstance(v, str) else [r])
        return items
    return value
