"""The mapping interpreter: runs message/resource/fragment/datatype templates.

Pure: all state lives in one :class:`Run` per message.  Nothing is evaluated
from text; every operation is one of the closed vocabulary documented in
``mappings/README.md`` and checked by the JSON schema.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from hub.hl7.errors import E_REQUIRED_FIELD, E_SEGMENT_SEQUENCE, Hl7Error, mapping_error
from hub.hl7.mapping import Doc, MappingSet, parse_fieldref
from hub.hl7.parse import Message, Rep, Segment, component


def is_empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def as_rep(value: str) -> Rep:
    return ((value,),)


def rep_str(rep: Rep | None) -> str:
    return component(rep, 1, 1) if rep is not None else ""


# ----------------------------------------------------------------------- paths

_TOKEN = re.compile(r"^(_?[A-Za-z][A-Za-z0-9]*)(?:\[(\+|=|[0-9]+)\])?$")


@lru_cache(maxsize=4096)
def compile_target(path: str) -> tuple[tuple[str, str | None], ...]:
    out = []
    for part in path.split("."):
        m = _TOKEN.match(part)
        if not m:
            raise ValueError(f"bad target path {path!r}")
        out.append((m.group(1), m.group(2)))
    return tuple(out)


def assign(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at dotted ``path`` (``[+]`` appends, ``[=]`` last, ``[n]`` index)."""
    tokens = compile_target(path)
    cur: Any = obj
    last = len(tokens) - 1
    for i, (name, idx) in enumerate(tokens):
        if idx is None:
            if i == last:
                prev = cur.get(name)
                if isinstance(prev, list):  # lists accumulate: `identifier` twice adds both
                    if isinstance(value, list):
                        prev.extend(value)
                    else:
                        prev.append(value)
                elif isinstance(prev, dict) and isinstance(value, dict):
                    merged = dict(prev)
                    merged.update(value)
                    cur[name] = merged
                else:
                    cur[name] = value
            else:
                nxt = cur.get(name)
                if not isinstance(nxt, dict):
                    nxt = {}
                    cur[name] = nxt
                cur = nxt
            continue
        lst = cur.get(name)
        if not isinstance(lst, list):
            lst = []
            cur[name] = lst
        if idx == "+":
            if i == last:
                if isinstance(value, list):
                    lst.extend(value)
                else:
                    lst.append(value)
            else:
                nxt = {}
                lst.append(nxt)
                cur = nxt
        else:
            k = len(lst) - 1 if idx == "=" else int(idx)
            if k < 0:
                k = 0
            while len(lst) <= k:
                lst.append({})
            if i == last:
                if isinstance(lst[k], dict) and isinstance(value, dict):
                    lst[k].update(value)
                else:
                    lst[k] = value
            else:
                if not isinstance(lst[k], dict):
                    lst[k] = {}
                cur = lst[k]


