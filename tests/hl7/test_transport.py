"""Framing and transport faults never take the listener down: each is answered or closed cleanly,
and logged without patient data. The framing decoder is also tested on its own."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub.app import Hub
from hub.hl7.mllp import Abandoned, Frame, FrameDecoder, Garbage, Oversized, frame
from tests.hl7.support import Client, adt, err, listener, msa, running, search, uid

SYSTEM = "urn:fhirhub:id:CLINIC"
SECRET = "Zzyzxsecret"  # a patient name that must never reach a log line


# ------------------------------------------------------------------------------------ the decoder


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[object]:
    return [e for c in chunks for e in decoder.feed(c)]


def test_frames_split_anywhere_are_reassembled() -> None:
    data = frame("MSH|one\r") + frame("MSH|two\r") + frame("MSH|three\r")
    for size in (1, 2, 3, 7, 64, len(data)):
        events = feed_all(FrameDecoder(), [data[i : i + size] for i in range(0, len(data), size)])
        assert [e.payload for e in events if isinstance(e, Frame)] == [b"MSH|one\r", b"MSH|two\r", b"MSH|three\r"]
        assert not [e for e in events if not isinstance(e, Frame)]


def test_garbage_half_frames_missing_cr_and_oversized() -> None:
    d = FrameDecoder(max_bytes=50)
    events = d.feed(b"junk\r\n" + frame("MSH|a") + b"\x00\xff" + b"\x0bMSH|half" + frame("MSH|b") + b"\x0bMSH|c\x1c"
                    + frame("MSH|" + "x" * 200) + frame("MSH|d"))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Garbage", "Frame", "Garbage", "Abandoned", "Frame", "Frame", "Oversized", "Frame"]
    assert [e.payload for e in events if isinstance(e, Frame)] == [b"MSH|a", b"MSH|b", b"MSH|c", b"MSH|d"]
    over = next(e for e in events if isinstance(e, Oversized))
    assert over.size == 204 and over.head.startswith(b"MSH|xxx")
    assert sum(e.size for e in events if isinstance(e, Garbage)) == 8
    assert next(e for e in events if isinstance(e, Abandoned)).size == len(b"MSH|half")


def test_oversized_frame_across_chunks_keeps_only_its_head() -> None:
    d = FrameDecoder(max_bytes=10_000)
    chunks = [b"\x0bMSH|" + b"y" * 9000] + [b"y" * 9000] * 20 + [b"\x1c\r" + frame("MSH|next")]
    events = feed_all(d, chunks)
    assert isinstance(events[0], Oversized) and len(events[0].head) <= 4096 and events[0].size > 180_000
    assert isinstance(events[1], Frame) and events[1].payload == b"MSH|next"
    assert d.buffered == 0 and not d.in_frame


# ------------------------------------------------------------------------------------ the listener


@pytest.mark.asyncio
async def test_transport_faults_are_answered_or_closed_and_the_listener_stays_up(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hub")
    conf = listener(max_message_bytes=4096, frame_timeout=0.6, max_connections=8)
    async with running(hub, [conf]) as rt:
        port = rt.listeners["test-in"].port

        # garbage between frames, and a half frame cut by a new start block: both messages answered
        c = await Client.connect(port)
        m1, m2 = adt(uid(), uid(), family=SECRET), adt(uid(), uid(), family=SECRET)
        await c.send_raw(b"GET / HTTP/1.1\r\n\r\n" + frame(m1) + b"\x00\x01garbage" + b"\x0bMSH|^~\\&|HALF"
                         + frame(m2))
        assert [msa(await c.ack())[0], msa(await c.ack())[0]] == ["AA", "AA"]

        # not HL7 at all inside a frame: AE, the connection stays usable
        ack = await c.call(b"hello, this is not HL7")
        assert msa(ack)[0] == "AE" and "HL7-PARSE" in (err(ack) or "")

        # bytes that are not valid UTF-8 (no MSH-18): AE 102 at MSH-18; declared 8859/1: accepted
        cid = uid()
        raw = adt(cid, uid(), family="Gr\u00fcn").encode("latin-1")
        ack = await c.call(raw)
        assert msa(ack) == ("AE", cid) and "MSH^1^18" in (err(ack) or "")
        mrn, cid = uid(), uid()
        declared = adt(cid, mrn, family="Gr\u00fcn").replace("|P|2.5.1", "|P|2.5.1||||||8859/1", 1).encode("latin-1")
        assert msa(await c.call(declared)) == ("AA", cid)
        assert search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")[0]["name"][0]["family"] == "Gr\u00fcn"

        # an oversized message: AR 104, skipped to its end; the next message on the connection is fine
        big_cid = uid()
        big = adt(big_cid, uid(), family=SECRET, extra="NTE|1||" + "x" * 10_000)
        ack = await c.call(big)
        assert msa(ack) == ("AR", big_cid) and "104" in (err(ack) or "")
        assert msa(await c.call(adt(uid(), uid())))[0] == "AA"
        await c.close()

        # a half frame and then the sender goes away: dropped, nothing answered, nothing stored
        c = await Client.connect(port)
        await c.send_raw(b"\x0bMSH|^~\\&|PMS|CLINIC|||20260101||ADT^A04|HALF1|P|2.5.1\rPID|1||")
        await c.close()

        # a slow (or stalled) sender: closed when no complete frame arrives within frame_timeout
        c = await Client.connect(port)
        await c.send_raw(b"\x0bMSH|^~\\&|PMS|CLINIC")
        assert await c.closed(timeout=10)
        await c.close()

        # after all that, a new connection is served normally
        c = await Client.connect(port)
        assert msa(await c.call(adt(uid(), uid())))[0] == "AA"
        await c.close()

    text = caplog.text
    assert "outside MLLP frames" in text and "half frame" in text and "exceeds max_message_bytes" in text
    assert "no complete frame within" in text and "inside a frame" in text
    assert SECRET not in text and "Gr\u00fcn" not in text  # sizes and addresses only, never content


@pytest.mark.asyncio
async def test_connections_beyond_the_limit_are_closed(hub: Hub) -> None:
    async with running(hub, [listener(max_connections=1)]) as rt:
        port = rt.listeners["test-in"].port
        first = await Client.connect(port)
        second = await Client.connect(port)
        assert await second.closed(timeout=10)
        await second.close()
        assert msa(await first.call(adt(uid(), uid())))[0] == "AA"
        await first.close()


@pytest.mark.asyncio
async def test_pipelined_frames_in_one_write_are_answered_in_order(hub: Hub) -> None:
    cids = [uid() for _ in range(20)]
    async with running(hub, [listener()]) as rt:
        c = await Client.connect(rt.listeners["test-in"].port)
        await c.send_raw(b"".join(frame(adt(cid, uid())) for cid in cids))
        got = [msa(await c.ack()) for _ in cids]
        await c.close()
    assert got == [("AA", cid) for cid in cids]


@pytest.mark.asyncio
async def test_a_client_that_disconnects_before_its_ack_does_not_disturb_others(hub: Hub) -> None:
    async with running(hub, [listener()]) as rt:
        port = rt.listeners["test-in"].port
        gone = await Client.connect(port)
        mrn = uid()
        await gone.send(adt(uid(), mrn))
        await gone.close()  # before reading its ACK
        other = await Client.connect(port)
        assert msa(await other.call(adt(uid(), uid())))[0] == "AA"
        await other.close()
        for _ in range(100):  # the first message was still stored and applied
            if search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}"):
                break
            await asyncio.sleep(0.1)
    assert search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")


@pytest.mark.asyncio
async def test_a_port_in_use_does_not_stop_the_hub_and_is_tried_again(
        hub: Hub, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from hub.hl7 import listener as listener_module
    from hub.hl7.connectors import Connectors
    from hub.hl7.service import Runtime, RuntimeService

    monkeypatch.setattr(listener_module, "BIND_RETRY", 0.2)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = int(blocker.getsockname()[1])
    rt = Runtime(hub, Connectors([listener(port=port)], []))
    services = [RuntimeService(rt), *rt.connector_services()]
    try:
        for s in services:
            await s.start()  # no exception: the FHIR API of the hub stays up
        assert "cannot listen on 127.0.0.1" in caplog.text
        blocker.close()
        await rt.wait_ready("test-in", 20)
        c = await Client.connect(port)
        assert msa(await c.call(adt(uid(), uid())))[0] == "AA"
        await c.close()
    finally:
        blocker.close()
        for s in reversed(services):
            await s.stop()
