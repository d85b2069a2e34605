"""The HTTP edge: thin FastAPI routes over :class:`hub.interactions.router.FhirRouter`."""