def get_path(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def prune(value: Any) -> Any:
    """Drop empty strings/lists/dicts recursively."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            pv = prune(v)
            if not is_empty(pv):
                out[k] = pv
        return out
    if isinstance(value, list):
        items = [prune(v) for v in value]
        return [v for v in items if not is_empty(v)]
    if isinstance(value, str):
        return value.strip()  # FHIR codes forbid, and strings should not have, edge whitespace
    return value


# ------------------------------------------------------------------ references


@dataclass(eq=False)
class Ref:
    """A reference to a named step entry, resolved once all steps ran."""

    name: str
    scope: Scope
    seg: Segment | None = None
    display: str | None = None


@dataclass(eq=False)
class Scope:
    parent: Scope | None = None
    names: dict[str, list[Entry]] = field(default_factory=dict)

    def add(self, name: str, entry: Entry) -> None:
        """Register in this scope and every enclosing one (inner scopes win on lookup)."""
        s: Scope | None = self
        while s is not None:
            lst = s.names.setdefault(name, [])
            if entry not in lst:
                lst.append(entry)
            s = s.parent

    def find(self, name: str, seg: Segment | None = None) -> Entry | None:
        """The entry a step of that name built (from ``seg`` if it built one), innermost scope first."""
        s: Scope | None = self
        while s is not None:
            lst = s.names.get(name)
            if lst:
                if seg is not None:
                    for e in lst:
                        if e.segment is seg:
                            return e
                return lst[0]
            s = s.parent
        return None


@dataclass(eq=False)
class Entry:
    resource_type: str
    resource: dict[str, Any]
    full_url: str
    key: tuple[str, str] | None  # (system, value) of the business identifier
    request: str  # update | create
    template: str
    segment: Segment | None
    required: list[Any]
    name: str | None = None
    dedup: str | None = None

    def request_json(self) -> dict[str, Any]:
        if self.key is None:
            return {"method": "POST", "url": self.resource_type}
        system, value = self.key
        query = (
            f"identifier={quote(system, safe=':/')}|{quote(value, safe='')}"
            if system
            else (f"identifier={quote(value, safe='')}")
        )
        if self.request == "create":
            return {"method": "POST", "url": self.resource_type, "ifNoneExist": query}
        return {"method": "PUT", "url": f"{self.resource_type}?{query}"}


# ------------------------------------------------------------------------- run


@dataclass
class Ctx:
    run: Run
    seg: Segment | None
    rep: Rep | None
    scope: Scope
    segments: list[Segment]  # lookup scope for "first occurrence" (group or whole message)
    vars: dict[str, Any]
    doc: Doc | None = None
    where: str | None = None  # the absolute field reference being mapped (for error locations)

    def with_rep(self, rep: Rep | None, where: str | None = None) -> Ctx:
        return Ctx(
            self.run, self.seg, rep, self.scope, self.segments, self.vars, self.doc, where or self.where
        )


class Run:
    """State of one conversion: the message, settings, entries, warnings."""

    def __init__(
        self,
        ms: MappingSet,
        msg: Message,
        *,
        sender_systems: dict[str, str] | None,
        timezone: str | None,
    ) -> None:
        self.ms = ms
        self.msg = msg
        systems = dict(ms.settings.sender_systems)
        if sender_systems:
            systems.update(sender_systems)
        self.sender_systems = systems
        self.timezone = timezone or ms.settings.default_timezone
        self.entries: list[Entry] = []
        self._by_dedup: dict[str, Entry] = {}
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.sender = "/".join(x for x in (msg.sending_application, msg.sending_facility) if x) or "unknown"
        self.ns = uuid.UUID(ms.settings.uuid_namespace)
        self.event = msg.trigger
        self._side_memo: dict[tuple[Any, ...], Any] = {}
        self.memo: dict[str, Any] = {}  # per-message cache for functions (e.g. appointment times)

    # -------------------------------------------------------------- helpers
    def warn(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.warnings.append(text)

    def uuid_for(self, *parts: str) -> str:
        return "urn:uuid:" + str(uuid.uuid5(self.ns, "|".join([self.sender, *parts])))

    def synthetic_system(self, resource_type: str) -> str:
        return f"{self.ms.settings.key_system_prefix}{resource_type}"

    def synthetic_value(self, parts: list[str]) -> str:
        h = hashlib.sha256("\x1f".join([self.sender, *parts]).encode()).hexdigest()
        return h[:32]

    # ------------------------------------------------------------ segments
    def find_segment(self, ctx: Ctx, name: str) -> Segment | None:
        if ctx.seg is not None and ctx.seg.name == name:
            return ctx.seg
        for s in ctx.segments:
            if s.name == name:
                return s
        if ctx.segments is not self.msg.segments:
            return self.msg.first(name)
        return None

    def resolve_field(self, ctx: Ctx, ref_text: str, repeat: bool = False) -> list[Rep]:
        """Values addressed by a field reference, as Reps (components -> subcomponents)."""
        ref = parse_fieldref(ref_text)
        if ref.segment is None:
            reps: tuple[Rep, ...] = (ctx.rep,) if ctx.rep is not None else ()
            comp, sub = ref.comp, ref.sub
        else:
            seg = self.find_segment(ctx, ref.segment)
            if seg is None:
                return []
            reps = seg.field(ref.field)
            if not repeat:
                reps = reps[:1]
            comp, sub = ref.comp, ref.sub
        out: list[Rep] = []
        for rep in reps:
            if comp == 0:
                out.append(rep)
                continue
            if comp > len(rep):
                continue
            c = rep[comp - 1]
            if sub:
                v = c[sub - 1] if sub <= len(c) else ""
                if v:
                    out.append(((v,),))
            elif any(c):
                # a component used as a value: its subcomponents act as components
                out.append(tuple((s,) for s in c))
        return out

    # ----------------------------------------------------------- evaluation
    def cond(self, cond: dict[str, Any], ctx: Ctx) -> bool:
        for k, v in cond.items():
            if k == "present":
                refs = v if isinstance(v, list) else [v]
                return all(self._has(ctx, r) for r in refs)
            if k == "absent":
                refs = v if isinstance(v, list) else [v]
                return not any(self._has(ctx, r) for r in refs)
            if k == "segment":
                return self.find_segment(ctx, v) is not None
            if k == "equals":
                return self._str(ctx, v["field"]) == v["value"]
            if k == "in":
                return self._str(ctx, v["field"]) in v["values"]
            if k == "not_in":
                return self._str(ctx, v["field"]) not in v["values"]
            if k == "length_gt":
                return len(self._str(ctx, v["field"])) > int(v["value"])
            if k == "event_in":
                return self.event in v
            if k == "var_in":
                return ctx.vars.get(v["var"]) in v["values"]
            if k == "all":
                return all(self.cond(c, ctx) for c in v)
            if k == "any":
                return any(self.cond(c, ctx) for c in v)
            if k == "not":
                return not self.cond(v, ctx)
        return True

    def _has(self, ctx: Ctx, ref: str) -> bool:
        return any(any(any(s for s in c) for c in rep) for rep in self.resolve_field(ctx, ref))

    def _str(self, ctx: Ctx, ref: str) -> str:
        vals = self.resolve_field(ctx, ref)
        return rep_str(vals[0]) if vals else ""

    def eval(self, spec: dict[str, Any], ctx: Ctx) -> Any:
        when = spec.get("when")
        if when is not None and not self.cond(when, ctx):
            return None
        try:
            return self._eval(spec, ctx)
        except Hl7Error as exc:
            if spec.get("on_error") == "warn":
                self.warn(f"{exc.code} at {exc.location or '?'}: value dropped ({exc.hl7_code})")
                return None
            raise

    def _eval(self, spec: dict[str, Any], ctx: Ctx) -> Any:
        if "const" in spec:
            return spec["const"]
        if "object" in spec or "first" in spec or "list" in spec:
            if "field" not in spec:
                return self._compose(spec, ctx)
            # a composite per repetition of a field (the field is the current value inside)
            repeat = bool(spec.get("repeat"))
            found: list[Any] = []
            where = None if spec["field"].startswith(".") else spec["field"]
            for rep in self.resolve_field(ctx, spec["field"], repeat):
                v = self._compose(spec, ctx.with_rep(rep, where))
                if not is_empty(v):
                    found.append(v)
                    if not repeat:
                        break
            if repeat:
                return found or None
            return found[0] if found else None
        return self._simple(spec, ctx)

    def _compose(self, spec: dict[str, Any], ctx: Ctx) -> Any:
        if "object" in spec:
            out: dict[str, Any] = {}
            real = all("const" in sub for sub in spec["object"].values())  # all-constant objects stand
            for k, sub in spec["object"].items():
                v = self.eval(sub, ctx)
                if not is_empty(v):
                    out[k] = v
                    if "const" not in sub:
                        real = True
            if any(k not in out for k in spec.get("require") or ()):
                return None
            return out if real and out else None
        if "first" in spec:
            for sub in spec["first"]:
                v = self.eval(sub, ctx)
                if not is_empty(v):
                    return v
            return None
        items: list[Any] = []
        for sub in spec["list"]:
            v = self.eval(sub, ctx)
            if isinstance(v, list):
                items.extend(x for x in v if not is_empty(x))
            elif not is_empty(v):
                items.append(v)
        return items or None

    def _simple(self, spec: dict[str, Any], ctx: Ctx) -> Any:
        if "ref" in spec:
            return Ref(spec["ref"], ctx.scope, ctx.seg)
        if "var" in spec and "fn" not in spec and "map" not in spec:
            return ctx.vars.get(spec["var"])
        # value pipeline
        repeat = bool(spec.get("repeat"))
        if "field" in spec:
            inputs: list[Rep | None] = list(self.resolve_field(ctx, spec["field"], repeat))
            if not inputs:
                return None
        elif "var" in spec:
            v = ctx.vars.get(spec["var"])
            if is_empty(v):
                return None
            inputs = [as_rep(str(v))]
        else:
            inputs = [ctx.rep]
        where = spec.get("field")
        if where is not None and where.startswith("."):
            where = None
        if where is not None:
            ctx = ctx.with_rep(ctx.rep, where)
        results = []
        for rep in inputs:
            r = self._pipeline(spec, ctx, rep)
            if not is_empty(r):
                results.append(r)
            if not repeat and results:
                break
        if repeat:
            flat: list[Any] = []
            for r in results:
                if isinstance(r, list):
                    flat.extend(r)
                else:
                    flat.append(r)
            return flat or None
        return results[0] if results else None

    def _pipeline(self, spec: dict[str, Any], ctx: Ctx, rep: Rep | None) -> Any:
        from hub.hl7.functions import FUNCTIONS

        value: Any = rep
        sub = ctx.with_rep(rep)
        if "datatype" in spec:
            value = self.apply_datatype(spec["datatype"], sub)
        elif "resource" in spec:
            value = self.side_resource(spec["resource"], sub)
        if "fn" in spec:
            fn = FUNCTIONS[spec["fn"]]
            value = fn(self, sub, value, **dict(spec.get("args") or {}))
        if "map" in spec:
            fref = spec.get("field")
            label = f"{ctx.where or ''}{fref}" if fref and fref.startswith(".") else fref
            value = self.apply_map(spec["map"], value, spec.get("as", "code"), sub, label)
        if isinstance(value, tuple):  # an untouched Rep: its first leaf
            value = rep_str(value) or None
        return value

    # ------------------------------------------------------------- code maps
    def apply_map(self, name: str, value: Any, as_: str, ctx: Ctx, where: str | None) -> Any:
        cm = self.ms.codemaps[name]
        if isinstance(value, tuple):
            code = rep_str(value)
            rep: Rep | None = value
        elif isinstance(value, dict):  # a Coding or CodeableConcept built before
            coding = value.get("coding", [value])[0] if value.get("coding") or "code" in value else {}
            code = str(coding.get("code", ""))
            rep = None
        else:
            code = "" if value is None else str(value)
            rep = None
        if not code:
            return None
        hit = cm.lookup(code)
        if hit is None:
            if cm.unmapped == "error":
                loc = self.location_of(
                    ctx, ctx.where or (where if where and not where.startswith(".") else None)
                )
                raise mapping_error("CODE", f"code not in map {name}", location=loc, hl7_code="103")
            if as_ == "codeableconcept" and (
                cm.unmapped == "keep" or rep is not None or isinstance(value, dict)
            ):
                self.warn(f"{where or name}: code not in map {name}; original coding kept")
                return self._original_cc(value, rep, cm, code)
            if cm.unmapped == "keep" and as_ in ("code", "display"):
                return code
            if cm.unmapped == "keep" and as_ == "coding":
                return {"system": cm.source_system, "code": code} if cm.source_system else {"code": code}
            self.warn(f"{where or name}: code not in map {name}; element dropped")
            return None
        if as_ == "code" or as_ == "boolean":
            return hit["code"]
        if as_ == "display":
            return hit.get("display") or hit["code"]
        if as_ == "system":
            return hit.get("system")
        coding = {k: hit[k] for k in ("system", "code", "display") if k in hit}
        if as_ == "coding":
            return coding
        cc = self._original_cc(value, rep, cm, code)
        codings = cc.get("coding", [])
        if not any(
            c.get("system") == coding.get("system") and c.get("code") == coding.get("code") for c in codings
        ):
            codings = [coding, *codings]
        cc["coding"] = codings
        return cc

    def _original_cc(self, value: Any, rep: Rep | None, cm: Any, code: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return dict(value) if "coding" in value else {"coding": [value]}
        orig: dict[str, Any] = {"code": code}
        if cm.source_system:
            orig["system"] = cm.source_system
        display = component(rep, 2) if rep is not None else ""
        if display:
            orig["display"] = display
        cc: dict[str, Any] = {"coding": [orig]}
        text = component(rep, 9) if rep is not None else ""
        if text:
            cc["text"] = text
        return cc

    # ------------------------------------------------------------- templates
    def run_rules(self, rules: list[dict[str, Any]], ctx: Ctx, target: dict[str, Any]) -> None:
        for rule in rules:
            if self._absent(rule, ctx):
                continue
            value = self.eval(rule, ctx)
            if not is_empty(value):
                assign(target, rule["target"], value)

    def _absent(self, rule: dict[str, Any], ctx: Ctx) -> bool:
        """Fast path: a rule whose input field is empty yields nothing (same result, no evaluation)."""
        ref_text = rule.get("field")
        if ref_text is None:
            return False
        ref = parse_fieldref(ref_text)
        if ref.segment is None:
            rep = ctx.rep
            if rep is None:
                return True
            if ref.comp == 0:
                return False
            return ref.comp > len(rep) or not any(rep[ref.comp - 1])
        seg = self.find_segment(ctx, ref.segment)
        return seg is None or not seg.field(ref.field)

    def apply_datatype(self, name: str, ctx: Ctx) -> Any:
        if ctx.rep is None:
            return None
        doc = self.ms.datatypes[name]
        out: dict[str, Any] = {}
        self.run_rules(
            doc.data["rules"],
            Ctx(self, ctx.seg, ctx.rep, ctx.scope, ctx.segments, ctx.vars, doc, ctx.where),
            out,
        )
        return prune(out) or None

    def location_of(self, ctx: Ctx, where: str | None) -> str | None:
        if where and not where.startswith("."):
            ref = parse_fieldref(where)
            seg = self.find_segment(ctx, ref.segment) if ref.segment else ctx.seg
            occ = seg.occurrence if seg is not None else 1
            loc = f"{ref.segment}^{occ}^{ref.field}"
            if ref.comp:
                loc += f"^1^{ref.comp}"
            return loc
        if ctx.seg is not None:
            return f"{ctx.seg.name}^{ctx.seg.occurrence}"
        return None

    def compute_key(self, doc: Doc, ctx: Ctx, resource: dict[str, Any]) -> tuple[str, str] | None:
        for cand in doc.data.get("key") or []:
            if "when" in cand and not self.cond(cand["when"], ctx):
                continue
            if "identifier" in cand:
                ident = self.eval(cand["identifier"], ctx)
                if isinstance(ident, list):
                    ident = ident[0] if ident else None
                if isinstance(ident, dict) and ident.get("value"):
                    return (str(ident.get("system", "")), str(ident["value"]))
                continue
            if "synthetic" in cand:
                parts: list[str] = []
                for p in cand["synthetic"]:
                    v = self.eval(p, ctx)
                    parts.append(_flat_text(v))
                if any(parts):
                    rtype = doc.data["resourceType"]
                    system = self.synthetic_system(rtype)
                    value = self.synthetic_value([rtype, *parts])
                    ids = resource.setdefault("identifier", [])
                    if not any(i.get("system") == system for i in ids):
                        ids.append({"system": system, "value": value})
                    if cand.get("warn"):
                        self.warn(str(cand["warn"]))
                    return (system, value)
        return None

    def build_resource(
        self,
        doc: Doc,
        ctx: Ctx,
        extra_rules: list[dict[str, Any]] | None = None,
        name: str | None = None,
    ) -> Entry | None:
        rtype = doc.data["resourceType"]
        mark = len(self.entries)
        tctx = Ctx(self, ctx.seg, ctx.rep, ctx.scope, ctx.segments, ctx.vars, doc, ctx.where)
        resource: dict[str, Any] = {"resourceType": rtype}
        self.run_rules(doc.data["rules"], tctx, resource)
        if extra_rules:
            self.run_rules(extra_rules, tctx, resource)
        key = self.compute_key(doc, tctx, resource)
        if key is None:
            if doc.data.get("on_missing_key", "skip") == "error":
                raise mapping_error(
                    "KEY",
                    f"{rtype}: no business identifier to match on (template {doc.name})",
                    location=_fmt_loc(doc.data.get("missing_key_location"), ctx.seg),
                    hl7_code=E_REQUIRED_FIELD,
                )
            # no identity: drop it, and the side resources made while building it
            for e in self.entries[mark:]:
                self._by_dedup.pop(e.dedup or "", None)
            del self.entries[mark:]
            if doc.data.get("segment") and ctx.seg is not None and ctx.rep is None:
                self.warn(f"{ctx.seg.name}^{ctx.seg.occurrence}: no business identifier; {rtype} not created")
            return None
        dedup = f"{rtype}|{key[0]}|{key[1]}"
        existing = self._by_dedup.get(dedup)
        if existing is not None:
            # same business identity twice in one message: the first wins, gaps are filled
            for k, v in resource.items():
                existing.resource.setdefault(k, v)
            if name and existing.name is None:
                existing.name = name
            return existing
        entry = Entry(
            rtype,
            resource,
            self.uuid_for(rtype, key[0], key[1]),
            key,
            str(doc.data.get("request", "update")),
            doc.name,
            ctx.seg,
            list(doc.data.get("required") or []),
            name,
            dedup,
        )
        self._by_dedup[dedup] = entry
        self.entries.append(entry)
        return entry

    def side_resource(self, name: str, ctx: Ctx) -> Any:
        """A resource made from a value (XCN -> Practitioner ...); returns a Reference."""
        if ctx.rep is None:
            return None
        memo_key = (name, ctx.rep, ctx.seg.name if ctx.seg is not None else "")
        if memo_key in self._side_memo:
            hit = self._side_memo[memo_key]
            return dict(hit) if hit is not None else None
        out = self._side_resource(name, ctx)
        self._side_memo[memo_key] = out
        return dict(out) if out is not None else None

    def _side_resource(self, name: str, ctx: Ctx) -> Any:
        doc = self.ms.templates[name]
        entry = self.build_resource(doc, ctx)
        if entry is None:
            disp = (
                self.eval(
                    doc.data["display"], Ctx(self, ctx.seg, ctx.rep, ctx.scope, ctx.segments, ctx.vars, doc)
                )
                if ("display" in doc.data)
                else None
            )
            return {"display": disp} if disp else None
        ref: dict[str, Any] = {"reference": entry.full_url}
        if "display" in doc.data:
            disp = self.eval(
                doc.data["display"], Ctx(self, ctx.seg, ctx.rep, ctx.scope, ctx.segments, ctx.vars, doc)
            )
            if disp:
                ref["display"] = disp
        return ref

    # ------------------------------------------------------------------ steps
    def run_steps(
        self, steps: list[dict[str, Any]], scope: Scope, segments: list[Segment], vars_: dict[str, Any]
    ) -> None:
        for step in steps:
            if "group" in step:
                for chunk in _groups(segments, step["group"]):
                    child = Scope(scope)
                    gctx = Ctx(self, chunk[0], None, child, chunk, vars_)
                    if "when" in step and not self.cond(step["when"], gctx):
                        continue
                    self.run_steps(step["steps"], child, chunk, vars_)
                continue
            tmpl = self.ms.templates[step["template"]]
            seg_name = step.get("each") or step.get("segment") or tmpl.data.get("segment")
            step_vars = {**vars_, **dict(step.get("vars") or {})}
            if step.get("each"):
                targets = [s for s in segments if s.name == seg_name]
            else:
                first = next((s for s in segments if s.name == seg_name), None)
                targets = [first] if first is not None else []
            if not targets:
                if step.get("required"):
                    raise mapping_error(
                        "SEGMENT",
                        f"required segment {seg_name} is missing",
                        location=f"{seg_name}^1",
                        hl7_code=E_SEGMENT_SEQUENCE,
                    )
                continue
            for seg in targets:
                ctx = Ctx(self, seg, None, scope, segments, step_vars, tmpl)
                if "when" in step and not self.cond(step["when"], ctx):
                    continue
                if tmpl.kind == "fragment":
                    host = scope.find(step["into"], seg)
                    if host is None:
                        continue
                    part: dict[str, Any] = {}
                    self.run_rules(tmpl.data["rules"], ctx, part)
                    if step.get("set"):
                        self.run_rules(step["set"], ctx, part)
                    part = prune(part)
                    if not part:
                        continue
                    need = tmpl.data.get("require_any")
                    if need and all(is_empty(get_path(part, p)) for p in need):
                        self.warn(f"{seg.name}^{seg.occurrence}: {tmpl.name} has none of {', '.join(need)}; not added")
                        continue
                    self._check_required(tmpl.data.get("required") or [], part, seg)
                    if "target" in tmpl.data:
                        assign(host.resource, tmpl.data["target"], part)
                    else:
                        for k, v in part.items():
                            assign(host.resource, k, v) if not isinstance(v, list) else assign(
                                host.resource, f"{k}[+]", v
                            )
                    continue
                entry = self.build_resource(tmpl, ctx, step.get("set"), step.get("name"))
                if entry is not None and step.get("name"):
                    scope.add(step["name"], entry)

    # ------------------------------------------------------------- finishing
    def finish(self) -> None:
        for entry in self.entries:
            entry.resource = prune(_resolve_refs(entry.resource))
        for entry in self.entries:
            self._check_required(entry.required, entry.resource, entry.segment)

    def _check_required(self, checks: list[Any], resource: dict[str, Any], seg: Segment | None) -> None:
        for chk in checks:
            if is_empty(get_path(resource, chk["path"])):
                raise mapping_error(
                    "REQUIRED",
                    chk.get("message")
                    or f"{resource.get('resourceType', 'element')}.{chk['path']} cannot be filled",
                    location=_fmt_loc(chk["location"], seg),
                    hl7_code=str(chk.get("code", E_REQUIRED_FIELD)),
                )


def _fmt_loc(loc: str | None, seg: Segment | None) -> str | None:
    if not loc:
        return None
    return loc.replace("{seq}", str(seg.occurrence if seg is not None else 1))


def _flat_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict):
        return "^".join(_flat_text(x) for x in v.values())
    if isinstance(v, list):
        return "~".join(_flat_text(x) for x in v)
    if isinstance(v, tuple):
        return "^".join("&".join(c) for c in v)
    return str(v)


def _resolve_refs(value: Any) -> Any:
    if isinstance(value, Ref):
        entry = value.scope.find(value.name, value.seg)
        if entry is None:
            return None
        out = {"reference": entry.full_url}
        if value.display:
            out["display"] = value.display
        return out
    if isinstance(value, dict):
        return {k: _resolve_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v) for v in value]
    return value


def _groups(segments: list[Segment], start: str) -> list[list[Segment]]:
    """Split segments into groups, each starting at a ``start`` segment."""
    groups: list[list[Segment]] = []
    for s in segments:
        if s.name == start:
            groups.append([s])
        elif groups:
            groups[-1].append(s)
    return groups
