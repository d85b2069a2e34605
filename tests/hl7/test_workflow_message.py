"""Workflow ``message`` steps: the HL7 side's MessageSender maps a resource and queues it on an mllp-sender."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from hub.app import Hub
from hub.hl7.service import WorkflowSender, register_workflow_senders
from hub.subscriptions.workflows.connectors import MessageError, OutboundMessage
from tests.hl7.receiver import Receiver
from tests.hl7.support import eventually, running, sender, uid

pytestmark = pytest.mark.asyncio(loop_scope="function")


def _patient(mrn: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"wf-{mrn.lower()}", "identifier": [{"system": "urn:x", "value": mrn}],
            "name": [{"family": "Workflow", "given": ["Wanda"]}], "birthDate": "1980-01-01", "gender": "female"}


async def test_a_message_step_sends_the_mapped_resource_once_per_idempotency_key(hub: Hub) -> None:
    receiver = await Receiver().start()
    mrn = uid()
    try:
        conf = sender(receiver.port, name="wf-out", resources={})  # only what workflows queue
        async with running(hub, senders=[conf]) as rt:
            out = WorkflowSender(rt, "wf-out")
            step = OutboundMessage("wf-out", "A08", _patient(mrn), idempotency_key=f"run-{mrn}/step-1")
            first = await out.send(step)
            again = await out.send(step)  # the workflow retried the step
            await eventually(lambda: any(mrn in m for m in receiver.messages))
            other = await out.send(OutboundMessage("wf-out", "A08", _patient(mrn), idempotency_key=f"run-{mrn}/step-2"))
            await eventually(lambda: sum(mrn in m for m in receiver.messages) >= 2)
            await asyncio.sleep(0.3)
    finally:
        await receiver.stop()
    assert first == again == WorkflowSender.control_id(f"run-{mrn}/step-1") and other != first
    mine = [m for m in receiver.messages if mrn in m]
    assert len(mine) == 2  # the retried step did not send a second copy
    msh = mine[0].split("\r")[0].split("|")
    assert msh[8].startswith("ADT^A08") and msh[9] == first
    assert "Workflow^Wanda" in mine[0]


async def test_a_resource_the_mappings_cannot_send_fails_the_step(hub: Hub) -> None:
    receiver = await Receiver().start()
    try:
        async with running(hub, senders=[sender(receiver.port, name="wf-out2", resources={})]) as rt:
            out = WorkflowSender(rt, "wf-out2")
            with pytest.raises(MessageError) as caught:
                await out.send(OutboundMessage("wf-out2", "S12", _patient(uid()), idempotency_key="k-bad-event"))
            assert caught.value.transient is False
            with pytest.raises(MessageError) as unknown:
                await WorkflowSender(rt, "nobody").send(OutboundMessage("nobody", None, _patient(uid()), "k"))
            assert unknown.value.transient is False
    finally:
        await receiver.stop()
    assert receiver.messages == []


async def test_senders_are_registered_with_the_subscription_service(hub: Hub) -> None:
    got: dict[str, Any] = {}
    fake_hub = SimpleNamespace(services=[SimpleNamespace(register_sender=lambda name, s: got.__setitem__(name, s))])
    async with running(hub, senders=[sender(1, name="wf-reg", resources={})]) as rt:
        assert register_workflow_senders(fake_hub, rt) == ["wf-reg"]  # type: ignore[arg-type]
    assert isinstance(got["wf-reg"], WorkflowSender)
