"""Sync with external EHRs over FHIR REST (connector kind ``fhir-rest``)."""
