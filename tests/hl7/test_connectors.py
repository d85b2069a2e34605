"""Connector files (``connectors/*.yaml``): checked with jsonschema at start, errors name file and line;
environment overrides; the shipped files; and mapping files that reload on change."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from hub.app import Hub
from hub.hl7.connectors import ConnectorFileError, load
from hub.hl7.pipeline import MappingCache
from hub.hl7.settings import Hl7Settings
from tests.hl7.support import MAPPINGS, ROOT, Client, adt, listener, msa, running, search, uid


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def settings(folder: Path, **kw: object) -> Hl7Settings:
    return Hl7Settings(connectors_dir=folder, mappings_dir=MAPPINGS, **kw)  # type: ignore[arg-type]


def test_the_shipped_connectors_load() -> None:
    found = load(settings(ROOT / "connectors"))
    [inbound] = found.listeners
    assert (inbound.name, inbound.port, inbound.host, inbound.ack_mode, inbound.ordering) == (
        "mllp-inbound", 2575, "127.0.0.1", "original", "connection")
    assert inbound.accepts("ADT^A01") and inbound.accepts("SIU^S15") and inbound.accepts("DFT^P03")
    assert not inbound.accepts("ORU^R01") and not inbound.accepts("DFT^P11")
    assert found.senders == [] and found.disabled == ["mllp-outbound"]


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("kind: mllp-listener\nname: a\nport: 70000\n", 3, "70000 is greater than the maximum"),
    ("kind: mllp-listener\nname: a\nport: 2575\nack_mode: sometimes\n", 4, "'sometimes' is not one of"),
    ("kind: mllp-listener\nname: a\nport: 2575\nmessage_types: [ADT-A01]\n", 4, "does not match"),
    ("kind: mllp-listener\nname: a\nport: 2575\nbogus: 1\n", 1, "'bogus' was unexpected"),
    ("kind: mllp-sender\nname: a\nport: 2575\n", 1, "'host' is a required property"),
    ("kind: carrier-pigeon\nname: a\n", 1, "is not one of"),
    ("kind: mllp-listener\nname: a\nport: [2575\n", 4, "YAML error"),
    ("kind: mllp-listener\nname: a\nport: 2575\nmappings: nowhere\n", 4, "mapping directory"),
    ("kind: mllp-listener\nname: a\nport: 2575\ntls: {certfile: x.pem, keyfile: y.pem}\n", 4, "tls.certfile: file"),
])
def test_errors_name_the_file_and_the_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    write(tmp_path / "c", "bad.yaml", text)
    with pytest.raises(ConnectorFileError) as info:
        load(settings(tmp_path / "c"))
    assert str(info.value).startswith(f"bad.yaml:{line}: "), str(info.value)
    assert needle in str(info.value)


def test_duplicate_names_and_ports(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    write(folder, "a.yaml", "kind: mllp-listener\nname: same\nport: 2575\n")
    write(folder, "b.yaml", "kind: mllp-listener\nname: same\nport: 2576\n")
    with pytest.raises(ConnectorFileError, match=r"b.yaml:2: connector name 'same' is also used by a.yaml"):
        load(settings(folder))
    write(folder, "b.yaml", "kind: mllp-listener\nname: other\nport: 2575\n")
    with pytest.raises(ConnectorFileError, match=r"b.yaml:3: 127.0.0.1:2575 is also used by a.yaml"):
        load(settings(folder))


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "c"
    write(folder, "in.yaml", "kind: mllp-listener\nname: pms-in\nport: 2575\nsystem: pms\n")
    write(folder, "in2.yaml", "kind: mllp-listener\nname: lab-in\nport: 2580\nsystem: lab\n")
    write(folder, "out.yaml", "kind: mllp-sender\nname: pms-out\nhost: pms.example\nport: 2576\nsystem: pms\n"
                              "skip_origins: [mllp:other]\n")
    found = load(settings(folder, mllp_port_offset=1000))
    assert [lst.port for lst in found.listeners] == [3575, 3580]
    monkeypatch.setenv("FHIRHUB_MLLP_PORT_PMS_IN", "40001")
    monkeypatch.setenv("FHIRHUB_MLLP_HOST_PMS_IN", "0.0.0.0")
    monkeypatch.setenv("FHIRHUB_MLLP_TARGET_PMS_OUT", "127.0.0.1:40002")
    found = load(settings(folder, mllp_port_offset=1000))
    pms = found.listener("pms-in")
    assert pms is not None and (pms.host, pms.port) == ("0.0.0.0", 40001)
    [out] = found.senders
    assert (out.host, out.port) == ("127.0.0.1", 40002)
    assert out.skip_origins == ("mllp:other", "mllp:pms-in")  # no echo of its own system, not lab's
    monkeypatch.setenv("FHIRHUB_MLLP_TARGET_PMS_OUT", "no-port")
    with pytest.raises(ConnectorFileError, match="expected host:port"):
        load(settings(folder))


def test_no_connectors_folder_means_no_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: Hub) -> None:
    from hub.hl7.service import services

    monkeypatch.setenv("FHIRHUB_CONNECTORS_DIR", str(tmp_path / "none"))
    assert services(hub) == []
    write(tmp_path / "c", "in.yaml", "kind: mllp-listener\nname: x\nport: 2575\nenabled: false\n")
    monkeypatch.setenv("FHIRHUB_CONNECTORS_DIR", str(tmp_path / "c"))
    assert services(hub) == []


# ------------------------------------------------------------------------------------ mapping reload


def test_mapping_files_reload_and_a_bad_edit_keeps_the_old_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    cache = MappingCache()
    first = cache.get(folder)
    assert cache.check() == []
    sex = folder / "codemaps" / "AdministrativeSex.yaml"
    good = sex.read_text()
    time.sleep(0.01)
    sex.write_text(good.replace('"F": {code: "female"', '"F": {code: "other"'))
    assert cache.check() == [folder.resolve()]
    second = cache.get(folder)
    assert second is not first and second.codemaps["AdministrativeSex"].lookup("F") == {
        "code": "other", "display": "Female", "system": "http://hl7.org/fhir/administrative-gender"}
    caplog.set_level(logging.ERROR, logger="hub.hl7")
    sex.write_text(good + "  broken: [\n")
    assert cache.check() == []
    assert cache.get(folder) is second  # the previous set stays in use
    assert "codemaps/AdministrativeSex.yaml:" in caplog.text
    caplog.clear()
    assert cache.check() == [] and caplog.text == ""  # reported once, not on every check
    sex.write_text(good)
    assert cache.check() == [folder.resolve()]


@pytest.mark.asyncio
async def test_apply_idle_stores_first_and_applies_when_the_sender_pauses(hub: Hub) -> None:
    conf = listener(ack_mode="enhanced", apply="idle", apply_idle=0.5)
    mrns = [uid() for _ in range(5)]
    async with running(hub, [conf]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        for mrn in mrns:
            msg = adt(uid(), mrn).replace("|P|2.5.1", "|P|2.5.1|||AL|AL", 1)
            assert msa(await client.call(msg))[0] == "CA"  # durable, not applied yet
        assert not search(hub, "Patient", identifier=f"urn:fhirhub:id:CLINIC|{mrns[0]}")
        acks = [msa(await client.ack(timeout=30))[0] for _ in mrns]  # after the pause, the application ACKs
        await client.close()
    assert acks == ["AA"] * 5
    for mrn in mrns:
        assert search(hub, "Patient", identifier=f"urn:fhirhub:id:CLINIC|{mrn}")


