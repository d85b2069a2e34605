"""What ``GET /admin/connectors`` and ``fhirhub connectors status`` show, read from the database.

Per type and direction: the last success and attempt, the lag (seconds since the last successful
pull; for push, the age of the oldest change still waiting), counts, errors and the last error; the
links per type; the dead-letter backlog; and the remote's discovery warnings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.store.db import Database
from hub.store.repository import now_micros
from hub.sync import store
from hub.sync.config import ConnectorConfig


def _iso(micros: int | None) -> str | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="seconds")


def connector_status(db: Database, cfg: ConnectorConfig, running: bool) -> dict[str, Any]:
    now = now_micros()
    with db.read() as conn:
        states = {(s.direction, s.res_type): s for s in store.states(conn, cfg.name)}
        links = store.count_links(conn, cfg.name)
        backlog = store.backlog(conn, cfg.name)
        discovery = store.load_discovery(conn, cfg.name)
        pending, oldest = store.push_pending(conn, cfg.consumer, cfg.push_types)
        per_type_pending = {t: store.push_pending(conn, cfg.consumer, [t]) for t in cfg.push_types}

    def row(direction: str, res_type: str) -> dict[str, Any]:
        s = states.get((direction, res_type)) or store.State(res_type, direction)
        out: dict[str, Any] = {
            "type": res_type,
            "lastSuccess": _iso(s.last_success),
            "lastAttempt": _iso(s.last_attempt),
            "count": s.count,
            "errors": s.errors,
            "lastError": s.last_error,
        }
        if direction == "pull":
            out["watermark"] = s.watermark
            out["lagSeconds"] = None if s.last_success is None else round((now - s.last_success) / 1e6, 1)
            if s.next_url:
                out["inProgress"] = True
        else:
            waiting, since = per_type_pending[res_type]
            out["pending"] = waiting
            out["lagSeconds"] = None if since is None else round((now - since) / 1e6, 1)
        return out

    return {
        "name": cfg.name,
        "kind": "fhir-rest",
        "baseUrl": cfg.base_url,
        "file": cfg.path,
        "enabled": cfg.enabled,
        "running": running,
        "conflict": cfg.conflict,
        "pull": [row("pull", t) for t in cfg.pull_types],
        "push": [row("push", t) for t in cfg.push_types],
        "pushPending": pending,
        "pushLagSeconds": None if oldest is None else round((now - oldest) / 1e6, 1),
        "links": links,
        "deadLetters": {"dead": backlog.get("dead", 0), "replay": backlog.get("replay", 0), "resolved": backlog.get("resolved", 0)},
        "warnings": (discovery or {}).get("warnings", []),
        "discovered": (discovery or {}).get("checked"),
    }
