"""FHIRPath for trigger conditions and workflow templates (fhirpathpy with the R4 model).

Expressions are compiled once and cached. Variables are passed as ``%name``: a trigger
condition sees ``%previous`` and ``%current`` (each the resource, or empty), a workflow
template also ``%resource``, its context resources and its ``let`` values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

_MODEL = models["r4"]
_cache: dict[str, Callable[..., list[Any]]] = {}
_lock = threading.Lock()


class FhirPathError(ValueError):
    """An expression that does not parse, or fails on some data."""


def check_syntax(text: str) -> None:
    """fhirpathpy's parser recovers from syntax errors silently; run its grammar with a listener that does not."""
    from antlr4 import CommonTokenStream, InputStream
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class Strict(ErrorListener):
        def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:  # noqa: N802
            raise FhirPathError(f"FHIRPath does not parse at column {column + 1}: {msg}")

    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Strict())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(Strict())
    parser.expression()
    if parser.getCurrentToken().type != -1:  # EOF: the whole text must be one expression
        raise FhirPathError("FHIRPath does not parse: unexpected text after the expression")


def compile_expression(text: str) -> Callable[..., list[Any]]:
    with _lock:
        fn = _cache.get(text)
    if fn is not None:
        return fn
    check_syntax(text)
    try:
        fn = fhirpathpy.compile(text, _MODEL)
    except Exception as exc:  # noqa: BLE001 - the parser raises many types
        raise FhirPathError(f"FHIRPath does not parse: {type(exc).__name__}") from None
    with _lock:
        _cache[text] = fn
    return fn


def _env(variables: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ([] if v is None else v) for k, v in variables.items()}


def evaluate(text: str, variables: Mapping[str, Any], focus: Any = None) -> list[Any]:
    fn = compile_expression(text)
    try:
        result = fn(focus if focus is not None else {}, _env(variables))
    except Exception as exc:  # noqa: BLE001 - fhirpathpy raises on some data
        raise FhirPathError(f"FHIRPath failed: {type(exc).__name__}") from None
    return [_plain(x) for x in result]


def is_true(text: str, variables: Mapping[str, Any], focus: Any = None) -> bool:
    """FHIRPath truth: exactly ``[true]``. An empty result is false."""
    return evaluate(text, variables, focus) == [True]


def _plain(value: Any) -> Any:
    """fhirpathpy may hand back its node types; make them JSON values."""
    if isinstance(value, str | int | float | bool | dict | list) or value is None:
        return value
    for attr in ("data", "value"):
        inner = getattr(value, attr, None)
        if inner is not None and not callable(inner):
            return _plain(inner)
    return str(value)
