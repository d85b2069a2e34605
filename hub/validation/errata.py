"""Corrections to R4 4.0.1 invariant expressions that are wrong as published.

Each correction is the expression a later official HL7 publication gives the
same constraint, and is applied only where the published expression is
exactly the defective one. The human-readable rule (``human``) is unchanged in
every case: the published expression simply does not say what the rule says.
"""

from __future__ import annotations

# (key, published expression) -> (corrected expression, source of the correction)
CONSTRAINT_ERRATA: dict[tuple[str, str], tuple[str, str]] = {
    # "If there are more than one enableWhen, enableBehavior must be specified", published
    # as count() > 2.
    ("que-12", "enableWhen.count() > 2 implies enableBehavior.exists()"): (
        "enableWhen.count() > 1 implies enableBehavior.exists()",
        "hl7.fhir.r4b.core 4.3.0 StructureDefinition/Questionnaire que-12",
    ),
    # System.Boolean is not the type of a FHIR boolean (fhirpath.html#types), so the published
    # expression fails on every enableWhen with operator 'exists'.
    ("que-7", "operator = 'exists' implies (answer is Boolean)"): (
        "operator = 'exists' implies (answer is boolean)",
        "hl7.fhir.r4b.core 4.3.0 StructureDefinition/Questionnaire que-7",
    ),
    # `when in (...)` takes one item; several `when` cannot be evaluated. R4's own
    # differential for Timing already carries the corrected form.
    ("tim-9", "offset.empty() or (when.exists() and ((when in ('C' | 'CM' | 'CD' | 'CV')).not()))"): (
        "offset.empty() or (when.exists() and when.select($this in ('C' | 'CM' | 'CD' | 'CV')).allFalse())",
        "hl7.fhir.r5.core 5.0.0 StructureDefinition/Timing tim-9 (and the R4 Timing differential)",
    ),
}


def corrected(key: str, expression: str) -> str:
    fix = CONSTRAINT_ERRATA.get((key, expression))
    return fix[0] if fix else expression
