"""The interface a workflow ``message`` step sends HL7v2 through (implemented by the HL7 side, issue 6).

A step::

    - name: notify-ehr
      message: {connector: mllp-out, event: S12, resource: "%resource"}

calls ``senders["mllp-out"].send(OutboundMessage(...))``. The implementation maps the resource to
HL7v2 (its outbound mapping files), queues it durably on the named ``mllp-sender`` and returns the
message control id (MSH-10). It must treat ``idempotency_key`` as the message's identity: sending
twice with the same key queues one message. It raises :class:`MessageError` (``transient``: the
workflow retries with backoff; otherwise the step fails).

The composition root registers senders with ``SubscriptionService.register_sender(name, sender)``
before the service starts; a workflow naming an unknown connector fails to load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutboundMessage:
    connector: str
    event: str | None  # "S12", or None: the mapping decides from the resource
    resource: dict[str, Any]
    idempotency_key: str
    related: dict[str, dict[str, Any]] = field(default_factory=dict)  # reference -> resource (the workflow's context)


class MessageError(Exception):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class MessageSender(Protocol):
    async def send(self, message: OutboundMessage) -> str: ...
