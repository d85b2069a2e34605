"""Loading ``workflows/*.yaml``: YAML with line numbers, a JSON Schema, then the expressions.

Every error names the file and the line (:class:`WorkflowFileError`), and stops the hub from
starting: a workflow that silently does not run is worse than a hub that says why it will not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema

from hub.hl7.errors import MappingFileError
from hub.hl7.yamlload import line_of, load_yaml
from hub.subscriptions import fhirpath
from hub.subscriptions.clock import parse_duration
from hub.subscriptions.spec import INTERACTIONS, Matcher, SpecError, Trigger
from hub.subscriptions.workflows.model import STEP_KINDS, ContextItem, Step, Workflow
from hub.subscriptions.workflows.template import expressions

NAME = r"^[a-z][a-z0-9-]{0,63}$"
_lang_text = {"type": "object", "patternProperties": {"^[a-z]{2}(-[A-Za-z]{2})?$": {"type": "string"}},
              "additionalProperties": False, "minProperties": 1}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["trigger", "steps"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": NAME},
        "description": {"type": "string"},
        "enabled": {"type": "boolean"},
        "supersede": {"type": "boolean"},
        "trigger": {
            "type": "object", "required": ["resource"], "additionalProperties": False,
            "properties": {
                "resource": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
                "interactions": {"type": "array", "items": {"enum": list(INTERACTIONS)}, "minItems": 1, "uniqueItems": True},
                "criteria": {"type": "string"},
                "condition": {"type": "string"},
            },
        },
        "context": {"type": "object", "propertyNames": {"pattern": "^[a-z][a-zA-Z0-9_]*$"},
                    "additionalProperties": {"oneOf": [
                        {"type": "string"},
                        {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
                         "properties": {"read": {"type": "string"}, "search": {"type": "string"}}},
                    ]}},
        "let": {"type": "object", "propertyNames": {"pattern": "^[a-z][a-zA-Z0-9_]*$"}, "additionalProperties": {"type": "string"}},
        "vars": {"type": "object"},
        "when": {"type": "string"},
        "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"}},
    },
    "$defs": {
        "step": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "minProperties": 2, "maxProperties": 3,
            "properties": {
                "name": {"type": "string", "pattern": NAME},
                "if": {"type": "string"},
                "wait": {"type": "object", "additionalProperties": False, "properties": {
                    "duration": {"type": "string"}, "until": {"type": "string"}, "offset": {"type": "string"},
                    "if_past": {"enum": ["skip", "run"]}}},
                "create": {"type": "object", "required": ["resource"], "additionalProperties": False, "properties": {
                    "resource": {"type": "object", "required": ["resourceType"]}, "key": {"type": "string"}}},
                "update": {"type": "object", "required": ["target", "set"], "additionalProperties": False, "properties": {
                    "target": {"type": "string"}, "set": {"type": "object"}}},
                "send": {"type": "object", "required": ["to", "text"], "additionalProperties": False, "properties": {
                    "to": {"type": "string"}, "channel": {"enum": ["preferred", "email", "sms"]},
                    "category": {"enum": ["alert", "notification", "reminder", "instruction"]},
                    "subject": _lang_text, "text": _lang_text, "about": {"type": "string"}}},
                "webhook": {"type": "object", "required": ["url"], "additionalProperties": False, "properties": {
                    "url": {"type": "string"}, "body": {}, "headers": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "message": {"type": "object", "required": ["connector"], "additionalProperties": False, "properties": {
                    "connector": {"type": "string"}, "event": {"type": "string"}, "resource": {"type": "string"}}},
            },
        },
    },
}


class WorkflowFileError(MappingFileError):
    """A workflow file is broken. ``str()`` is ``path:line: message``."""


def load_workflows(folder: Path, matcher: Matcher | None = None, connectors: set[str] | None = None) -> list[Workflow]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out: list[Workflow] = []
    names: dict[str, str] = {}
    for path in sorted(folder.glob("*.yaml")):
        wf = load_file(path, matcher, connectors)
        if wf is None:
            continue
        if wf.name in names:
            raise WorkflowFileError(str(path), 1, f"workflow name {wf.name!r} is also used by {names[wf.name]}")
        names[wf.name] = str(path)
        out.append(wf)
    return out


def load_file(path: Path, matcher: Matcher | None = None, connectors: set[str] | None = None) -> Workflow | None:
    where = str(path)
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"), where)
    except MappingFileError as exc:
        raise WorkflowFileError(where, exc.line, exc.detail) from None
    if not isinstance(doc, dict):
        raise WorkflowFileError(where, 1, "a workflow file is a mapping with trigger and steps")
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        loc = "/".join(str(p) for p in err.absolute_path) or "(top)"
        raise WorkflowFileError(where, line_of(doc, list(err.absolute_path)), f"{loc}: {_short(err)}")
    if doc.get("enabled") is False:
        return None

    def fail(at: list[Any], message: str) -> WorkflowFileError:
        return WorkflowFileError(where, line_of(doc, at), message)

    def check_expr(text: str, at: list[Any]) -> None:
        try:
            fhirpath.compile_expression(text)
        except fhirpath.FhirPathError as exc:
            raise fail(at, f"{exc}: {text[:120]}") from None

    def check_templates(value: Any, at: list[Any]) -> None:
        if isinstance(value, str):
            for expr in expressions(value):
                check_expr(expr, at)
        elif isinstance(value, dict):
            for k, v in value.items():
                check_templates(v, [*at, k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check_templates(v, [*at, i])

    t = doc["trigger"]
    criteria = t.get("criteria") or None
    if criteria and matcher is not None:
        try:
            matcher.check(t["resource"], criteria)
        except SpecError as exc:
            raise fail(["trigger", "criteria"], str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - FhirError from the search parser
            raise fail(["trigger", "criteria"], f"criteria: {getattr(exc, 'message', type(exc).__name__)}") from None
    if t.get("condition"):
        check_expr(t["condition"], ["trigger", "condition"])
    trigger = Trigger(t["resource"], tuple(t.get("interactions") or ("create", "update")), criteria, None, False,
                      t.get("condition") or None)
    context = []
    for name, item in (doc.get("context") or {}).items():
        if isinstance(item, str):
            item = {"read": item}
        if "read" in item:
            check_expr(item["read"], ["context", name])
            context.append(ContextItem(name, read=item["read"]))
        else:
            check_templates(item["search"], ["context", name])
            context.append(ContextItem(name, search=item["search"]))
    lets = dict(doc.get("let") or {})
    for name, expr in lets.items():
        check_expr(expr, ["let", name])
    if doc.get("when"):
        check_expr(doc["when"], ["when"])
    steps = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["steps"]):
        at = ["steps", i]
        kinds = [k for k in STEP_KINDS if k in raw]
        if len(kinds) != 1:
            raise fail(at, f"a step has exactly one of {', '.join(STEP_KINDS)}")
        kind = kinds[0]
        if raw["name"] in seen:
            raise fail([*at, "name"], f"step name {raw['name']!r} is used twice")
        seen.add(raw["name"])
        body = dict(raw[kind])
        if raw.get("if"):
            check_expr(raw["if"], [*at, "if"])
        if kind == "wait":
            if ("duration" in body) == ("until" in body):
                raise fail([*at, "wait"], "a wait has either duration or until")
            for key in ("duration", "offset"):
                if key in body:
                    try:
                        parse_duration(body[key])
                    except ValueError as exc:
                        raise fail([*at, "wait", key], str(exc)) from None
            if "until" in body:
                check_expr(body["until"], [*at, "wait", "until"])
        elif kind == "update":
            check_expr(body["target"], [*at, "update", "target"])
            check_templates(body["set"], [*at, "update", "set"])
        elif kind == "send":
            check_expr(body["to"], [*at, "send", "to"])
            if body.get("about"):
                check_expr(body["about"], [*at, "send", "about"])
            check_templates(body.get("subject") or {}, [*at, "send", "subject"])
            check_templates(body["text"], [*at, "send", "text"])
            if "en" not in body["text"]:
                raise fail([*at, "send", "text"], "text needs an English (en) version, the fallback language")
        elif kind == "message":
            if connectors is not None and body["connector"] not in connectors:
                raise fail([*at, "message", "connector"], f"no HL7v2 connector named {body['connector']!r} is configured")
            if body.get("resource"):
                check_expr(body["resource"], [*at, "message", "resource"])
        else:
            check_templates(body, [*at, kind])
        steps.append(Step(i, raw["name"], kind, body, raw.get("if"), line_of(doc, at)))
    name = doc.get("name") or path.stem
    if not re.match(NAME, name):
        raise fail(["name"], f"workflow name {name!r} must be lower-case letters, digits and dashes")
    return Workflow(name, where, str(doc.get("description") or ""), trigger, steps, context, lets,
                    dict(doc.get("vars") or {}), doc.get("when") or None, bool(doc.get("supersede", True)))


def _short(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key")
    return err.message[:300]
