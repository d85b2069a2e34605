"""fhirhub: a FHIR R4 (4.0.1) interoperability hub for physician practices."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
