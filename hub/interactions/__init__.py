"""FHIR interactions, independent of HTTP (after Medplum's FhirRouter).

REST routes, transaction entries, HL7v2 ingest and workflows all build a
:class:`~hub.interactions.request.FhirRequest` and call
:meth:`~hub.interactions.router.FhirRouter.dispatch`.
"""
