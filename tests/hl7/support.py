"""Helpers for the MLLP tests: message builders, an asyncio MLLP client, an in-process runtime."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from hub.app import Hub
from hub.hl7.connectors import Connectors, Listener, Sender
from hub.hl7.mllp import Frame, FrameDecoder, frame
from hub.hl7.service import Runtime, RuntimeService
from hub.interactions.request import FhirRequest

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
NEXTGEN = ROOT / "tests" / "data" / "hl7v2" / "nextgen-connect"


def uid() -> str:
    return uuid.uuid4().hex[:10].upper()


def adt(control_id: str, mrn: str, *, event: str = "A04", family: str = "Testperson", given: str = "Ada",
        facility: str = "CLINIC", extra: str = "", dob: str = "19800101", phone: str = "5551234") -> str:
    """A small ADT message (Patient; Encounter for A04 with a visit number)."""
    lines = [
        f"MSH|^~\\&|PMS|{facility}|FHIRHUB|{facility}|20260105093000||ADT^{event}^ADT_A01|{control_id}|P|2.5.1",
        f"EVN|{event}|20260105093000",
        f"PID|1||{mrn}^^^{facility}^MR||{family}^{given}||{dob}|F|||1 Main St^^Springfield^IL^62701||^PRN^PH^^^555^{phone}",
        f"PV1|1|O|EXAM1^^^{facility}||||||||||||||||V{mrn}|||||||||||||||||||||||||20260105093000" if event == "A04" else "PV1|1|O",
    ]
    if extra:
        lines.append(extra)
    return "\r".join(lines) + "\r"


def siu(control_id: str, appt: str, mrn: str, *, event: str = "S12", start: str = "202602101000",
        end: str = "202602101030", status: str = "Booked", facility: str = "CLINIC") -> str:
    return "\r".join([
        f"MSH|^~\\&|PMS|{facility}|FHIRHUB|{facility}|20260105093000||SIU^{event}^SIU_S12|{control_id}|P|2.5.1",
        f"SCH|{appt}^PMS|{appt}^PMS|||||ROUTINE^Routine^HL70276|ROUTINE|30|min|^^30^{start}^{end}||||||||||||||{status}",
        f"PID|1||{mrn}^^^{facility}^MR||Testperson^Ada||19800101|F",
        "RGS|1|A",
        f"AIL|1|A|EXAM1^^^{facility}|||{start}",
        f"AIP|1|A|77^Doc^Alex^^^^^^{facility}|ATND||{start}",
    ]) + "\r"


def listener(**changes: Any) -> Listener:
    base = Listener(name="test-in", path="test-in.yaml", host="127.0.0.1", port=0, mappings=MAPPINGS,
                    message_types=("ADT^*", "SIU^*", "DFT^P03"), frame_timeout=30.0)
    return replace(base, **changes)


def sender(port: int, **changes: Any) -> Sender:
    base = Sender(name="test-out", path="test-out.yaml", host="127.0.0.1", port=port, mappings=MAPPINGS,
                  resources={"Appointment": {}, "Patient": {"event": "A08"}}, start_at="head",
                  sending_application="FHIRHUB", sending_facility="CLINIC", receiving_application="PMS",
                  receiving_facility="CLINIC", ack_timeout=5.0, connect_timeout=2.0, retry_initial=0.05,
                  retry_max=0.2, retry_attempts=3)
    return replace(base, **changes)


@contextlib.asynccontextmanager
async def running(hub: Hub, listeners: list[Listener] = (), senders: list[Sender] = ()) -> AsyncIterator[Runtime]:  # type: ignore[assignment]
    """The HL7 runtime with these connectors, started in this event loop; stopped on exit."""
    rt = Runtime(hub, Connectors(list(listeners), list(senders)))
    services = [RuntimeService(rt), *rt.connector_services()]
    started = []
    try:
        for s in services:
            await s.start()
            started.append(s)
        for lst in listeners:
            await rt.wait_ready(lst.name, 60)
        yield rt
    finally:
        for s in reversed(started):
            await s.stop()


class Client:
    """A minimal asyncio MLLP client: send frames (or raw bytes), read ACK frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 24)
        self.frames: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", **kw: Any) -> Client:
        reader, writer = await asyncio.open_connection(host, port, **kw)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: str | bytes) -> None:
        await self.send_raw(frame(message))

    async def ack(self, timeout: float = 30.0) -> str:
        """The next frame received (an ACK), as text."""
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed by the listener")
            self.frames += [e.payload for e in self.decoder.feed(data) if isinstance(e, Frame)]
        return self.frames.pop(0).decode("utf-8")

    async def call(self, message: str | bytes, timeout: float = 30.0) -> str:
        await self.send(message)
        return await self.ack(timeout)

    async def closed(self, timeout: float = 30.0) -> bool:
        """True once the listener closed the connection (reads until EOF)."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return True
            self.frames += [e.payload for e in self.decoder.feed(data) if isinstance(e, Frame)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def eventually(check: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}")
        await asyncio.sleep(interval)


def msa(ack: str) -> tuple[str, str]:
    """(MSA-1, MSA-2)."""
    seg = next(s for s in ack.split("\r") if s.startswith("MSA"))
    parts = seg.split("|")
    return parts[1], parts[2] if len(parts) > 2 else ""


def err(ack: str) -> str | None:
    return next((s for s in ack.split("\r") if s.startswith("ERR")), None)


def search(hub: Hub, res_type: str, **params: str) -> list[dict[str, Any]]:
    """Resources of ``res_type`` matching ``params`` (through the router, as a REST client would)."""
    resp = hub.router.dispatch(FhirRequest("GET", res_type, list(params.items()), {}, None, "http://hub.test/fhir"))
    assert resp.status == 200, resp.body
    body = orjson.loads(resp.body or b"{}")
    return [e["resource"] for e in body.get("entry") or [] if e.get("search", {}).get("mode", "match") == "match"]


def read(hub: Hub, ref: str) -> dict[str, Any] | None:
    resp = hub.router.dispatch(FhirRequest("GET", ref, [], {}, None, "http://hub.test/fhir"))
    return orjson.loads(resp.body or b"{}") if resp.status == 200 else None
