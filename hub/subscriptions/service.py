"""The background services this package runs in ``fhirhub serve``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.app import Hub, Service


def services(hub: Hub) -> list[Service]:
    """None yet: the subscription dispatcher and the workflow engine are being built (issue 5)."""
    return []
