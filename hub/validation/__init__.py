"""FHIR R4 (4.0.1) resource validation against the official StructureDefinitions.

Usage::

    validator = Validator.load(Path("profiles"))  # once: ~0.6 s
    data, issues = parse_json(body)  # strict parse: malformed JSON, duplicate keys
    if data is not None:
        issues += validator.validate(data)  # list[hub.errors.Issue]

``ValidatorOptions`` (via ``Validator.with_options``) changes policies without
recompiling; the defaults are the hub's. See :mod:`hub.validation.validator`
for what is checked.
"""

from hub.validation.jsonparse import parse_json
from hub.validation.validator import Validator, ValidatorOptions

__all__ = ["Validator", "ValidatorOptions", "parse_json"]
