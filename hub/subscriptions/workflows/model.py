"""A workflow as loaded from ``workflows/*.yaml``: a trigger and its steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.subscriptions.spec import Trigger

STEP_KINDS = ("wait", "create", "update", "send", "webhook", "message")


@dataclass(frozen=True)
class Step:
    index: int
    name: str
    kind: str  # wait | create | update | send | webhook | message
    spec: dict[str, Any]  # the step's mapping (templates unrendered)
    when: str | None = None  # FHIRPath: run the step only when true
    line: int | None = None


@dataclass(frozen=True)
class ContextItem:
    name: str
    read: str | None = None  # FHIRPath giving a reference ("Patient/1") to read
    search: str | None = None  # templated search ("Task?identifier=...") giving its matches (a list)


@dataclass
class Workflow:
    name: str
    path: str
    description: str
    trigger: Trigger
    steps: list[Step]
    context: list[ContextItem] = field(default_factory=list)
    let: dict[str, str] = field(default_factory=dict)  # name -> FHIRPath, evaluated in order
    vars: dict[str, Any] = field(default_factory=dict)  # constants: %vars.name
    when: str | None = None  # FHIRPath guard evaluated when the run starts
    supersede: bool = True  # a newer triggering change cancels this workflow's older waiting runs
