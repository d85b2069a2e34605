"""FHIR search over every R4 search parameter.

* :mod:`hub.search.params`: the registry of SearchParameters (official + custom from ``profiles/``).
* :mod:`hub.search.paths`: FHIRPath evaluation, a fast path for simple expressions, fhirpathpy for the rest.
* :mod:`hub.search.tables`: one index table per parameter type; :mod:`hub.search.index` fills them.
* :mod:`hub.search.query`: query string -> typed AST; :mod:`hub.search.compile`: AST -> SQL;
  :mod:`hub.search.memory`: AST matched against one resource in memory (subscriptions).
* :mod:`hub.search.engine`: ``SearchEngine`` (search, find, matches, capability, $everything).
"""
