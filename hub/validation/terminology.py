"""Local value set expansion for required bindings.

Only what valuesets.json defines can be expanded: ``compose.include`` with a
whole ``system`` (the CodeSystem's concepts, nested ones included) or with a
``concept`` list, ``compose.include.valueSet`` (recursively) and
``compose.exclude`` of enumerated concepts. Includes that use ``filter``, or
name a code system that is not defined locally (SNOMED CT, LOINC, UCUM,
BCP-47 ...) or whose content is not complete, make that system *unchecked*:
codes in it are accepted. A value set that includes another value set we
cannot expand is unchecked as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Expansion:
    """What a value set allows, as far as it can be known locally."""

    codes: dict[str, frozenset[str]] = field(default_factory=dict)  # system -> codes (complete)
    unchecked_systems: set[str] = field(default_factory=set)
    all_unchecked: bool = False  # nothing can be said (e.g. includes an unknown value set)
    any_code: frozenset[str] = frozenset()  # union of all codes, for bare `code` elements

    def check_code(self, code: str) -> bool | None:
        """A bare code (type ``code``): True/False, or None when it can't be judged."""
        if self.all_unchecked or self.unchecked_systems:
            return None
        return code in self.any_code

    def check_coding(self, system: str | None, code: str) -> bool | None:
        if self.all_unchecked:
            return None
        if system is None:
            return None
        if system in self.unchecked_systems:
            return None
        codes = self.codes.get(system)
        if codes is None:
            return False  # a system the value set does not include
        return code in codes


def _strip_version(url: str) -> str:
    return url.split("|", 1)[0]


def _flatten(concepts: list[dict[str, Any]], out: set[str]) -> None:
    for c in concepts:
        code = c.get("code")
        if isinstance(code, str):
            out.add(code)
        sub = c.get("concept")
        if sub:
            _flatten(sub, out)


class Terminology:
    """Code systems and value sets from valuesets.json, expanded lazily and cached."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self._cs: dict[str, dict[str, Any]] = {}
        self._vs: dict[str, dict[str, Any]] = {}
        for r in resources:
            url = r.get("url")
            if not isinstance(url, str):
                continue
            # keep only what expansion reads (narratives etc. would double the memory)
            if r.get("resourceType") == "CodeSystem":
                self._cs[url] = {"content": r.get("content"), "concept": r.get("concept")}
            elif r.get("resourceType") == "ValueSet":
                self._vs[url] = {"compose": r.get("compose")}
        self._cs_codes: dict[str, frozenset[str] | None] = {}
        self._cache: dict[str, Expansion] = {}

    def code_system_codes(self, system: str) -> frozenset[str] | None:
        """All codes of a complete, locally defined code system; None if unknown/incomplete."""
        if system in self._cs_codes:
            return self._cs_codes[system]
        cs = self._cs.get(system)
        result: frozenset[str] | None = None
        if cs is not None and cs.get("content") == "complete" and cs.get("concept"):
            codes: set[str] = set()
            _flatten(cs["concept"], codes)
            result = frozenset(codes)
        self._cs_codes[system] = result
        return result

    def expand(self, url: str) -> Expansion:
        hit = self._cache.get(url)
        if hit is None:
            plain = _strip_version(url)
            hit = self._cache.get(plain) or self._expand(plain, set())
            self._cache[plain] = hit
            self._cache[url] = hit
        return hit

    def _expand(self, url: str, seen: set[str]) -> Expansion:
        exp = Expansion()
        vs = self._vs.get(url)
        if vs is None or url in seen:
            exp.all_unchecked = True
            return exp
        seen = seen | {url}
        compose = vs.get("compose") or {}
        systems: dict[str, set[str]] = {}
        for inc in compose.get("include", []):
            system = inc.get("system")
            for sub in inc.get("valueSet", []) or []:
                child = self._expand(_strip_version(sub), seen)
                if child.all_unchecked:
                    exp.all_unchecked = True
                    return exp
                for s, codes in child.codes.items():
                    systems.setdefault(s, set()).update(codes)
                exp.unchecked_systems |= child.unchecked_systems
            if system is None:
                continue
            if inc.get("filter"):
                exp.unchecked_systems.add(system)
                continue
            if inc.get("concept"):
                systems.setdefault(system, set()).update(
                    c["code"] for c in inc["concept"] if isinstance(c.get("code"), str)
                )
                continue
            all_codes = self.code_system_codes(system)
            if all_codes is None:
                exp.unchecked_systems.add(system)
            else:
                systems.setdefault(system, set()).update(all_codes)
        for exc in compose.get("exclude", []):
            system = exc.get("system")
            if system in systems and exc.get("concept") and not exc.get("filter"):
                systems[system].difference_update(c.get("code") for c in exc["concept"])
        if not systems and not exp.unchecked_systems:
            exp.all_unchecked = True  # nothing we can enumerate (e.g. expansion-only value set)
            return exp
        exp.codes = {s: frozenset(c) for s, c in systems.items()}
        union: set[str] = set()
        for c in systems.values():
            union |= c
        exp.any_code = frozenset(union)
        return exp
