"""FHIR R4 building blocks that know nothing of HTTP or storage."""
