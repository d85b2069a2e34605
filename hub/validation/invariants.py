"""FHIR invariants (ElementDefinition.constraint, severity error).

Each expression is parsed once by fhirpathpy (lazily, the first time a node
it applies to is seen) and cached on the :class:`InvariantEngine` of a
validator. It is then evaluated by :mod:`hub.validation.fastpath` when the
expression is within that evaluator's subset (most are), else by fhirpathpy.

Handled natively instead of through FHIRPath (see validator.py), because they
need functions fhirpathpy lacks or are cheaper in Python:

* ``ele-1`` (``hasValue() or children()...``): empty objects and primitives
  with neither a value nor an extension;
* ``ext-1``: extension xor value[x];
* ``ref-1``: ``#id`` references resolve to a contained resource;
* ``dom-2``, ``dom-3`` (uses ``trace(name, projection)``), ``dom-4``, ``dom-5``;
* ``txt-1``, ``txt-2`` (``htmlChecks()``): see :mod:`hub.validation.xhtml`.

Functions fhirpathpy lacks that are supplied here: ``hasValue()`` and
``resolve()`` (resolves ``#id`` to a contained resource and Bundle entry
references to the entry's resource; anything else resolves to nothing, so
ctm-1's ``resolve().iif(empty(), true, ...)`` passes). ``htmlChecks()``
(txt-1, txt-2) and two-argument ``trace()`` (dom-3) are the other functions
it lacks; those constraints are implemented natively (above). So no R4 core
error-severity constraint is skipped: of the 202 evaluated through FHIRPath,
186 run on the fast path and 16 on fhirpathpy (cnt-3, csd-1, ctm-1, eld-2,
eld-3, ig-1, ig-2, md-1, que-2, ras-1, rng-2, sdf-23, sdf-8, sdf-8a, sdf-9,
tim-9: quantities, descendants(), resolve(), %context ...). An expression that
fails to parse, or raises while evaluating particular data, is not judged
(never reported as a failure).

Three R4 expressions that are wrong as published are corrected (que-7,
que-12, tim-9; see :mod:`hub.validation.errata`). Warnings (``severity:
warning``, e.g. dom-6) are not evaluated.

Only a result of exactly ``[false]`` fails a constraint; an empty result
(indeterminate, e.g. comparing dates of different precision) passes.

Cost: fhirpathpy takes ~30-90 µs per evaluation, the fast path 1-5 µs. An
expression that only navigates from its context node (no ``%`` variables,
``$this``, ``descendants()``/``children()``/``resolve()``) is in addition
evaluated on an empty node once per type and that result reused for every node
that has none of the properties the expression mentions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse

from hub.validation.fastpath import Fallback, Unsupported, compile_fast
from hub.validation.model import Constraint, Model

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMPURE = re.compile(r"%|\$this|descendants\(|children\(|resolve\(|repeat\(")

Fast = Callable[[list[Any], tuple[Any, Any]], list[Any]]


@dataclass(slots=True, eq=False)
class _Compiled:
    fn: Callable[..., Any] | None  # fhirpathpy
    tree: dict[str, Any] | None
    mentions: frozenset[str]
    pure: bool
    fast: dict[str, Fast | None] = field(default_factory=dict)  # per context type


Resolver = Callable[[Any], list[Any]]


def _no_trace(*args: Any) -> None:
    """trace() must not print resource content."""


class InvariantEngine:
    def __init__(self, model: Model) -> None:
        self._model = model
        self._fp_model = models["r4"]
        self._compiled: dict[str, _Compiled] = {}
        self._empty: dict[tuple[str, str], bool | None] = {}
        # per-evaluation resolver for resolve(); a ContextVar keeps concurrent validations apart
        self._resolver: ContextVar[Resolver | None] = ContextVar("fhirhub_resolver", default=None)
        self._options = {
            "userInvocationTable": {
                "hasValue": {"fn": self._has_value, "arity": {0: []}},
                "resolve": {"fn": self._resolve, "arity": {0: []}},
            },
            "traceFn": _no_trace,
        }
        # set by tests: evaluate both ways and record (key, fast, slow) disagreements
        self.audit: list[tuple[str, bool | None, bool | None]] | None = None

    @staticmethod
    def _has_value(inputs: list[Any]) -> list[bool]:
        return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]

    def _resolve(self, inputs: list[Any]) -> list[Any]:
        resolver = self._resolver.get()
        if resolver is None:
            return []
        out: list[Any] = []
        for item in inputs:
            out.extend(resolver(item))
        return out

    def _compile(self, expression: str) -> _Compiled:
        hit = self._compiled.get(expression)
        if hit is not None:
            return hit
        tree: dict[str, Any] | None
        try:
            tree = parse(expression)
            fn: Callable[..., Any] | None = fhirpathpy.compile(expression, self._fp_model, self._options)
        except Exception:  # an expression fhirpathpy cannot parse: skipped
            tree, fn = None, None
        stripped = _STRING_LITERAL.sub("''", expression)
        hit = _Compiled(
            fn=fn,
            tree=tree,
            mentions=frozenset(_IDENT.findall(stripped)),
            pure=_IMPURE.search(stripped) is None,
        )
        self._compiled[expression] = hit
        return hit

    def _fast(self, comp: _Compiled, fp_type: str) -> Fast | None:
        if fp_type in comp.fast:
            return comp.fast[fp_type]
        fast: Fast | None = None
        td = self._model.types.get(fp_type) or self._model.backbones.get(fp_type)
        if td is not None and comp.tree is not None:
            try:
                fast = compile_fast(comp.tree, td, self._model.types)
            except Unsupported:
                fast = None
        comp.fast[fp_type] = fast
        return fast

    def _slow(self, comp: _Compiled, node: Any, fp_type: str, variables: dict[str, Any]) -> bool | None:
        assert comp.fn is not None
        try:
            result = comp.fn(ResourceNode.create_node(node, fp_type), variables)
        except Exception:  # fhirpathpy could not evaluate this data: not judged
            return None
        return result != [False]

    def _evaluate(
        self, c: Constraint, comp: _Compiled, node: Any, resource: Any, root: Any, resolver: Resolver | None
    ) -> bool | None:
        fast = self._fast(comp, c.source_type)
        if fast is not None:
            try:
                result = fast([node], (resource, root)) != [False]
            except Fallback:
                pass
            else:
                if self.audit is not None:
                    slow = self._slow_with(comp, node, c, resource, root, resolver)
                    if slow is not None and slow != result:
                        self.audit.append((c.key, result, slow))
                return result
        return self._slow_with(comp, node, c, resource, root, resolver)

    def _slow_with(
        self, comp: _Compiled, node: Any, c: Constraint, resource: Any, root: Any, resolver: Resolver | None
    ) -> bool | None:
        token = self._resolver.set(resolver)
        try:
            return self._slow(comp, node, c.source_type, {"resource": resource, "rootResource": root})
        finally:
            self._resolver.reset(token)

    def check(
        self,
        c: Constraint,
        node: Any,
        resource: Any,
        root: Any,
        resolver: Resolver | None,
    ) -> bool | None:
        """False when the constraint fails on ``node``; True/None otherwise."""
        comp = self._compile(c.expression)
        if comp.fn is None:
            return None
        if comp.pure and isinstance(node, dict):
            mentions = comp.mentions
            relevant = False
            for key in node:
                k = key[1:] if key[0] == "_" else key
                if k in mentions:
                    relevant = True
                    break
                # choice elements: valueQuantity is reached through `value`
                for i in range(1, len(k)):
                    if k[i].isupper():
                        relevant = k[:i] in mentions
                        break
                if relevant:
                    break
            if not relevant:
                ek = (c.expression, c.source_type)
                if ek not in self._empty:
                    self._empty[ek] = self._evaluate(c, comp, {}, resource, root, None)
                return self._empty[ek]
        return self._evaluate(c, comp, node, resource, root, resolver)
