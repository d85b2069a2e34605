"""Pure transformations between a remote resource and its local copy (no I/O).

* Server-managed ``meta`` (versionId, lastUpdated, source) never crosses: each side keeps its own;
  a pulled resource gets ``meta.source`` = the connector.
* The local id travels to the remote as an identifier ``urn:fhirhub:connector:<name>|<local id>``
  (so a create retried after a crash is matched, not duplicated); it is removed again on the way in.
* References: a reference to a synced resource is rewritten to the other side's id through the link
  table; a reference to anything else the remote holds becomes an absolute URL on the remote
  (``{base}/Practitioner/7``), which is turned back into ``Practitioner/7`` on the way out.
* A resource created locally by a pull gets a deterministic id (uuid5 of connector, type and remote
  id), so a page replayed after a crash writes the same resources again instead of new ones.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

_NS = uuid.UUID("5b0e3c3e-57a1-4bb4-9a52-3f5d2b1f7a10")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?$")
SERVER_META = ("versionId", "lastUpdated", "source")


def local_id_for(connector: str, res_type: str, remote_id: str) -> str:
    return str(uuid.uuid5(_NS, f"{connector}|{res_type}|{remote_id}"))


def split_reference(value: str, base: str) -> tuple[str, str] | None:
    """``Type/id`` (or ``{base}/Type/id[/_history/v]``) -> (Type, id); None for anything else."""
    if value.startswith(base + "/"):
        value = value[len(base) + 1 :]
    m = _RELATIVE.match(value)
    return (m.group(1), m.group(2)) if m else None


def parse_location(value: str | None) -> tuple[str, str, str | None] | None:
    """A Location header or ``response.location``: ``[base/]Type/id[/_history/v]`` -> (Type, id, v)."""
    if not value:
        return None
    parts = value.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-4], parts[-3], parts[-1]
    if len(parts) >= 2:
        return parts[-2], parts[-1], None
    return None


def etag_version(value: str | None) -> str | None:
    if not value:
        return None
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    return raw.strip('"') or None


def references(resource: Any) -> Iterable[str]:
    """Every ``reference`` string in the resource (contained resources included)."""
    if isinstance(resource, dict):
        for key, value in resource.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(resource, list):
        for item in resource:
            yield from references(item)


def rewrite_references(resource: Any, fn: Callable[[str], str | None]) -> None:
    """Replace each ``reference`` string in place by ``fn(value)`` (None keeps it)."""
    if isinstance(resource, dict):
        for key, value in resource.items():
            if key == "reference" and isinstance(value, str):
                new = fn(value)
                if new is not None:
                    resource[key] = new
            else:
                rewrite_references(value, fn)
    elif isinstance(resource, list):
        for item in resource:
            rewrite_references(item, fn)


def identifiers(resource: dict[str, Any], systems: Iterable[str]) -> list[tuple[str, str]]:
    wanted = set(systems)
    out = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") in wanted and isinstance(ident.get("value"), str):
            out.append((ident["system"], ident["value"]))
    return out


def link_identifier(resource: dict[str, Any], system: str) -> str | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == system and isinstance(ident.get("value"), str):
            return str(ident["value"])
    return None


def _strip_meta(resource: dict[str, Any]) -> None:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        rest = {k: v for k, v in meta.items() if k not in SERVER_META}
        if rest:
            resource["meta"] = rest
        else:
            del resource["meta"]


def to_local(remote: dict[str, Any], local_id: str, source: str, link_system: str,
             ref: Callable[[str], str | None]) -> dict[str, Any]:
    """The local copy of a remote resource: local id, ``meta.source``, local references, no link identifier."""
    out = copy.deepcopy(remote)
    out["id"] = local_id
    _strip_meta(out)
    idents = [i for i in out.get("identifier") or [] if not (isinstance(i, dict) and i.get("system") == link_system)]
    if idents:
        out["identifier"] = idents
    else:
        out.pop("identifier", None)
    out["meta"] = {**(out.get("meta") or {}), "source": source}
    rewrite_references(out, ref)
    return out


def to_remote(local: dict[str, Any], remote_id: str | None, link_system: str | None,
              ref: Callable[[str], str | None]) -> dict[str, Any]:
    """The remote body of a local resource: remote id (or none, for a create), remote references."""
    out = copy.deepcopy(local)
    if remote_id is None:
        out.pop("id", None)
    else:
        out["id"] = remote_id
    _strip_meta(out)
    if link_system is not None:
        local_id = local.get("id")
        idents = [i for i in out.get("identifier") or [] if not (isinstance(i, dict) and i.get("system") == link_system)]
        idents.append({"system": link_system, "value": local_id})
        out["identifier"] = idents
    rewrite_references(out, ref)
    return out


def same_content(a: dict[str, Any], b: dict[str, Any], ignore_identifier_system: str | None = None) -> bool:
    """Equal apart from id, server-managed meta and the link identifier."""
    def norm(r: dict[str, Any]) -> dict[str, Any]:
        c = copy.deepcopy(r)
        c.pop("id", None)
        _strip_meta(c)
        if ignore_identifier_system is not None and "identifier" in c:
            c["identifier"] = [i for i in c["identifier"] if not (isinstance(i, dict) and i.get("system") == ignore_identifier_system)]
            if not c["identifier"]:
                del c["identifier"]
        return c
    return norm(a) == norm(b)
