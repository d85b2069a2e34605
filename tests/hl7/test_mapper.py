"""``mapping_processes``: a listener that parses and maps in processes of its own (hub/hl7/mapper.py).

Same answers as mapping in threads (AA after the commit, AE with its ERR, AR); a mapping error crosses
the process boundary whole; a mapping process that dies is replaced and the message it held is mapped
in a thread, so nothing the sender was owed goes unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from hub.app import Hub
from hub.errors import Category
from hub.hl7.errors import Hl7Error
from hub.hl7.mapper import ProcessMapper, ThreadMapper
from hub.hl7.pipeline import MappingCache, Pipeline
from tests.hl7.support import Client, adt, err, listener, msa, running, search, uid

on_loop = pytest.mark.asyncio(loop_scope="function")
SYSTEM = "urn:fhirhub:id:CLINIC"


def test_errors_cross_a_process_boundary_whole() -> None:
    error = Hl7Error(Category.INVALID, "HL7-REQUIRED", "PID-3 is required", location="PID^1^3", hl7_code="101")
    copy = pickle.loads(pickle.dumps(error))
    assert copy == error and str(copy) == str(error) and type(copy) is Hl7Error


@on_loop
async def test_messages_mapped_in_a_process_are_answered_as_in_threads(hub: Hub) -> None:
    mrn, cid, bad = uid(), uid(), uid()
    async with running(hub, [listener(mapping_processes=1)]) as rt:
        service = rt.listeners["test-in"]
        assert isinstance(service.mapper, ProcessMapper)
        client = await Client.connect(service.port)
        ack = await client.call(adt(cid, mrn))
        # IN1 without the insurance company: Coverage.payor cannot be filled (AE located at IN1-4)
        refused = await client.call(adt(bad, uid(), extra="IN1|1|PLAN1|||||||||||||||Secretname^Ada"))
        unsupported = await client.call(adt(uid(), uid()).replace("ADT^A04", "ORU^R01", 1))
        await client.close()
    assert msa(ack) == ("AA", cid)
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["name"][0]["family"] == "Testperson"
    assert msa(refused) == ("AE", bad)
    e = err(refused)
    assert e is not None and "IN1^1^4" in e and "101" in e
    assert msa(unsupported)[0] == "AR"


@on_loop
async def test_a_mapping_process_that_dies_is_replaced_and_its_message_answered(hub: Hub) -> None:
    """Killed once: new mapping processes start. Killed again soon after (as if they could not run): the
    listener maps in its threads from then on. Every message is answered AA either way."""
    async with running(hub, [listener(mapping_processes=1)]) as rt:
        service = rt.listeners["test-in"]
        mapper = service.mapper
        assert isinstance(mapper, ProcessMapper)
        client = await Client.connect(service.port)
        answers = [msa(await client.call(adt(uid(), uid())))]

        async def kill_then_send(n: int) -> None:
            assert mapper._pool is not None
            for pid in list(mapper._pool._processes):  # the pool's worker processes
                os.kill(pid, signal.SIGKILL)
            answers.extend([msa(await client.call(adt(uid(), uid()))) for _ in range(n)])

        await kill_then_send(3)
        assert mapper.restarts == 1 and mapper._pool is not None
        await kill_then_send(3)
        assert mapper.restarts == 1 and mapper._pool is None  # given up: the threads map
        await client.close()
        assert isinstance(mapper.fallback, ThreadMapper)
    assert [code for code, _ in answers] == ["AA"] * 7


@on_loop
async def test_messages_waiting_for_a_mapping_process_go_over_together(hub: Hub) -> None:
    """One batch is in flight per mapping process; what arrives meanwhile waits, and goes over as one
    batch when it comes back: ten messages at once cross in two batches, each mapped as on its own."""
    connector = listener(mapping_processes=1)
    pipeline = Pipeline(hub.router, connector, MappingCache(), "http://hub.test/fhir")
    cids = [uid() for _ in range(10)]
    raws = [adt(cid, uid()).encode() for cid in cids]
    with ThreadPoolExecutor(1) as threads:
        mapper = ProcessMapper(connector, 0.0, ThreadMapper(pipeline, threads), logging.WARNING)
        try:
            await mapper.start()
            prepared = await asyncio.gather(*(mapper.prepare(k, raw, None) for k, raw in enumerate(raws)))
        finally:
            mapper.close()
    assert mapper.batches == 2
    assert [p.pk for p in prepared] == list(range(10))
    assert [p.raw for p in prepared] == raws
    assert [p.error for p in prepared] == [None] * 10
    assert [p.conversion.control_id if p.conversion else None for p in prepared] == cids
    alone = [pipeline.prepare(k, raw) for k, raw in enumerate(raws)]
    assert [p.bundle_json for p in prepared] == [p.bundle_json for p in alone]


@on_loop
async def test_a_closed_mapper_starts_no_new_processes(hub: Hub) -> None:
    """A message that reaches the mapper while the listener stops is left stored (its wait is cancelled), and
    no mapping process is started for it."""
    connector = listener(mapping_processes=1)
    pipeline = Pipeline(hub.router, connector, MappingCache(), "http://hub.test/fhir")
    with ThreadPoolExecutor(1) as threads:
        mapper = ProcessMapper(connector, 0.0, ThreadMapper(pipeline, threads), logging.WARNING)
        await mapper.start()
        mapper.close()
        with pytest.raises(asyncio.CancelledError):
            await mapper.prepare(1, adt(uid(), uid()).encode(), None)
    assert mapper.restarts == 0 and mapper.batches == 0
