"""Message-store operations shared by the admin API (``hub/hl7/api.py``) and the CLI (``hub/hl7/cli.py``).

* browse: :meth:`Admin.search`, :meth:`Admin.get` (raw message, its ACK, the resources it produced);
* reprocess one message, or every failed message of one error class (after a mapping fix), through
  the same pipeline and write path as the listener;
* requeue a dead outbound message; purge by retention;
* replay: run stored messages through two mapping sets and show the FHIR difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.errors import Category, FhirError, invalid
from hub.fhir.instant import parse_instant_micros
from hub.hl7 import store
from hub.hl7.connectors import Connectors, Listener, load
from hub.hl7.convert import convert
from hub.hl7.errors import Hl7Error
from hub.hl7.mapping import MappingSet
from hub.hl7.pipeline import MappingCache, Pipeline
from hub.hl7.settings import Hl7Settings
from hub.hl7.tools import EntryChange, diff_bundles
from hub.store.db import Database
from hub.store.repository import instant, now_micros

if TYPE_CHECKING:
    from hub.app import Hub
    from hub.hl7.service import Runtime

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(value: str, what: str = "time") -> int:
    """``2026-11-27``, ``2026-11-27T08:00:00Z`` or a duration ago (``90m``, ``2h``, ``7d``) -> µs."""
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        return now_micros() - int(float(m.group(1)) * _UNITS[m.group(2)] * 1_000_000)
    return parse_instant_micros(text, what)


def summary(row: Any) -> dict[str, Any]:
    """A message as JSON (no bodies): what lists show."""
    out: dict[str, Any] = {
        "id": int(row.pk),
        "direction": row.direction,
        "connector": row.connector,
        "type": row.message_type or None,
        "controlId": row.control_id,
        "sender": row.sender,
        "receiver": row.receiver,
        "status": row.status,
        "ack": row.ack_code,
        "ackDelivery": row.ack_delivery,  # enhanced mode: undelivered / redelivered application ACK
        "received": instant(int(row.received)),
        "processed": instant(int(row.processed)) if row.processed else None,
        "attempts": int(row.attempts),
        "duplicates": int(row.duplicates),
        "peer": row.peer,
    }
    if row.error_code:
        out["error"] = {"code": row.error_code, "location": row.error_location}
    if row.source:
        out["source"] = row.source
    if row.direction == "out" and row.status == "queued" and row.next_attempt:
        out["nextAttempt"] = instant(int(row.next_attempt))
    return {k: v for k, v in out.items() if v is not None}


def detail(row: Any, with_bundle: bool = False) -> dict[str, Any]:
    """A message with its raw text, its ACK and the resources it produced."""
    out = summary(row)
    if row.detail and "error" in out:
        out["error"]["detail"] = row.detail
    out["message"] = bytes(row.raw).decode("utf-8", "replace")
    if row.ack is not None:
        out["ackMessage"] = bytes(row.ack).decode("utf-8", "replace")
    out["resources"] = (row.resources or "").split()
    if row.patient_key:
        out["patientKey"] = row.patient_key
    if with_bundle:
        out["bundle"] = store.unpack_bundle(row.bundle)
    return out


@dataclass
class Reprocessed:
    pk: int
    status: str
    ack_code: str
    error_code: str | None = None
    resources: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.pk, "status": self.status, "ack": self.ack_code, "resources": self.resources}
        if self.error_code:
            out["error"] = self.error_code
        return out


@dataclass
class Replayed:
    pk: int
    control_id: str | None
    message_type: str
    changes: list[EntryChange]
    old_error: str | None
    new_error: str | None


class Admin:
    """The operations, over one hub (and the running HL7 runtime when there is one)."""

    def __init__(self, db: Database, *, hub: Hub | None = None, hub_factory: Callable[[], Hub] | None = None,
                 runtime: Runtime | None = None, connectors: Connectors | None = None,
                 settings: Hl7Settings | None = None) -> None:
        self.db = db
        self._hub = hub
        self._hub_factory = hub_factory
        self.runtime = runtime
        self.settings = settings or (runtime.settings if runtime is not None else Hl7Settings())
        self._connectors = connectors if connectors is not None else (runtime.connectors if runtime is not None else None)
        self.mappings = runtime.mappings if runtime is not None else MappingCache()

    @property
    def hub(self) -> Hub:
        """The hub (its router commits reprocessed messages); built on first use by the CLI."""
        if self._hub is None:
            if self._hub_factory is None:
                raise RuntimeError("this Admin has no hub to write through")
            self._hub = self._hub_factory()
        return self._hub

    @property
    def connectors(self) -> Connectors:
        if self._connectors is None:
            self._connectors = load(self.settings)
        return self._connectors

    # -- browse
    def search(self, q: store.Query) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [summary(r) for r in store.search(conn, q)]

    def get(self, pk: int, with_bundle: bool = False) -> dict[str, Any]:
        with self.db.read() as conn:
            row = store.get(conn, pk)
        if row is None:
            raise FhirError(Category.NOT_FOUND, "HL7-MESSAGE-NOT-FOUND", f"no stored message {pk}")
        return detail(row, with_bundle)

    def raw(self, pk: int) -> Any:
        with self.db.read() as conn:
            row = store.get(conn, pk)
        if row is None:
            raise FhirError(Category.NOT_FOUND, "HL7-MESSAGE-NOT-FOUND", f"no stored message {pk}")
        return row

    # -- reprocess
    def listener(self, name: str) -> Listener:
        c = self.connectors.listener(name)
        if c is None:
            raise FhirError(Category.CONFLICT, "HL7-CONNECTOR-UNKNOWN",
                            f"connector {name!r} is not an enabled mllp-listener; the message cannot be reprocessed")
        return c

    def pipeline(self, name: str) -> Pipeline:
        if self.runtime is not None and name in self.runtime.listeners:
            return self.runtime.listeners[name].pipeline
        base = self.hub.settings.base_url or "http://localhost/fhir"
        return Pipeline(self.hub.router, self.listener(name), self.mappings, base)

    def reprocess(self, pk: int) -> Reprocessed:
        """Run one stored inbound message through the current mapping files and commit it again.

        Its previous outcome is replaced; the sender is not sent a new ACK (it got one long ago).
        """
        row = self.raw(pk)
        if row.direction != "in":
            raise invalid("HL7-REPROCESS-OUTBOUND", "only inbound messages are reprocessed (requeue outbound ones)")
        if row.status == "received":
            raise FhirError(Category.CONFLICT, "HL7-REPROCESS-BUSY", f"message {pk} is waiting to be processed")
        pipeline = self.pipeline(row.connector)
        result = pipeline.process(pk, bytes(row.raw), row.peer)
        with self.db.write() as conn:
            store.finish(conn, [result.outcome])
        if self.hub.ctx.audit is not None:
            self.hub.ctx.audit.enqueue(result.audit)
        o = result.outcome
        return Reprocessed(pk, o.status, o.ack_code, o.error_code, o.resources)

    def reprocess_class(self, error_code: str, connector: str | None = None, limit: int = 10_000) -> list[Reprocessed]:
        """Reprocess every failed inbound message of one error class (``error_code``), oldest first."""
        q = store.Query(error_code=error_code, status=["error", "rejected"], connector=connector, direction="in")
        with self.db.read() as conn:
            keys = store.keys(conn, q)[:limit]
        return [self.reprocess(pk) for pk in keys]

    # -- outbound, retention
    def requeue(self, pk: int) -> bool:
        with self.db.write() as conn:
            ok = store.requeue(conn, pk)
        if ok and self.runtime is not None:
            row = self.raw(pk)
            sender = self.runtime.senders.get(row.connector)
            if sender is not None:
                sender.queued()
        return ok

    def purge(self, before: int, statuses: list[str] | None = None, connector: str | None = None) -> int:
        with self.db.write() as conn:
            return store.purge(conn, before, statuses, connector)

    # -- replay
    def replay(self, since: int, until: int | None = None, new_mappings: Path | None = None,
               connector: str | None = None, message_type: str | None = None, limit: int = 1000) -> list[Replayed]:
        """Stored inbound messages through two mapping sets; the ones whose FHIR output differs.

        With ``new_mappings`` (a changed copy of the files): the connector's deployed set against
        it. Without: the Bundle stored when the message was processed against the current files.
        """
        q = store.Query(since=since, until=until, connector=connector, direction="in", message_type=message_type)
        with self.db.read() as conn:
            keys = store.keys(conn, q)[:limit]
        new_set = MappingSet.load(new_mappings) if new_mappings is not None else None
        out: list[Replayed] = []
        for pk in keys:
            row = self.raw(pk)
            lst = self.connectors.listener(row.connector)
            deployed = self.mappings.get(lst.mappings if lst is not None else self.settings.mappings_dir)
            raw = bytes(row.raw)
            if new_set is not None:
                old, old_err = _run(raw, deployed, lst)
                new, new_err = _run(raw, new_set, lst)
            else:
                old = store.unpack_bundle(row.bundle)
                old_err = row.error_code if old is None and row.status != "applied" else None
                new, new_err = _run(raw, deployed, lst)
            changes = diff_bundles(old, new)
            if changes or old_err != new_err:
                out.append(Replayed(pk, row.control_id, row.message_type, changes, old_err, new_err))
        return out


def _run(raw: bytes, ms: MappingSet, lst: Listener | None) -> tuple[dict[str, Any] | None, str | None]:
    """Convert with the connector's options: (bundle, None) or (None, error code)."""
    try:
        result = convert(raw, ms, sender_systems=(lst.sender_systems or None) if lst else None,
                         timezone=lst.timezone if lst else None, parser=lst.parser if lst else "split")
    except Hl7Error as exc:
        return None, exc.code
    return result.bundle, None


def admin_for(hub: Hub) -> Admin:
    from hub.hl7.service import runtime_of

    return Admin(hub.ctx.db, hub=hub, runtime=runtime_of(hub))
