"""One ``fhir-rest`` connector at work: pull, push, conflicts, dead letters, notifications.

Pull (per type, on the connector's schedule, or at once for a notification):

1. ``GET {type}?_lastUpdated=gt{watermark}&_sort=_lastUpdated&_count=N`` (search mode) or
   ``GET {type}/_history?_since={watermark}`` (history mode), then each ``next`` link; the next page is
   fetched while the current one is written.
2. Each remote resource is linked to a local one: by the link table; else by the connector's link
   identifier; else by an identifier of the configured ``match`` systems (``search.find``); else it
   is new and gets a deterministic id (uuid5 of connector, type, remote id).
3. The page becomes ONE transaction Bundle of ``PUT {type}/{local id}`` entries (``meta.source`` = the
   connector, references rewritten), dispatched through ``FhirRouter`` with ``origin = sync:<name>``:
   the one write path, so validation, search indexes, the outbox and the audit trail all apply.
4. In one database transaction: the links (remote id and version, local version), dead letters, and
   the watermark. A crash before step 4 replays the page: the same ids, no duplicates.

Push (woken after each local commit, and on a slow poll):

1. Outbox rows of the push types after the cursor ``sync:<name>``. Rows whose origin is this
   connector are skipped (no echo); so is a resource whose current version is the one the link says
   is in sync (no ping-pong).
2. Linked: ``PUT {type}/{remote id}`` with ``If-Match`` of the linked remote version. Not linked:
   ``POST {type}`` with ``If-None-Exist: identifier=…`` (a match identifier, else the link identifier).
3. 412/409: the conflict policy — remote-wins (fetch and write the remote version locally), local-wins
   (PUT again over the remote's current version), manual (dead letter with the remote's
   OperationOutcome). 429/5xx/timeouts: retried (tenacity, Retry-After); still failing, the push stops
   at that row and tries again on the next poll — nothing is skipped. Other 4xx: dead letter.
4. The link and the cursor advance in one database transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson

from hub.errors import FhirError
from hub.fhir.instant import parse_instant_micros
from hub.interactions.context import Context
from hub.interactions.request import FhirRequest
from hub.interactions.router import FhirRouter
from hub.security.scopes import Principal
from hub.store import outbox
from hub.store.repository import Stored
from hub.sync import mapping, store
from hub.sync.config import ConnectorConfig
from hub.sync.discovery import discover
from hub.sync.remote import Remote, RemoteError
from hub.sync.store import DeadLetter, Link

log = logging.getLogger("hub.sync")
T = TypeVar("T")
ID_CHUNK = 50  # ids per ``_id=`` fetch


@dataclass
class PullResult:
    res_type: str
    pages: int = 0
    fetched: int = 0
    written: int = 0
    unchanged: int = 0
    dead: int = 0
    conflicts: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.res_type, "pages": self.pages, "fetched": self.fetched, "written": self.written,
                "unchanged": self.unchanged, "deadLettered": self.dead, "conflicts": self.conflicts, "error": self.error}


@dataclass
class PushResult:
    examined: int = 0
    pushed: int = 0
    skipped: int = 0
    dead: int = 0
    conflicts: int = 0
    blocked: str | None = None  # a transient failure stopped the push here; it resumes on the next poll

    def to_json(self) -> dict[str, Any]:
        return {"examined": self.examined, "pushed": self.pushed, "skipped": self.skipped, "deadLettered": self.dead,
                "conflicts": self.conflicts, "blocked": self.blocked}


@dataclass
class _Item:
    """One remote resource on its way in."""

    remote: dict[str, Any]
    res_type: str
    remote_id: str
    remote_version: str | None
    local_id: str | None = None
    link: Link | None = None
    action: str = "write"  # write | skip | dead | link-only
    dead: DeadLetter | None = None
    local_version: int | None = None


@dataclass
class _PageOutcome:
    written: int = 0
    unchanged: int = 0
    dead: int = 0
    conflicts: int = 0
    links: list[Link] = field(default_factory=list)


class Connector:
    def __init__(self, cfg: ConnectorConfig, ctx: Context, router: FhirRouter, remote: Remote,
                 local_base: str = "http://localhost/fhir") -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.router = router
        self.remote = remote
        self.local_base = local_base
        self.lock = asyncio.Lock()
        self.discovery: dict[str, Any] | None = None
        self.principal = Principal.system(cfg.origin)

    # ================================================================== helpers
    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def ensure_discovered(self) -> dict[str, Any]:
        if self.discovery is None:
            report = await discover(self.remote)
            self.discovery = report
            await self._db(self._save_discovery, report)
        return self.discovery

    def _save_discovery(self, report: dict[str, Any]) -> None:
        with self.ctx.db.write() as conn:
            store.save_discovery(conn, self.cfg.name, report)

    def _record(self, res_type: str, direction: str, **kwargs: Any) -> None:
        with self.ctx.db.write() as conn:
            store.save_state(conn, self.cfg.name, res_type, direction, **kwargs)

    # ================================================================== pull
    async def pull_all(self) -> list[PullResult]:
        return [await self.pull(t) for t in self.cfg.pull_types]

    async def pull(self, res_type: str) -> PullResult:
        async with self.lock:
            result = PullResult(res_type)
            try:
                await self.ensure_discovered()
                if self.cfg.pull_mode == "history":
                    await self._pull_history(res_type, result)
                else:
                    await self._pull_search(res_type, result)
            except RemoteError as exc:
                result.error = exc.code
                log.warning("connector %s: pull %s stopped: %s", self.cfg.name, res_type, exc.code)
                await self._db(self._record, res_type, "pull", error=f"{exc.code}: {exc.message}")
            return result

    async def _pages(self, first: str, params: Sequence[tuple[str, str]] | None) -> Any:
        """Yield (bundle, next_url) pages, fetching the next one while the caller works on the current one."""
        pending: asyncio.Task[Any] | None = asyncio.ensure_future(self.remote.json("GET", first, params=params))
        try:
            while pending is not None:
                bundle = await pending
                pending = None
                if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                    raise RemoteError("FHIRHUB-SYNC-REMOTE-BUNDLE", "the remote answered a search with something that is not a Bundle")
                nxt = next((lk.get("url") for lk in bundle.get("link") or [] if lk.get("relation") == "next"), None)
                if nxt:
                    pending = asyncio.ensure_future(self.remote.json("GET", nxt))
                yield bundle, nxt
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, RemoteError):
                    await pending

    async def _pull_search(self, res_type: str, result: PullResult) -> None:
        """Search mode. The watermark saved after a page is the newest ``lastUpdated`` below the page's
        last one (resources sharing that last instant may go on in the next page), so ``gt`` resumes
        without a gap; already-linked versions on the overlap are skipped. A remote that ignores
        ``_sort`` gets its watermark moved only at the end of a complete run."""
        state = await self._db(self._state, res_type, "pull")
        watermark = state.watermark or self.cfg.since
        params = [("_sort", "_lastUpdated"), ("_count", str(self.cfg.page_size))]
        if watermark:
            params.insert(0, ("_lastUpdated", f"gt{watermark}"))
        best = (parse_instant_micros(watermark, "watermark"), watermark) if watermark else None
        ordered = True
        previous: int | None = None
        run_top: tuple[int, str] | None = None
        async for bundle, nxt in self._pages(res_type, params):
            resources = [e["resource"] for e in bundle.get("entry") or []
                         if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                         and e["resource"].get("resourceType") == res_type
                         and (e.get("search") or {}).get("mode", "match") == "match"]
            stamps = [s for s in (_stamp(r) for r in resources) if s is not None]
            if any(a[0] > b[0] for a, b in zip(stamps, stamps[1:], strict=False)) or (
                    previous is not None and stamps and stamps[0][0] < previous):
                ordered = False
            if stamps:
                previous = stamps[-1][0]
                top = max(stamps)
                run_top = top if run_top is None or top[0] > run_top[0] else run_top
            outcome = await self._ingest_page(res_type, resources)
            result.pages += 1
            result.fetched += len(resources)
            self._tally(result, outcome)
            candidate: tuple[int, str] | None = None
            if nxt is None:
                candidate = run_top
            elif ordered and stamps:
                older = [x for x in stamps if x[0] < stamps[-1][0]]
                candidate = max(older) if older else None
            values: dict[str, Any] = {}
            if candidate is not None and (best is None or candidate[0] > best[0]):
                best = candidate
                values["watermark"] = candidate[1]
            await self._db(self._finish_page, res_type, outcome, values, nxt is None)

    async def _pull_history(self, res_type: str, result: PullResult) -> None:
        state = await self._db(self._state, res_type, "pull")
        watermark = state.watermark or self.cfg.since
        run_max = state.run_max
        if state.next_url:
            first, params = state.next_url, None
        else:
            first = f"{res_type}/_history"
            params = [("_count", str(self.cfg.page_size))] + ([("_since", watermark)] if watermark else [])
        seen: dict[str, str | None] = {}
        async for bundle, nxt in self._pages(first, params):
            resources: list[dict[str, Any]] = []
            deletes: list[str] = []
            for e in bundle.get("entry") or []:
                if not isinstance(e, dict):
                    continue
                res = e.get("resource")
                method = ((e.get("request") or {}).get("method") or "").upper()
                if isinstance(res, dict) and res.get("resourceType") == res_type and isinstance(res.get("id"), str):
                    rid, version = res["id"], (res.get("meta") or {}).get("versionId")
                    stamp = (res.get("meta") or {}).get("lastUpdated")
                    if stamp and (run_max is None or parse_instant_micros(stamp, "lastUpdated") > parse_instant_micros(run_max, "run_max")):
                        run_max = stamp
                    if rid in seen:  # newest first: an older version of something already taken
                        continue
                    seen[rid] = version
                    resources.append(res)
                elif method == "DELETE" and res is None:
                    ref = mapping.split_reference((e.get("request") or {}).get("url") or e.get("fullUrl") or "", self.remote.base)
                    if ref is not None and ref[0] == res_type and ref[1] not in seen:
                        seen[ref[1]] = None
                        deletes.append(ref[1])
            outcome = await self._ingest_page(res_type, resources)
            if deletes and self.cfg.pull_deletes:
                await self._db(self._apply_deletes, res_type, deletes)
            result.pages += 1
            result.fetched += len(resources)
            self._tally(result, outcome)
            values: dict[str, Any] = {"next_url": nxt, "run_max": run_max}
            if nxt is None:
                values = {"next_url": None, "run_max": None, "watermark": run_max or watermark}
            await self._db(self._finish_page, res_type, outcome, values, nxt is None)

    @staticmethod
    def _tally(result: PullResult, outcome: _PageOutcome) -> None:
        result.written += outcome.written
        result.unchanged += outcome.unchanged
        result.dead += outcome.dead
        result.conflicts += outcome.conflicts

    def _state(self, res_type: str, direction: str) -> store.State:
        with self.ctx.db.read() as conn:
            return store.get_state(conn, self.cfg.name, res_type, direction)

    def _finish_page(self, res_type: str, outcome: _PageOutcome, values: dict[str, Any], last: bool) -> None:
        with self.ctx.db.write() as conn:
            store.upsert_links(conn, self.cfg.name, outcome.links)
            store.save_state(conn, self.cfg.name, res_type, "pull", add_count=outcome.written, success=last, **values)

    # ------------------------------------------------------------------ ingest
    async def _ingest_page(self, res_type: str, resources: list[dict[str, Any]], *, policy: str | None = None,
                           force: bool = False) -> _PageOutcome:
        """Write remote resources locally (one transaction); fetches referenced resources not yet here."""
        if not resources:
            return _PageOutcome()
        extra = await self._missing_references(resources)
        return await self._db(self._ingest, [*extra, *resources], policy or self.cfg.conflict, force)

    async def _missing_references(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Remote resources of pulled types that the page refers to and that are not linked yet."""
        on_page = {(r.get("resourceType"), r.get("id")) for r in resources}
        wanted: dict[str, set[str]] = {}
        for res in resources:
            for value in mapping.references(res):
                ref = mapping.split_reference(value, self.remote.base)
                if ref and ref[0] in self.cfg.pull_types and ref not in on_page:
                    wanted.setdefault(ref[0], set()).add(ref[1])
        if not wanted:
            return []
        missing = await self._db(self._unlinked, wanted)
        out: list[dict[str, Any]] = []
        for res_type, ids in missing.items():
            ordered = sorted(ids)
            for i in range(0, len(ordered), ID_CHUNK):
                chunk = ordered[i : i + ID_CHUNK]
                bundle = await self.remote.json("GET", res_type, params=[("_id", ",".join(chunk)), ("_count", str(len(chunk)))])
                for e in (bundle or {}).get("entry") or []:
                    found = e.get("resource") if isinstance(e, dict) else None
                    if isinstance(found, dict) and found.get("resourceType") == res_type and found.get("id") in ids:
                        out.append(found)
        return out

    def _unlinked(self, wanted: dict[str, set[str]]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with self.ctx.db.read() as conn:
            for res_type, ids in wanted.items():
                linked = store.links_by_remote(conn, self.cfg.name, res_type, ids)
                rest = ids - set(linked)
                if rest:
                    out[res_type] = rest
        return out

    def _ingest(self, resources: list[dict[str, Any]], policy: str, force: bool) -> _PageOutcome:
        cfg = self.cfg
        outcome = _PageOutcome()
        items: list[_Item] = []
        seen: set[tuple[str, str]] = set()
        for res in resources:
            rid = res.get("id")
            res_type = res.get("resourceType")
            if not isinstance(rid, str) or not isinstance(res_type, str) or (res_type, rid) in seen:
                continue
            seen.add((res_type, rid))
            items.append(_Item(res, res_type, rid, (res.get("meta") or {}).get("versionId")))
        by_type: dict[str, list[_Item]] = {}
        for it in items:
            by_type.setdefault(it.res_type, []).append(it)
        current: dict[tuple[str, str], Stored] = {}
        with self.ctx.db.read() as conn:
            for res_type, group in by_type.items():
                links = store.links_by_remote(conn, cfg.name, res_type, [it.remote_id for it in group])
                unlinked: list[_Item] = []
                for it in group:
                    it.link = links.get(it.remote_id)
                    if it.link is not None:
                        it.local_id = it.link.local_id
                    else:
                        unlinked.append(it)
                self._match(conn, res_type, unlinked)
                for it in group:
                    if it.local_id is None:
                        it.local_id = mapping.local_id_for(cfg.name, res_type, it.remote_id)
                    stored = self.ctx.repo.read(conn, res_type, it.local_id)
                    if stored is not None:
                        current[(res_type, it.local_id)] = stored
                # references to pulled types: links of the referenced remote ids
            ref_links: dict[tuple[str, str], str] = {(it.res_type, it.remote_id): it.local_id or "" for it in items}
            wanted: dict[str, set[str]] = {}
            for it in items:
                for value in mapping.references(it.remote):
                    ref = mapping.split_reference(value, self.remote.base)
                    if ref and ref not in ref_links:
                        wanted.setdefault(ref[0], set()).add(ref[1])
            for res_type, ids in wanted.items():
                for rid, found in store.links_by_remote(conn, cfg.name, res_type, ids).items():
                    ref_links[(res_type, rid)] = found.local_id

        def to_local_ref(value: str) -> str | None:
            ref = mapping.split_reference(value, self.remote.base)
            if ref is None:
                return None
            local = ref_links.get(ref)
            if local:
                return f"{ref[0]}/{local}"
            return f"{self.remote.base}/{ref[0]}/{ref[1]}"

        writes: list[tuple[_Item, dict[str, Any]]] = []
        for it in items:
            if it.action == "dead":
                continue
            assert it.local_id is not None
            local = mapping.to_local(it.remote, it.local_id, cfg.source, cfg.link_system, to_local_ref)
            stored = current.get((it.res_type, it.local_id))
            link = it.link
            if link is not None and not force and link.remote_version is not None and link.remote_version == it.remote_version:
                it.action = "skip"
                outcome.unchanged += 1
                continue
            if stored is not None and not stored.deleted and stored.data is not None:
                if mapping.same_content(local, stored.resource()):
                    it.action = "link-only"
                    it.local_version = stored.version
                    outcome.unchanged += 1
                    outcome.links.append(Link(it.res_type, it.local_id, it.remote_id, it.remote_version, stored.version))
                    continue
                changed_here = link is not None and link.local_version is not None and stored.version != link.local_version
                if link is not None and changed_here and not force:
                    outcome.conflicts += 1
                    if policy == "local-wins":
                        # keep the local version; the push overwrites the remote over this version
                        it.action = "link-only"
                        outcome.links.append(Link(it.res_type, it.local_id, it.remote_id, it.remote_version, link.local_version))
                        continue
                    if policy == "manual":
                        it.action = "dead"
                        it.dead = DeadLetter("pull", it.res_type, "FHIRHUB-SYNC-CONFLICT",
                                             "changed here and on the remote since the last sync (policy manual)",
                                             local_id=it.local_id, remote_id=it.remote_id, version=it.remote_version)
                        continue
            writes.append((it, local))
        dead = [it.dead for it in items if it.dead is not None]
        if writes:
            results = self._write([local for _, local in writes])
            for (it, _), (ok, version, problem) in zip(writes, results, strict=True):
                if ok:
                    outcome.written += 1
                    assert it.local_id is not None
                    outcome.links.append(Link(it.res_type, it.local_id, it.remote_id, it.remote_version, version))
                else:
                    dead.append(DeadLetter("pull", it.res_type, "FHIRHUB-SYNC-LOCAL-REJECTED",
                                           "the hub refused the remote resource", local_id=it.local_id,
                                           remote_id=it.remote_id, version=it.remote_version,
                                           http_status=problem[0] if problem else None,
                                           outcome=problem[1] if problem else None))
        if dead:
            outcome.dead += len(dead)
            with self.ctx.db.write() as conn:
                for dl in dead:
                    store.add_dead_letter(conn, cfg.name, dl)
        return outcome

    def _match(self, conn: Any, res_type: str, items: list[_Item]) -> None:
        """Link unlinked remote resources to local ones: link identifier first, then match identifiers."""
        cfg = self.cfg
        search = self.ctx.search
        pending: list[_Item] = []
        for it in items:
            own = mapping.link_identifier(it.remote, cfg.link_system)
            if own is not None:
                stored = self.ctx.repo.read(conn, res_type, own)
                if stored is not None and not stored.deleted:
                    it.local_id = own
                    continue
            pending.append(it)
        systems = cfg.match_systems(res_type)
        if not systems or search is None:
            return
        wanted: dict[tuple[str, str], list[_Item]] = {}
        for it in pending:
            for key in mapping.identifiers(it.remote, systems):
                wanted.setdefault(key, []).append(it)
        if not wanted:
            return
        keys = sorted(wanted)
        found_ids: set[str] = set()
        for i in range(0, len(keys), 100):
            chunk = keys[i : i + 100]
            query = urlencode([("identifier", ",".join(f"{s}|{v}" for s, v in chunk))])
            found_ids.update(rid for _, rid in search.find(conn, res_type, query))
        owners: dict[tuple[str, str], set[str]] = {}
        for lid in found_ids:
            stored = self.ctx.repo.read(conn, res_type, lid)
            if stored is None or stored.deleted or stored.data is None:
                continue
            for key in mapping.identifiers(stored.resource(), systems):
                owners.setdefault(key, set()).add(lid)
        for it in pending:
            candidates: set[str] = set()
            for key in mapping.identifiers(it.remote, systems):
                candidates |= owners.get(key, set())
            if len(candidates) == 1:
                it.local_id = next(iter(candidates))
            elif len(candidates) > 1:
                it.action = "dead"
                it.dead = DeadLetter("pull", res_type, "FHIRHUB-SYNC-AMBIGUOUS-MATCH",
                                     f"{len(candidates)} local {res_type} resources carry its identifiers; link one by hand "
                                     "or merge them, then replay", remote_id=it.remote_id, version=it.remote_version)

    def _write(self, resources: list[dict[str, Any]]) -> list[tuple[bool, int | None, tuple[int, Any] | None]]:
        """Dispatch the resources as one transaction (falling back to a batch to find the bad ones)."""
        entries = [{"fullUrl": f"{self.local_base}/{r['resourceType']}/{r['id']}", "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]
        resp = self._dispatch({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        if resp.status == 200 and resp.body is not None:
            return [(True, _entry_version(e), None) for e in orjson.loads(resp.body).get("entry") or []]
        if len(resources) == 1:
            return [(False, None, (resp.status, orjson.loads(resp.body) if resp.body else None))]
        resp = self._dispatch({"resourceType": "Bundle", "type": "batch", "entry": entries})
        out: list[tuple[bool, int | None, tuple[int, Any] | None]] = []
        for e in orjson.loads(resp.body or b"{}").get("entry") or []:
            r = e.get("response") or {}
            status = int(str(r.get("status", "500")).split()[0])
            out.append((True, _entry_version(e), None) if status < 300 else (False, None, (status, r.get("outcome"))))
        return out

    def _dispatch(self, bundle: dict[str, Any]) -> Any:
        return self.router.dispatch(FhirRequest("POST", "", body=bundle, base_url=self.local_base,
                                                origin=self.cfg.origin, principal=self.principal))

    def _apply_deletes(self, res_type: str, remote_ids: list[str]) -> None:
        with self.ctx.db.read() as conn:
            links = store.links_by_remote(conn, self.cfg.name, res_type, remote_ids)
        for link in links.values():
            self.router.dispatch(FhirRequest("DELETE", f"{res_type}/{link.local_id}", base_url=self.local_base,
                                             origin=self.cfg.origin, principal=self.principal))

    # ================================================================== notifications
    async def fetch_and_ingest(self, refs: Sequence[tuple[str, str]], *, policy: str | None = None,
                               force: bool = False) -> PullResult:
        """Fetch the named remote resources and write them at once (rest-hook notifications, replays)."""
        result = PullResult(",".join(sorted({t for t, _ in refs})) or "-")
        by_type: dict[str, list[str]] = {}
        for res_type, rid in refs:
            if res_type in self.cfg.pull_types or force:
                by_type.setdefault(res_type, []).append(rid)
        for res_type, ids in by_type.items():
            for i in range(0, len(ids), ID_CHUNK):
                chunk = sorted(set(ids[i : i + ID_CHUNK]))
                bundle = await self.remote.json("GET", res_type, params=[("_id", ",".join(chunk)), ("_count", str(len(chunk)))])
                resources = [e["resource"] for e in (bundle or {}).get("entry") or []
                             if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                             and e["resource"].get("resourceType") == res_type and e["resource"].get("id") in chunk]
                outcome = await self._ingest_page(res_type, resources, policy=policy, force=force)
                result.fetched += len(resources)
                self._tally(result, outcome)
                await self._db(self._finish_notified, res_type, outcome)
        return result

    def _finish_notified(self, res_type: str, outcome: _PageOutcome) -> None:
        with self.ctx.db.write() as conn:
            store.upsert_links(conn, self.cfg.name, outcome.links)
            store.save_state(conn, self.cfg.name, res_type, "pull", add_count=outcome.written)

    async def notified(self, refs: Sequence[tuple[str, str]]) -> list[PullResult]:
        """A rest-hook notification: fetch the named resources now; with none named, pull every type now."""
        if not refs:
            return await self.pull_all()
        async with self.lock:
            await self.ensure_discovered()
            return [await self.fetch_and_ingest(refs)]

    # ================================================================== push
    async def push(self) -> PushResult:
        async with self.lock:
            result = PushResult()
            if not self.cfg.push_types:
                return result
            try:
                await self.ensure_discovered()
            except RemoteError as exc:
                result.blocked = exc.code
                return result
            await self._replay(result)
            while True:
                rows, head = await self._db(self._read_outbox)
                done_to: int | None = None
                for row in rows:
                    result.examined += 1
                    if row.origin == self.cfg.origin or (row.interaction == "delete" and not self.cfg.push_deletes):
                        result.skipped += 1
                        done_to = row.pk
                        continue
                    if done_to is not None:
                        await self._db(self._advance, done_to)
                        done_to = None
                    try:
                        await self._push_row(row, result)
                    except RemoteError as exc:
                        if not exc.transient and exc.code != "FHIRHUB-SYNC-AUTH":
                            raise
                        result.blocked = exc.code
                        log.warning("connector %s: push waits: %s", self.cfg.name, exc.code)
                        await self._db(self._record, row.res_type, "push", error=f"{exc.code}: {exc.message}")
                        return result
                if rows:
                    done_to = rows[-1].pk
                if len(rows) < self.cfg.push_batch and head is not None:
                    done_to = max(done_to or 0, head)
                if done_to is not None:
                    await self._db(self._advance, done_to)
                if len(rows) < self.cfg.push_batch:
                    return result

    def _read_outbox(self) -> tuple[list[outbox.OutboxRow], int | None]:
        with self.ctx.db.write() as conn:  # write: a new consumer's cursor row is created here
            start = outbox.cursor(conn, self.cfg.consumer, start_at_head=self.cfg.push_from == "now")
            rows = outbox.read_after(conn, start, self.cfg.push_batch, frozenset(self.cfg.push_types))
            head = outbox.head(conn) if len(rows) < self.cfg.push_batch else None
        return rows, head

    def _advance(self, pk: int) -> None:
        with self.ctx.db.write() as conn:
            outbox.advance(conn, self.cfg.consumer, pk)

    async def _push_row(self, row: outbox.OutboxRow, result: PushResult) -> None:
        if row.interaction == "delete":
            await self._push_delete(row, result)
            return
        dl, link, pushed = await self._push_resource(row.res_type, row.res_id, result)
        await self._db(self._after_push, row.res_type, row.pk, link, dl)
        if dl is not None:
            result.dead += 1
        elif pushed:
            result.pushed += 1
        else:
            result.skipped += 1

    def _after_push(self, res_type: str, pk: int | None, link: Link | None, dl: DeadLetter | None,
                    resolved: int | None = None) -> None:
        with self.ctx.db.write() as conn:
            if link is not None:
                store.upsert_links(conn, self.cfg.name, [link])
            if dl is not None:
                store.add_dead_letter(conn, self.cfg.name, dl)
                store.save_state(conn, self.cfg.name, res_type, "push", error=f"{dl.code}: {dl.reason}")
            elif link is not None:
                store.save_state(conn, self.cfg.name, res_type, "push", add_count=1, success=True)
            if resolved is not None and dl is None:
                store.resolve_dead_letter(conn, resolved)
            if pk is not None:
                outbox.advance(conn, self.cfg.consumer, pk)

    def _local(self, res_type: str, local_id: str) -> tuple[Stored | None, Link | None]:
        with self.ctx.db.read() as conn:
            stored = self.ctx.repo.read(conn, res_type, local_id)
            link = store.links_by_local(conn, self.cfg.name, res_type, [local_id]).get(local_id)
        return stored, link

    def _local_refs(self, resource: dict[str, Any]) -> dict[tuple[str, str], str | None]:
        wanted: dict[str, set[str]] = {}
        for value in mapping.references(resource):
            ref = mapping.split_reference(value, "\x00")
            if ref is not None:
                wanted.setdefault(ref[0], set()).add(ref[1])
        out: dict[tuple[str, str], str | None] = {}
        with self.ctx.db.read() as conn:
            for res_type, ids in wanted.items():
                links = store.links_by_local(conn, self.cfg.name, res_type, ids)
                for lid in ids:
                    out[(res_type, lid)] = links[lid].remote_id if lid in links else None
        return out

    async def _push_resource(self, res_type: str, local_id: str, result: PushResult, *, policy: str | None = None,
                             force: bool = False, depth: int = 0) -> tuple[DeadLetter | None, Link | None, bool]:
        """Push the current local version; returns (dead letter, new link, pushed?)."""
        cfg = self.cfg
        policy = policy or cfg.conflict
        stored, link = await self._db(self._local, res_type, local_id)
        if stored is None or stored.deleted or stored.data is None:
            return None, None, False
        if link is not None and link.local_version == stored.version and not force:
            return None, None, False
        local = stored.resource()
        refs = await self._db(self._local_refs, local)
        for (ref_type, ref_id), remote_id in list(refs.items()):
            if remote_id is None and ref_type in cfg.push_types and depth == 0 and (ref_type, ref_id) != (res_type, local_id):
                dl, new_link, _ = await self._push_resource(ref_type, ref_id, result, depth=1)
                if new_link is not None:
                    await self._db(self._after_push, ref_type, None, new_link, dl)
                    refs[(ref_type, ref_id)] = new_link.remote_id
        unresolved = sorted(f"{t}/{i}" for (t, i), r in refs.items() if r is None)
        if unresolved:
            return DeadLetter("push", res_type, "FHIRHUB-SYNC-UNRESOLVED-REFERENCE",
                              f"{len(unresolved)} reference(s) to resources the remote does not have "
                              f"({', '.join(sorted({u.split('/')[0] for u in unresolved}))}); sync them, then replay",
                              local_id=local_id, version=str(stored.version),
                              remote_id=link.remote_id if link else None), None, False

        def to_remote_ref(value: str) -> str | None:
            if value.startswith(self.remote.base + "/"):
                return value[len(self.remote.base) + 1 :]
            ref = mapping.split_reference(value, "\x00")
            if ref is not None and refs.get(ref):
                return f"{ref[0]}/{refs[ref]}"
            return None

        link_system = cfg.link_system if cfg.link_identifier else None
        try:
            if link is None:
                body = mapping.to_remote(local, None, link_system, to_remote_ref)
                headers: dict[str, str] = {}
                match = mapping.identifiers(local, cfg.match_systems(res_type))
                if match:
                    headers["If-None-Exist"] = urlencode([("identifier", f"{match[0][0]}|{match[0][1]}")])
                elif link_system is not None:
                    headers["If-None-Exist"] = urlencode([("identifier", f"{link_system}|{local_id}")])
                resp = await self.remote.call("POST", res_type, body=body, headers=headers, entities=[f"{res_type}/{local_id}"])
                remote_id, remote_version = _written(resp, res_type)
                if remote_id is None:
                    raise RemoteError("FHIRHUB-SYNC-REMOTE-LOCATION", "the remote created the resource but did not say where")
                if resp.status_code == 201:
                    return None, Link(res_type, local_id, remote_id, remote_version, stored.version), True
                # 200: the remote already had it (matched on identifier): update it over its version
                link = Link(res_type, local_id, remote_id, remote_version, None)
            body = mapping.to_remote(local, link.remote_id, link_system, to_remote_ref)
            headers = {"If-Match": f'W/"{link.remote_version}"'} if link.remote_version else {}
            try:
                resp = await self.remote.call("PUT", f"{res_type}/{link.remote_id}", body=body, headers=headers,
                                              entities=[f"{res_type}/{local_id}"])
            except RemoteError as exc:
                if not exc.conflict:
                    raise
                result.conflicts += 1
                return await self._conflict(res_type, local_id, stored, link, body, exc, policy)
            _, remote_version = _written(resp, res_type)
            return None, Link(res_type, local_id, link.remote_id, remote_version, stored.version), True
        except RemoteError as exc:
            if exc.transient or exc.code == "FHIRHUB-SYNC-AUTH":
                raise
            return DeadLetter("push", res_type, exc.code, exc.message, local_id=local_id, version=str(stored.version),
                              remote_id=link.remote_id if link else None, http_status=exc.status, outcome=exc.outcome), None, False

    async def _conflict(self, res_type: str, local_id: str, stored: Stored, link: Link, body: dict[str, Any],
                        exc: RemoteError, policy: str) -> tuple[DeadLetter | None, Link | None, bool]:
        cfg = self.cfg
        resp = await self.remote.call("GET", f"{res_type}/{link.remote_id}", entities=[f"{res_type}/{local_id}"])
        remote = orjson.loads(resp.content)
        remote_version = (remote.get("meta") or {}).get("versionId") or mapping.etag_version(resp.headers.get("etag"))
        if mapping.same_content(body, remote, cfg.link_system):  # our earlier write landed; nothing to decide
            return None, Link(res_type, local_id, link.remote_id, remote_version, stored.version), False
        if policy == "remote-wins":
            outcome = await self._db(self._ingest, [remote], "remote-wins", True)
            new = next((x for x in outcome.links if x.local_id == local_id), None)
            return None, new, False
        if policy == "local-wins":
            headers = {"If-Match": f'W/"{remote_version}"'} if remote_version else {}
            resp = await self.remote.call("PUT", f"{res_type}/{link.remote_id}", body=body, headers=headers,
                                          entities=[f"{res_type}/{local_id}"])
            _, version = _written(resp, res_type)
            return None, Link(res_type, local_id, link.remote_id, version, stored.version), True
        return DeadLetter("push", res_type, "FHIRHUB-SYNC-CONFLICT",
                          f"the remote changed since the last sync (answered {exc.status}; policy manual)",
                          local_id=local_id, remote_id=link.remote_id, version=str(stored.version),
                          http_status=exc.status, outcome=exc.outcome), None, False

    async def _push_delete(self, row: outbox.OutboxRow, result: PushResult) -> None:
        _, link = await self._db(self._local, row.res_type, row.res_id)
        if link is not None:
            try:
                await self.remote.call("DELETE", f"{row.res_type}/{link.remote_id}", entities=[f"{row.res_type}/{row.res_id}"])
                result.pushed += 1
            except RemoteError as exc:
                if exc.transient:
                    raise
                await self._db(self._after_push, row.res_type, row.pk, None,
                               DeadLetter("push", row.res_type, exc.code, exc.message, local_id=row.res_id,
                                          remote_id=link.remote_id, http_status=exc.status, outcome=exc.outcome))
                result.dead += 1
                return
        await self._db(self._advance, row.pk)

    # ================================================================== replays
    async def _replay(self, result: PushResult) -> None:
        """Dead letters marked for replay (CLI or API), run again, with the resolution they were given."""
        todo = await self._db(self._replays)
        for dl in todo:
            assert dl.pk is not None
            if dl.direction == "push" and dl.local_id is not None:
                new_dl, link, pushed = await self._push_resource(dl.res_type, dl.local_id, result, policy=dl.resolve, force=True)
                await self._db(self._after_push, dl.res_type, None, link, new_dl, dl.pk)
                if pushed:
                    result.pushed += 1
            elif dl.direction == "pull" and dl.remote_id is not None:
                if dl.resolve == "local-wins" and dl.local_id is not None:
                    resp = await self.remote.call("GET", f"{dl.res_type}/{dl.remote_id}")
                    remote = orjson.loads(resp.content)
                    version = (remote.get("meta") or {}).get("versionId")
                    stored, _ = await self._db(self._local, dl.res_type, dl.local_id)
                    await self._db(self._after_push, dl.res_type, None,
                                   Link(dl.res_type, dl.local_id, dl.remote_id, version, None), None, None)
                    new_dl, link, _ = await self._push_resource(dl.res_type, dl.local_id, result, policy="local-wins", force=True)
                    await self._db(self._after_push, dl.res_type, None, link, new_dl, dl.pk)
                else:
                    await self.fetch_and_ingest([(dl.res_type, dl.remote_id)], policy="remote-wins", force=True)
                    await self._db(self._resolve, dl.pk)

    def _replays(self) -> list[DeadLetter]:
        with self.ctx.db.read() as conn:
            return store.dead_letters(conn, self.cfg.name, ("replay",))

    def _resolve(self, pk: int) -> None:
        with self.ctx.db.write() as conn:
            store.resolve_dead_letter(conn, pk)


def _stamp(resource: dict[str, Any]) -> tuple[int, str] | None:
    """``meta.lastUpdated`` as (microseconds, the remote's own text)."""
    stamp = (resource.get("meta") or {}).get("lastUpdated")
    if not isinstance(stamp, str):
        return None
    try:
        return parse_instant_micros(stamp, "meta.lastUpdated"), stamp
    except FhirError:  # a malformed stamp only costs the watermark
        return None


def _entry_version(entry: dict[str, Any]) -> int | None:
    r = entry.get("response") or {}
    parsed = mapping.parse_location(r.get("location"))
    version = parsed[2] if parsed else None
    version = version or mapping.etag_version(r.get("etag"))
    return int(version) if version and version.isdigit() else None


def _written(resp: Any, res_type: str) -> tuple[str | None, str | None]:
    """The remote id and version of a create/update answer: Location, ETag, or the body."""
    parsed = mapping.parse_location(resp.headers.get("location") or resp.headers.get("content-location"))
    remote_id = parsed[1] if parsed and parsed[0] == res_type else None
    version = mapping.etag_version(resp.headers.get("etag")) or (parsed[2] if parsed else None)
    if (remote_id is None or version is None) and resp.content:
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and body.get("resourceType") == res_type:
            remote_id = remote_id or body.get("id")
            version = version or (body.get("meta") or {}).get("versionId")
    return remote_id, version
