"""Known resources: smaller transactions for the master data a listener names again and again.

A converted message names its practitioners, rooms and payors as conditional creates (``POST
Practitioner`` + ``ifNoneExist``): each costs the write path a search, a validation and an
audit entry, and writes nothing once the resource exists. The same ones come back in message after
message, so the listener remembers, per conditional create, the ``Type/id`` and version it
resolved to the last time it committed. A remembered resource still at that version is left out
of the next Bundle, and the references to it point at ``Type/id`` directly, which is what the
conditional create would have resolved them to.

Before each use, one query checks that the remembered resources exist, are not deleted and are at
the remembered version; anything else keeps its conditional create. The only difference left is a
second resource created elsewhere with the same identifier between two messages: the conditional
create would then fail (several matches), the remembered one keeps pointing at the first. Nothing
here writes; the Bundle still goes through the one write path.

Conditional *updates* (the subject: Patient, Appointment ...) are left as they are: updating by id
would change what the store hashes for its no-op check (the body then carries the id), so the
re-application of a message after a crash would no longer be a no-op.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from hub.store.db import Database

Key = tuple[str, str, str]  # ("create", resource type, identifier query)


def entry_key(entry: dict[str, Any]) -> Key | None:
    req = entry.get("request") or {}
    method, url = req.get("method"), str(req.get("url") or "")
    if method == "POST" and req.get("ifNoneExist") and "?" not in url:
        return ("create", url, str(req["ifNoneExist"]))
    return None


@dataclass
class Shortcut:
    """What :meth:`Known.shorten` did to a Bundle."""

    bundle: dict[str, Any]  # the Bundle to commit
    keys: list[Key | None]  # per entry of ``bundle``: its conditional key
    index: list[int]  # per entry of ``bundle``: its index in the converted Bundle
    used: set[Key] = field(default_factory=set)  # keys answered from memory


class Known:
    def __init__(self, db: Database, limit: int = 100_000) -> None:
        self.db = db
        self.limit = limit
        self._map: OrderedDict[Key, tuple[str, int]] = OrderedDict()  # key -> (id, version)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._map)

    def forget(self, keys: set[Key]) -> None:
        with self._lock:
            for k in keys:
                self._map.pop(k, None)

    def shorten(self, bundle_json: bytes) -> Shortcut:
        """The converted Bundle, with remembered resources left out or updated by id (see module doc)."""
        return self.shorten_many([bundle_json])[0]

    def shorten_many(self, bundles_json: list[bytes]) -> list[Shortcut]:
        """:meth:`shorten` for a batch of Bundles, with one look-up of the remembered versions for all."""
        parsed: list[tuple[dict[str, Any], list[dict[str, Any]], list[Key | None], dict[Key, tuple[str, int]]]] = []
        refs: set[tuple[str, str]] = set()
        for raw in bundles_json:
            bundle: dict[str, Any] = orjson.loads(raw)
            entries: list[dict[str, Any]] = bundle.get("entry") or []
            keys = [entry_key(e) for e in entries]
            with self._lock:
                cand = {k: self._map[k] for k in keys if k is not None and k in self._map}
            refs.update((k[1], v[0]) for k, v in cand.items())
            parsed.append((bundle, entries, keys, cand))
        current = self._current(refs) if refs else {}
        return [self._shortcut(bundle, entries, keys, cand, current) for bundle, entries, keys, cand in parsed]

    def _shortcut(self, bundle: dict[str, Any], entries: list[dict[str, Any]], keys: list[Key | None],
                  cand: dict[Key, tuple[str, int]], current: dict[tuple[str, str], int]) -> Shortcut:
        if not cand:
            self.misses += len([k for k in keys if k is not None])
            return Shortcut(bundle, keys, list(range(len(entries))))
        usable: dict[Key, tuple[str, int]] = {}
        stale: set[Key] = set()
        for k, (res_id, version) in cand.items():
            if current.get((k[1], res_id)) == version:
                usable[k] = (res_id, version)
            else:
                stale.add(k)
        if stale:
            self.forget(stale)
        self.hits += len(usable)
        self.misses += len([k for k in keys if k is not None]) - len(usable)
        out: list[dict[str, Any]] = []
        out_keys: list[Key | None] = []
        index: list[int] = []
        ids: dict[str, str] = {}  # fullUrl -> Type/id of the entries left out
        for i, (entry, key) in enumerate(zip(entries, keys, strict=True)):
            hit = usable.get(key) if key is not None else None
            if hit is not None and key is not None:
                if entry.get("fullUrl"):
                    ids[str(entry["fullUrl"])] = f"{key[1]}/{hit[0]}"
                continue
            out.append(entry)
            out_keys.append(key)
            index.append(i)
        if ids:
            for entry in out:
                _point(entry.get("resource"), ids)
        return Shortcut({**bundle, "entry": out}, out_keys, index, set(usable))

    def learn(self, shortcut: Shortcut, response_body: bytes | None) -> None:
        """Remember what each conditional entry resolved to (from the transaction-response)."""
        try:
            answer = orjson.loads(response_body or b"{}")
        except orjson.JSONDecodeError:
            return
        results = answer.get("entry") or []
        learned: list[tuple[Key, tuple[str, int]]] = []
        for k, res in zip(shortcut.keys, results, strict=False):
            if k is None:
                continue
            r = res.get("response") or {}
            parts = str(r.get("location") or "").split("/")
            if not str(r.get("status", "")).startswith(("200", "201")) or len(parts) < 4 or parts[-2] != "_history":
                continue
            if parts[-4] != k[1] or not parts[-1].isdigit():
                continue
            learned.append((k, (parts[-3], int(parts[-1]))))
        if not learned:
            return
        with self._lock:
            for k, v in learned:
                self._map[k] = v
                self._map.move_to_end(k)
            while len(self._map) > self.limit:
                self._map.popitem(last=False)

    def _current(self, refs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(type, id) -> current version, for those that exist and are not deleted (one query, driver SQL:
        it runs for most messages and must cost less than the look-ups it saves)."""
        out: dict[tuple[str, str], int] = {}
        ordered = sorted(refs)
        with self.db.read_once() as conn:
            p = "?" if self.db.is_sqlite else "%s"
            for n in range(0, len(ordered), 200):  # SQLite: at most 999 parameters a statement
                chunk = ordered[n : n + 200]
                where = " OR ".join([f"(res_type = {p} AND res_id = {p})"] * len(chunk))
                cur: Any = conn.connection.cursor()
                try:
                    cur.execute(f"SELECT res_type, res_id, version FROM resource WHERE deleted = {p} AND ({where})",
                                (False, *(x for ref in chunk for x in ref)))
                    out.update({(t, i): int(v) for t, i, v in cur.fetchall()})
                finally:
                    cur.close()
        return out


def _point(node: Any, ids: dict[str, str]) -> None:
    """Rewrite references to left-out entries (their fullUrl) to ``Type/id``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in ids:
                node[key] = ids[value]
            elif isinstance(value, dict | list):
                _point(value, ids)
    elif isinstance(node, list):
        for value in node:
            _point(value, ids)
