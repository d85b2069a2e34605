"""The workflow runner: executes ``wf_run`` rows step by step, effectively once.

A run is created by the dispatcher (one per workflow and triggering change). The runner takes
pending runs and runs whose wait has ended, at most ``FHIRHUB_WORKFLOW_CONCURRENCY`` at once and
one at a time per (workflow, resource). Each step:

1. is skipped when its ``if`` is false;
2. writes its ``wf_step`` row (status ``started``, its idempotency key) before any side effect;
3. applies its side effect idempotently — FHIR writes go through ``FhirRouter.dispatch`` as
   ``Principal.system("workflow:<name>")`` with ``origin="workflow:<name>"``: creates are
   conditional on an identifier holding the key; updates carry ``If-Match`` and mark the version
   they write with ``meta.source`` = the key, so a re-run finds its own write; sends create the
   Communication first (conditionally), send with the key, then complete it;
4. records ``succeeded`` and advances the run in one transaction.

A crash anywhere re-runs the step with the same key, which finds what it already did.
Waits persist the target time on the run (``waiting``/``wake_at``) and a timer; when a wait ends
the trigger is checked again on the resource as it is now: a run whose resource was deleted, no
longer matches the criteria or condition, or was superseded by a newer change, stops there.
A ``wait until`` whose target moved (an appointment moved) waits again for the new time.
Transient failures (a channel down, a 5xx) retry the step with backoff, durably, for
``FHIRHUB_WORKFLOW_RETRY_FOR``; then the run fails with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from sqlalchemy import insert, or_, select, update

from hub.interactions.request import FhirRequest, FhirResponse
from hub.security.scopes import Principal
from hub.subscriptions import fhirpath
from hub.subscriptions.clock import parse_duration, parse_instant, to_instant
from hub.subscriptions.delivery import backoff_seconds, backoff_strategy
from hub.subscriptions.spec import Change
from hub.subscriptions.tables import run_t, step_t
from hub.subscriptions.workflows import template
from hub.subscriptions.workflows.channels import ChannelError, EmailChannel, SmsChannel
from hub.subscriptions.workflows.connectors import MessageError, MessageSender, OutboundMessage
from hub.subscriptions.workflows.model import Step, Workflow

if TYPE_CHECKING:
    from hub.subscriptions.service import SubscriptionService

log = logging.getLogger("hub.workflows")
KEY_SYSTEM = "https://fhirhub.dev/workflow-key"
SOURCE_PREFIX = "urn:fhirhub:workflow-step:"
TERMINAL = ("succeeded", "failed", "cancelled", "skipped")


# ----------------------------------------------------------------------------- step outcomes
@dataclass
class Done:
    result: str | None = None
    skipped: bool = False


@dataclass
class Wait:
    at: int


@dataclass
class Retry:
    error: str


@dataclass
class Fail:
    error: str


@dataclass
class Stop:
    reason: str


Outcome = Done | Wait | Retry | Fail | Stop


@dataclass
class Run:
    pk: int
    run_id: str
    workflow: str
    res_type: str
    res_id: str
    version: int
    interaction: str
    status: str
    step: int
    attempts: int
    state: dict[str, Any]
    created_at: int
    wake_at: int | None


class WorkflowEngine:
    def __init__(self, service: SubscriptionService, *, timers: bool = True) -> None:
        self.service = service
        self.settings = service.settings
        self.clock = service.clock
        self.by_name = {wf.name: wf for wf in service.workflows}
        self.email = EmailChannel(self.settings)
        self.sms = SmsChannel(self.settings)
        self.senders: dict[str, MessageSender] = service.senders
        self.strategy = backoff_strategy(max(1.0, self.settings.subscription_retry_initial * 5), 3600.0)
        self.retry_for = int(self.settings.workflow_retry_for * 1_000_000)
        self._use_timers = timers
        self.timers: Any = None
        self._queue: set[int] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(max(1, self.settings.workflow_concurrency))
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._use_timers and self.by_name:
            from hub.subscriptions.workflows.timers import WaitTimers

            self.timers = WaitTimers(self.service.db, self._fired)
            self.timers.start()
            for pk, at in await self.service.offload(self._waiting):
                self.timers.schedule(pk, at)
        self._task = asyncio.create_task(self._loop_task(), name="workflow runner")
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.timers is not None:
            self.timers.stop()

    def notify(self, run_pks: list[int]) -> None:
        self._queue.update(run_pks)
        self._wake.set()

    def _fired(self, run_pk: int) -> None:
        loop = self._loop
        if loop is None:
            return

        def wake() -> None:
            self._queue.add(run_pk)
            self._wake.set()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake)

    async def _loop_task(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.subscription_poll)
            self._wake.clear()
            try:
                await self.run_due()
            except Exception as exc:  # noqa: BLE001 - the runner must survive; the next poll retries
                log.error("workflow runner failed: %s", type(exc).__name__)
                log.debug("workflow runner failure", exc_info=exc)

    # ------------------------------------------------------------------ picking runs
    def _waiting(self) -> list[tuple[int, int]]:
        r = run_t.c
        with self.service.db.read() as conn:
            return [(x.pk, x.wake_at) for x in conn.execute(select(r.pk, r.wake_at).where(r.status == "waiting", r.wake_at.is_not(None)))]

    def _due(self, extra: set[int]) -> list[Run]:
        r = run_t.c
        now = self.clock()
        cond = or_(r.status.in_(("pending", "running")), (r.status == "waiting") & (r.wake_at <= now))
        if extra:
            cond = or_(cond, r.pk.in_(sorted(extra)))
        with self.service.db.read() as conn:
            rows = conn.execute(select(run_t).where(cond).order_by(r.pk).limit(500)).all()
        out = []
        for x in rows:
            if x.status in TERMINAL or (x.status == "waiting" and (x.wake_at or 0) > now):
                continue
            out.append(Run(x.pk, x.run_id, x.workflow, x.res_type, x.res_id, x.version, x.interaction, x.status, x.step,
                           x.attempts, orjson.loads(x.state) if x.state else {}, x.created_at, x.wake_at))
        return out

    async def run_due(self) -> int:
        """Run every run that can run now; returns how many were taken (0: nothing to do)."""
        async with self._lock:
            extra, self._queue = self._queue, set()
            runs = await self.service.offload(self._due, extra)
            if not runs:
                return 0
            by_key: dict[tuple[str, str, str], list[Run]] = {}
            for run in runs:
                by_key.setdefault((run.workflow, run.res_type, run.res_id), []).append(run)

            async def chain(items: list[Run]) -> None:
                for run in items:
                    async with self._sem:
                        try:
                            await self.execute(run)
                        except Exception as exc:  # noqa: BLE001 - one broken run must not stop the others
                            log.error("workflow run %s failed unexpectedly: %s", run.run_id, type(exc).__name__)
                            log.debug("workflow run failure", exc_info=exc)
                            await self.service.offload(self._finish, run, "failed", error=f"internal error ({type(exc).__name__})")

            await asyncio.gather(*(chain(items) for items in by_key.values()))
            return len(runs)

    # ------------------------------------------------------------------ one run
    async def execute(self, run: Run) -> None:
        wf = self.by_name.get(run.workflow)
        if wf is None:
            await self.service.offload(self._finish, run, "cancelled", reason="the workflow is no longer configured")
            return
        if run.status == "pending":
            run.status = "running"
            await self.service.offload(self._set, run, status="running", started_at=self.clock())
        woken = run.status == "waiting"
        while run.step < len(wf.steps):
            step = wf.steps[run.step]
            env = await self.service.offload(self._env, wf, run)
            if env is None:
                await self.service.offload(self._finish, run, "cancelled", reason="the triggering resource was deleted")
                return
            if run.step == 0 and not run.state.get("started") and wf.when and not self._true(wf.when, env):
                await self.service.offload(self._finish, run, "skipped", reason="the workflow's 'when' is false")
                return
            run.state["started"] = True
            if woken:
                reason = await self.service.offload(self._recheck, wf, run, env)
                if reason:
                    await self.service.offload(self._finish, run, "cancelled", reason=reason)
                    return
                woken = False
            if run.state.get("skip_next") == step.index:
                await self.service.offload(self._step_done, run, step, Done("its time had passed", skipped=True))
                continue
            if step.when and not self._true(step.when, env):
                await self.service.offload(self._step_done, run, step, Done("condition false", skipped=True))
                continue
            outcome = await self._run_step(wf, run, step, env)
            if isinstance(outcome, Done):
                await self.service.offload(self._step_done, run, step, outcome)
            elif isinstance(outcome, Wait):
                await self.service.offload(self._set, run, status="waiting", wake_at=outcome.at, attempts=run.attempts)
                if self.timers is not None:
                    self.timers.schedule(run.pk, outcome.at)
                return
            elif isinstance(outcome, Retry):
                now = self.clock()
                first = run.state.setdefault("retry_since", now)
                if now - first >= self.retry_for:
                    await self.service.offload(self._step_failed, run, step, f"gave up retrying: {outcome.error}")
                    return
                run.attempts += 1
                at = now + int(backoff_seconds(self.strategy, run.attempts) * 1_000_000)
                log.info("workflow %s run %s step %s will retry: %s", wf.name, run.run_id, step.name, outcome.error)
                run.state["retrying"] = True
                await self.service.offload(self._set, run, status="waiting", wake_at=at, attempts=run.attempts,
                                        error=outcome.error[:1000])
                if self.timers is not None:
                    self.timers.schedule(run.pk, at)
                return
            elif isinstance(outcome, Fail):
                await self.service.offload(self._step_failed, run, step, outcome.error)
                return
            else:
                await self.service.offload(self._finish, run, "cancelled", reason=outcome.reason)
                return
        await self.service.offload(self._finish, run, "succeeded")

    def _true(self, expr: str, env: dict[str, Any]) -> bool:
        try:
            return fhirpath.is_true(expr, env)
        except fhirpath.FhirPathError:
            return False

    # ------------------------------------------------------------------ environment
    def _read(self, ref: str) -> dict[str, Any] | None:
        res_type, _, res_id = ref.partition("/")
        if not res_type or not res_id or "/" in res_id:
            return None
        with self.service.db.read() as conn:
            stored = self.service.hub.ctx.repo.read(conn, res_type, res_id)
        if stored is None or stored.deleted or stored.data is None:
            return None
        parsed: dict[str, Any] = orjson.loads(stored.data)
        return parsed

    def _vread(self, res_type: str, res_id: str, version: int) -> dict[str, Any] | None:
        if version < 1:
            return None
        data = self.service.version_data(res_type, res_id, version)
        return orjson.loads(data) if data else None

    def _env(self, wf: Workflow, run: Run) -> dict[str, Any] | None:
        """The variables of a step: the resource now, the triggering versions, context, let, vars."""
        current = self._read(f"{run.res_type}/{run.res_id}")
        trigger = self._vread(run.res_type, run.res_id, run.version)
        if current is None or trigger is None:
            return None
        env: dict[str, Any] = {
            "resource": current, "current": trigger, "previous": self._vread(run.res_type, run.res_id, run.version - 1),
            "trigger": trigger, "now": to_instant(self.clock()), "run": run.run_id, "workflow": wf.name,
            "vars": wf.vars, "steps": run.state.get("results", {}),
        }
        for item in wf.context:
            value: Any = None
            try:
                if item.read:
                    refs = [x for x in fhirpath.evaluate(item.read, env) if isinstance(x, str)]
                    value = self._read(refs[0]) if refs else None
                elif item.search:
                    query = template.render(item.search, env)
                    value = self._search(query) if isinstance(query, str) else None
            except fhirpath.FhirPathError:
                value = None
            env[item.name] = value
        for name, expr in wf.let.items():
            try:
                env[name] = fhirpath.evaluate(expr, env)
            except fhirpath.FhirPathError:
                env[name] = []
        return env

    def _search(self, query: str) -> list[dict[str, Any]]:
        """The matches of a search (first page, up to 100)."""
        res_type, _, qs = query.partition("?")
        params = urllib.parse.parse_qsl(qs, keep_blank_values=True) + [("_count", "100")]
        resp = self._dispatch(FhirRequest("GET", res_type, params=params), "workflow:context")
        if resp.status != 200 or resp.body is None:
            return []
        bundle = orjson.loads(resp.body)
        return [e["resource"] for e in bundle.get("entry", []) if (e.get("search") or {}).get("mode") == "match"]

    def _recheck(self, wf: Workflow, run: Run, env: dict[str, Any]) -> str | None:
        """After a wait: is the reason for this run still true of the resource as it is now?"""
        r = run_t.c
        with self.service.db.read() as conn:
            row = conn.execute(select(r.status).where(r.pk == run.pk)).first()
        if row is None or row.status in TERMINAL:
            return "superseded by a later change" if row is not None and row.status == "cancelled" else "run ended"
        current = env["resource"]
        if run.state.get("retrying"):
            run.state.pop("retrying", None)
            return None
        probe = Change(run.res_type, run.interaction, current, env["previous"], self.service.matcher)
        if not probe.matches(wf.trigger):
            return "the trigger no longer holds for the resource as it is now"
        return None

    # ------------------------------------------------------------------ steps
    async def _run_step(self, wf: Workflow, run: Run, step: Step, env: dict[str, Any]) -> Outcome:
        key = f"{run.run_id}:{step.index}"
        try:
            if step.kind == "wait":
                return self._wait(run, step, env)
            if step.kind == "create":
                return await self.service.offload(self._create, wf, run, step, env, key)
            if step.kind == "update":
                return await self.service.offload(self._update, wf, run, step, env, key)
            if step.kind == "send":
                return await self._send(wf, run, step, env, key)
            if step.kind == "webhook":
                return await self._webhook(wf, run, step, env, key)
            if step.kind == "message":
                return await self._message(wf, run, step, env, key)
        except fhirpath.FhirPathError as exc:
            return Fail(f"step {step.name}: {exc}")
        return Fail(f"unknown step kind {step.kind}")

    def _wait(self, run: Run, step: Step, env: dict[str, Any]) -> Outcome:
        spec = step.spec
        waits = run.state.setdefault("waits", {})
        now = self.clock()
        slot = str(step.index)
        if "duration" in spec:
            if slot not in waits:
                waits[slot] = now + int(parse_duration(spec["duration"]) * 1_000_000)
                return Wait(waits[slot])
            return Done() if waits[slot] <= now else Wait(waits[slot])
        values = [v for v in fhirpath.evaluate(spec["until"], env) if isinstance(v, str)]
        base = parse_instant(values[0]) if values else None
        if base is None:
            return Fail(f"step {step.name}: 'until' gave no date-time with a time zone")
        target = base + int(parse_duration(spec.get("offset", "0s")) * 1_000_000)
        planned = waits.get(slot)
        if planned is not None and planned != target and target > now:
            waits[slot] = target  # the time moved: wait for the new one
            return Wait(target)
        if planned is None:
            waits[slot] = target
            if target > now:
                return Wait(target)
        if target <= now and planned is None and spec.get("if_past", "run") == "skip":
            run.state["skip_next"] = step.index + 1
            return Done("the time had already passed: the next step is skipped", skipped=True)
        if target > now:
            return Wait(target)
        return Done(to_instant(target))

    def _dispatch(self, req: FhirRequest, who: str) -> FhirResponse:
        req.principal = Principal.system(who)
        req.origin = who
        req.base_url = self.service.base_url
        return self.service.hub.router.dispatch(req)

    def _create(self, wf: Workflow, run: Run, step: Step, env: dict[str, Any], key: str) -> Outcome:
        spec = step.spec
        self._begin_step(run, step, key)
        body = template.render(spec["resource"], env)
        if not isinstance(body, dict):
            return Fail(f"step {step.name}: the template did not give a resource")
        ident_value = template.render(spec["key"], env) if spec.get("key") else key
        ident_value = f"{wf.name}:{ident_value}" if spec.get("key") else ident_value
        ident = {"system": KEY_SYSTEM, "value": str(ident_value)}
        body["identifier"] = [*(body.get("identifier") or []), ident]
        res_type = str(body["resourceType"])
        resp = self._dispatch(FhirRequest(
            "POST", res_type, body=body,
            headers={"if-none-exist": f"identifier={urllib.parse.quote(KEY_SYSTEM, safe='')}|{urllib.parse.quote(ident['value'], safe='')}"},
        ), f"workflow:{wf.name}")
        if resp.status in (200, 201) and resp.stored is not None:
            ref = f"{resp.stored.res_type}/{resp.stored.res_id}"
            run.state.setdefault("results", {})[step.name] = ref
            return Done(ref + (" (existed)" if resp.status == 200 else ""))
        return self._failed_write(step, resp)

    def _failed_write(self, step: Step, resp: FhirResponse) -> Outcome:
        detail = ""
        if resp.body:
            with contextlib.suppress(Exception):
                oo = orjson.loads(resp.body)
                detail = "; ".join(str(i.get("diagnostics", ""))[:200] for i in oo.get("issue", [])[:3])
        if resp.status >= 500 or resp.status in (409, 412, 429):
            return Retry(f"step {step.name}: the write answered {resp.status}")
        return Fail(f"step {step.name}: the write answered {resp.status}: {detail}")

    def _update(self, wf: Workflow, run: Run, step: Step, env: dict[str, Any], key: str) -> Outcome:
        spec = step.spec
        target = fhirpath.evaluate(spec["target"], env)
        ref = None
        if target and isinstance(target[0], dict) and target[0].get("resourceType"):
            ref = f"{target[0]['resourceType']}/{target[0].get('id')}"
        elif target and isinstance(target[0], str):
            ref = target[0]
        if not ref:
            return Done("no target", skipped=True)
        res_type, _, res_id = ref.partition("/")
        detail = self._begin_step(run, step, key)
        source = SOURCE_PREFIX + key
        with self.service.db.read() as conn:
            stored = self.service.hub.ctx.repo.read(conn, res_type, res_id)
        if stored is None or stored.deleted or stored.data is None:
            return Done("the target no longer exists", skipped=True)
        base = detail.get("base")
        if base is not None and stored.version > base:
            mine = self._vread(res_type, res_id, base + 1)
            if mine is not None and (mine.get("meta") or {}).get("source") == source:
                return Done(f"{ref}/_history/{base + 1} (recovered)")
        current: dict[str, Any] = orjson.loads(stored.data)
        self._note_step(run, step, {"base": stored.version})
        changes = template.render(spec["set"], {**env, "target": current})
        merged = _merge(current, changes if isinstance(changes, dict) else {})
        meta = {k: v for k, v in (merged.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        meta["source"] = source
        merged["meta"] = meta
        resp = self._dispatch(FhirRequest("PUT", ref, body=merged, headers={"if-match": f'W/"{stored.version}"'}),
                              f"workflow:{wf.name}")
        if resp.status in (200, 201):
            version = resp.stored.version if resp.stored is not None else stored.version + 1
            run.state.setdefault("results", {})[step.name] = ref
            return Done(f"{ref}/_history/{version}")
        if resp.status == 412:
            return Retry(f"step {step.name}: {ref} changed while it was being updated")
        return self._failed_write(step, resp)

    async def _send(self, wf: Workflow, run: Run, step: Step, env: dict[str, Any], key: str) -> Outcome:
        spec = step.spec
        who = f"workflow:{wf.name}"
        recipients = fhirpath.evaluate(spec["to"], env)
        patient = recipients[0] if recipients and isinstance(recipients[0], dict) else None
        if patient is None and recipients and isinstance(recipients[0], str):
            patient = await self.service.offload(self._read, recipients[0])
        if patient is None:
            return Done("no recipient", skipped=True)
        await self.service.offload(self._begin_step, run, step, key)
        channel, address = choose_channel(patient, spec.get("channel", "preferred"), self.email.available, self.sms.available)
        lang = preferred_language(patient)
        texts = spec["text"]
        text_tpl = texts.get(lang) or texts.get(lang.split("-")[0]) or texts["en"]
        lang_used = lang if (texts.get(lang) or texts.get(lang.split("-")[0])) else "en"
        text = str(template.render(text_tpl, env))
        subjects = spec.get("subject") or {}
        subject = str(template.render(subjects.get(lang_used) or subjects.get("en") or "Message from your clinic", env))
        about = fhirpath.evaluate(spec["about"], env) if spec.get("about") else [env["resource"]]
        about_refs = [{"reference": f"{a['resourceType']}/{a['id']}"} for a in about if isinstance(a, dict) and a.get("id")]
        patient_ref = {"reference": f"Patient/{patient['id']}"}
        medium = {"email": ("EMAILWRIT", "email"), "sms": ("SMSWRIT", "SMS")}.get(channel or "")
        comm: dict[str, Any] = {
            "resourceType": "Communication", "language": lang_used, "status": "in-progress",
            "identifier": [{"system": KEY_SYSTEM, "value": key}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                      "code": spec.get("category", "notification")}]}],
            "subject": patient_ref, "recipient": [patient_ref], "payload": [{"contentString": text}],
        }
        if about_refs:
            comm["about"] = about_refs
        if medium:
            comm["medium"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
                                           "code": medium[0], "display": medium[1]}]}]
        if channel is None:
            comm["status"] = "not-done"
            comm["statusReason"] = {"text": "no e-mail address or SMS number the hub can use"}
        resp = await self.service.offload(self._dispatch, FhirRequest(
            "POST", "Communication", body=comm, headers={
                "if-none-exist": f"identifier={urllib.parse.quote(KEY_SYSTEM, safe='')}|{urllib.parse.quote(key, safe='')}",
                "prefer": "return=representation"}), who)
        if resp.status not in (200, 201) or resp.stored is None or resp.stored.data is None:
            return self._failed_write(step, resp)
        stored_comm = orjson.loads(resp.stored.data)
        comm_ref = f"Communication/{stored_comm.get('id')}"
        run.state.setdefault("results", {})[step.name] = comm_ref
        if stored_comm.get("status") in ("completed", "not-done"):
            return Done(f"{comm_ref} {stored_comm.get('status')}")
        assert channel is not None and address is not None
        try:
            if channel == "email":
                await self.email.send(address, subject, text, key)
            else:
                await self.sms.send(address, text, key, comm_ref)
        except ChannelError as exc:
            if exc.transient and self.clock() - run.state.get("retry_since", self.clock()) < self.retry_for:
                return Retry(f"step {step.name}: {exc}")
            await self.service.offload(self._complete_communication, comm_ref, "not-done", str(exc), who)
            return Done(f"{comm_ref} not-done: {exc}")
        await self.service.offload(self._complete_communication, comm_ref, "completed", None, who)
        return Done(f"{comm_ref} completed by {channel}")

    def _complete_communication(self, ref: str, status: str, reason: str | None, who: str) -> None:
        for _ in range(5):
            with self.service.db.read() as conn:
                stored = self.service.hub.ctx.repo.read(conn, "Communication", ref.split("/", 1)[1])
            if stored is None or stored.data is None:
                return
            comm = orjson.loads(stored.data)
            comm["status"] = status
            if status == "completed":
                comm["sent"] = to_instant(self.clock())
            if reason:
                comm["statusReason"] = {"text": reason[:500]}
            comm.pop("meta", None)
            resp = self._dispatch(FhirRequest("PUT", ref, body=comm, headers={"if-match": f'W/"{stored.version}"',
                                                                               "prefer": "return=minimal"}), who)
            if resp.status != 412:
                return

    async def _webhook(self, wf: Workflow, run: Run, step: Step, env: dict[str, Any], key: str) -> Outcome:
        spec = step.spec
        await self.service.offload(self._begin_step, run, step, key)
        url = str(template.render(spec["url"], env))
        body = template.render(spec["body"], env) if "body" in spec else env["resource"]
        headers = {k: str(template.render(v, env)) for k, v in (spec.get("headers") or {}).items()}
        headers["Idempotency-Key"] = key
        headers["X-Fhirhub-Workflow"] = wf.name
        try:
            async with httpx.AsyncClient(timeout=self.settings.subscription_timeout) as client:
                resp = await client.post(url, content=orjson.dumps(body), headers={**headers, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return Retry(f"step {step.name}: webhook unreachable ({type(exc).__name__})")
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            return Retry(f"step {step.name}: webhook answered {resp.status_code}")
        if resp.status_code >= 300:
            return Fail(f"step {step.name}: webhook answered {resp.status_code}")
        return Done(f"HTTP {resp.status_code}")

    async def _message(self, wf: Workflow, run: Run, step: Step, env: dict[str, Any], key: str) -> Outcome:
        spec = step.spec
        sender = self.senders.get(spec["connector"])
        if sender is None:
            return Fail(f"step {step.name}: no HL7v2 connector named {spec['connector']!r}")
        await self.service.offload(self._begin_step, run, step, key)
        found = fhirpath.evaluate(spec["resource"], env) if spec.get("resource") else [env["resource"]]
        resource = found[0] if found and isinstance(found[0], dict) else None
        if resource is None:
            return Done("no resource", skipped=True)
        related = {f"{v['resourceType']}/{v['id']}": v for v in env.values() if isinstance(v, dict) and v.get("resourceType") and v.get("id")}
        try:
            control_id = await sender.send(OutboundMessage(spec["connector"], spec.get("event"), resource, key, related))
        except MessageError as exc:
            return Retry(f"step {step.name}: {exc}") if exc.transient else Fail(f"step {step.name}: {exc}")
        return Done(f"MSH-10 {control_id}")

    # ------------------------------------------------------------------ bookkeeping
    def _begin_step(self, run: Run, step: Step, key: str) -> dict[str, Any]:
        """Record the step as started (once); returns the detail a previous attempt left."""
        s = step_t.c
        now = self.clock()
        with self.service.db.write() as conn:
            row = conn.execute(select(s.pk, s.attempts, s.detail).where(s.key == key)).first()
            if row is None:
                conn.execute(insert(step_t).values(run_pk=run.pk, idx=step.index, name=step.name, kind=step.kind, key=key,
                                                   status="started", attempts=1, started_at=now))
                return {}
            conn.execute(update(step_t).where(s.pk == row.pk).values(attempts=row.attempts + 1, status="started"))
            detail: dict[str, Any] = orjson.loads(row.detail) if row.detail else {}
            return detail

    def _note_step(self, run: Run, step: Step, detail: dict[str, Any]) -> None:
        s = step_t.c
        with self.service.db.write() as conn:
            conn.execute(update(step_t).where(s.run_pk == run.pk, s.idx == step.index).values(detail=orjson.dumps(detail)))

    def _step_done(self, run: Run, step: Step, outcome: Done) -> None:
        s, r = step_t.c, run_t.c
        now = self.clock()
        run.step += 1
        run.attempts = 0
        run.state.pop("retry_since", None)
        status = "skipped" if outcome.skipped else "succeeded"
        with self.service.db.write() as conn:
            if conn.execute(update(step_t).where(s.run_pk == run.pk, s.idx == step.index).values(
                    status=status, ended_at=now, result=(outcome.result or "")[:500] or None, error=None)).rowcount == 0:
                conn.execute(insert(step_t).values(run_pk=run.pk, idx=step.index, name=step.name, kind=step.kind,
                                                   key=f"{run.run_id}:{step.index}", status=status, attempts=1,
                                                   started_at=now, ended_at=now, result=(outcome.result or "")[:500] or None))
            conn.execute(update(run_t).where(r.pk == run.pk).values(step=run.step, attempts=0, status="running",
                                                                    wake_at=None, error=None, state=orjson.dumps(run.state),
                                                                    updated_at=now))
        run.status = "running"

    def _step_failed(self, run: Run, step: Step, error: str) -> None:
        s = step_t.c
        now = self.clock()
        with self.service.db.write() as conn:
            if conn.execute(update(step_t).where(s.run_pk == run.pk, s.idx == step.index).values(
                    status="failed", ended_at=now, error=error[:1000])).rowcount == 0:
                conn.execute(insert(step_t).values(run_pk=run.pk, idx=step.index, name=step.name, kind=step.kind,
                                                   key=f"{run.run_id}:{step.index}", status="failed", attempts=1,
                                                   started_at=now, ended_at=now, error=error[:1000]))
        log.warning("workflow %s run %s failed at step %s", run.workflow, run.run_id, step.name)
        self._finish(run, "failed", error=error)

    def _set(self, run: Run, **values: Any) -> None:
        r = run_t.c
        values.setdefault("updated_at", self.clock())
        values["state"] = orjson.dumps(run.state)
        with self.service.db.write() as conn:
            conn.execute(update(run_t).where(r.pk == run.pk, r.status.not_in(TERMINAL)).values(**values))
        run.status = values.get("status", run.status)

    def _finish(self, run: Run, status: str, *, reason: str | None = None, error: str | None = None) -> None:
        r = run_t.c
        now = self.clock()
        with self.service.db.write() as conn:
            conn.execute(update(run_t).where(r.pk == run.pk, r.status.not_in(TERMINAL)).values(
                status=status, reason=reason, error=(error or "")[:1000] or None, ended_at=now, updated_at=now,
                wake_at=None, state=orjson.dumps(run.state)))
        run.status = status


# ----------------------------------------------------------------------------- helpers
def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys of ``changes`` replace those of ``base``; a null removes one."""
    out = dict(base)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _rank(cp: dict[str, Any]) -> int:
    rank = cp.get("rank")
    return int(rank) if isinstance(rank, int) else 1_000


