"""Content negotiation: ``_format``, ``Accept`` and ``Content-Type`` (JSON only; XML answers 406/415)."""

from __future__ import annotations

from hub.errors import Category, FhirError

JSON_TYPES = {"application/fhir+json", "application/json", "json", "application/json+fhir", "text/json"}
PATCH_TYPES = {"application/json-patch+json", "application/merge-patch+json"}
FORM_TYPES = {"application/x-www-form-urlencoded"}
FHIR_JSON = "application/fhir+json; charset=utf-8"


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def check_accept(format_param: str | None, accept: str | None) -> None:
    """406 unless the client can take JSON."""
    if format_param is not None:
        if _media(format_param) not in JSON_TYPES:
            raise FhirError(Category.NOT_ACCEPTABLE, "FHIRHUB-FORMAT-UNSUPPORTED", "Only JSON is supported (_format=json)")
        return
    if not accept:
        return
    types = {_media(part) for part in accept.split(",") if part.strip()}
    if types & JSON_TYPES or "*/*" in types or "application/*" in types:
        return
    raise FhirError(Category.NOT_ACCEPTABLE, "FHIRHUB-ACCEPT-UNSUPPORTED", "Only application/fhir+json is supported")


def check_content_type(content_type: str | None, method: str, allow_form: bool) -> str:
    """The body's media type, or 415 for one the hub does not read."""
    media = _media(content_type or "application/fhir+json")
    allowed = JSON_TYPES | (PATCH_TYPES if method == "PATCH" else set()) | (FORM_TYPES if allow_form else set())
    if media not in allowed:
        raise FhirError(
            Category.UNSUPPORTED_MEDIA,
            "FHIRHUB-CONTENT-TYPE-UNSUPPORTED",
            "Send application/fhir+json (JSON Patch: application/json-patch+json)",
        )
    return media