def choose_channel(patient: dict[str, Any], wanted: str, email_ok: bool, sms_ok: bool) -> tuple[str | None, str | None]:
    """(channel, address) from ``Patient.telecom``: the best-ranked usable email or SMS contact."""
    options: list[tuple[int, int, str, str]] = []
    for i, cp in enumerate(patient.get("telecom") or []):
        if not isinstance(cp, dict) or not cp.get("value") or (cp.get("period") or {}).get("end"):
            continue
        system, use = cp.get("system"), cp.get("use")
        if system == "email" and email_ok:
            options.append((_rank(cp), i, "email", str(cp["value"])))
        elif sms_ok and (system == "sms" or (system == "phone" and use == "mobile")):
            options.append((_rank(cp), i + (0 if system == "sms" else 100), "sms", str(cp["value"])))
    if wanted in ("email", "sms"):
        options = [o for o in options if o[2] == wanted]
    if not options:
        return None, None
    options.sort()
    return options[0][2], options[0][3]


def preferred_language(patient: dict[str, Any]) -> str:
    comms = [c for c in patient.get("communication") or [] if isinstance(c, dict)]
    comms.sort(key=lambda c: 0 if c.get("preferred") else 1)
    for c in comms:
        for coding in (c.get("language") or {}).get("coding") or []:
            code = coding.get("code")
            if isinstance(code, str) and code:
                return code.lower()
    return "en"
