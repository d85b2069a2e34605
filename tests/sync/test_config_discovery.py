"""Connector files (schema, secrets, file:line errors), discovery warnings, notification parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from hub.security import assertion as smart
from hub.sync.api import notification_refs
from hub.sync.config import ConnectorConfigError, load_dir, load_file, parse
from hub.sync.discovery import analyze, discover
from hub.sync.remote import Remote
from tests.sync.conftest import connector_doc
from tests.sync.fake_ehr import BASE, HOST, FakeEhr

GOOD = """\
kind: fhir-rest
name: ehr
base_url: https://ehr.example.org/fhir
auth:
  method: smart-backend
  client_id: clinic-hub
  private_key: {file: key.pem}
  kid: k1
  scopes: [system/Patient.rs, system/Appointment.cruds]
pull:
  types: [Patient, Appointment]
  schedule: {every: 5m}
push:
  types: [Appointment]
conflict: manual
match:
  Patient: [urn:oid:2.16.840.1.113883.19.5]
notifications:
  token: {env: TEST_SYNC_HOOK_TOKEN}
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "key.pem").write_bytes(smart.private_pem(smart.generate_key("ES384")))
    monkeypatch.setenv("TEST_SYNC_HOOK_TOKEN", "hook-secret-value")
    return tmp_path


def test_a_good_file_loads_with_its_secrets_resolved(folder: Path) -> None:
    (folder / "fhir-ehr.yaml").write_text(GOOD)
    (cfg,) = load_dir(folder)
    assert cfg.name == "ehr" and cfg.origin == "sync:ehr" and cfg.source == "urn:fhirhub:connector:ehr"
    assert cfg.schedule.every == 300 and cfg.conflict == "manual" and cfg.pull_types == ("Patient", "Appointment")
    assert cfg.auth.scopes == ("system/Patient.rs", "system/Appointment.cruds")
    assert cfg.notify_token is not None and cfg.notify_token.reveal() == "hook-secret-value"
    assert "hook-secret-value" not in repr(cfg) and "PRIVATE" not in repr(cfg)
    assert cfg.match_systems("Patient") == ("urn:oid:2.16.840.1.113883.19.5",) and cfg.match_systems("Appointment") == ()


@pytest.mark.parametrize(("change", "line", "words"), [
    (("  private_key: {file: key.pem}", "  private_key: '-----BEGIN PRIVATE KEY----- abc'"), 7, "never the value itself"),
    (("  token: {env: TEST_SYNC_HOOK_TOKEN}", "  token: {env: NOT_SET_ANYWHERE_1234}"), 19, "NOT_SET_ANYWHERE_1234 is not set"),
    (("conflict: manual", "conflict: whoever"), 15, "conflict"),
    (("  schedule: {every: 5m}", "  schedule: {every: 5m}\n  colour: blue"), 13, "unknown key"),
    (("  types: [Appointment]", "  types: [Appointmnt]"), 14, "Appointmnt is not an R4 resource type"),
    (("base_url: https://ehr.example.org/fhir", "base_url: http://ehr.example.org/fhir"), 3, "https"),
    (("  kid: k1", "  kid: k1\n  alg: RS384"), 9, "does not fit the private key"),
])
def test_a_broken_file_names_file_and_line(folder: Path, change: tuple[str, str], line: int, words: str,
                                           content_types: frozenset[str]) -> None:
    path = folder / "fhir-ehr.yaml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(ConnectorConfigError) as info:
        load_file(path, content_types)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert words in text
    assert "BEGIN PRIVATE KEY" not in text


@pytest.fixture(scope="module")
def content_types() -> frozenset[str]:
    from hub.fhir.definitions import Definitions
    from hub.settings import Settings

    return Definitions.load(Settings().profiles_dir).resource_types


def test_only_fhir_files_are_read_and_names_are_unique(folder: Path) -> None:
    (folder / "fhir-a.yaml").write_text(GOOD)
    (folder / "mllp-other.yaml").write_text("kind: mllp-listener\nname: x\n")
    assert [c.name for c in load_dir(folder)] == ["ehr"]
    (folder / "fhir-b.yaml").write_text(GOOD)
    with pytest.raises(ConnectorConfigError, match="also used by"):
        load_dir(folder)


def test_a_disabled_connector_is_not_run(folder: Path) -> None:
    (folder / "fhir-ehr.yaml").write_text(GOOD + "enabled: false\n")
    assert load_dir(folder) == []
    assert [c.name for c in load_dir(folder, enabled_only=False)] == ["ehr"]


# ================================================================================ discovery
def _cfg(tmp_path: Path, **overrides: Any) -> Any:
    key = tmp_path / "k.pem"
    key.write_bytes(smart.private_pem(smart.generate_key("ES384")))
    return parse(connector_doc(key, **overrides), "fhir-ehr.yaml", tmp_path)


def test_a_remote_that_lacks_a_capability_is_warned_about(tmp_path: Path) -> None:
    fake = FakeEhr(types=("Patient",), conditional_create=False, versioning="no-version", smart_algs=("RS384",))
    cfg = _cfg(tmp_path, pull={"types": ["Patient", "Appointment"]}, push={"types": ["Patient"]})
    capability = fake.capability()
    capability["rest"][0]["searchParam"] = []
    smart_conf = {"token_endpoint": "https://ehr.test/auth/token", "grant_types_supported": ["client_credentials"],
                  "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                  "token_endpoint_auth_signing_alg_values_supported": ["RS384"], "scopes_supported": ["system/Patient.rs"]}
    report = analyze(cfg, capability, smart_conf)
    warnings = "\n".join(report["warnings"])
    assert "pull Appointment: the remote's CapabilityStatement does not list Appointment" in warnings
    assert "pull Patient: the remote does not list _lastUpdated" in warnings
    assert "push Patient: the remote does not support conditional create" in warnings
    assert "push Patient: the remote does not say it honours If-Match (versioning no-version)" in warnings
    assert "auth: the remote does not accept assertions signed ES384 (it lists RS384)" in warnings
    assert "auth: the remote does not list scope(s) system/Patient.cruds system/Appointment.cruds" in warnings
    assert report["supports"]["Patient"]["versioning"] == "no-version"


def test_a_remote_that_has_everything_gets_no_warning(tmp_path: Path) -> None:
    fake = FakeEhr()
    smart_conf = {"token_endpoint": "x", "grant_types_supported": ["client_credentials"],
                  "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                  "token_endpoint_auth_signing_alg_values_supported": ["ES384"], "scopes_supported": ["system/*.cruds"]}
    assert analyze(_cfg(tmp_path), fake.capability(), smart_conf)["warnings"] == []


@pytest.mark.asyncio
async def test_discovery_reads_both_documents_without_a_token_and_finds_the_token_endpoint(tmp_path: Path) -> None:
    fake = FakeEhr()
    cfg = _cfg(tmp_path)
    with respx.mock(assert_all_mocked=True) as router:
        router.route(host=HOST).mock(side_effect=fake)
        remote = Remote(cfg, http=httpx.AsyncClient())
        report = await discover(remote)
        await remote.aclose()
    assert report["warnings"] == []
    assert remote.tokens.token_url == "https://ehr.test/auth/token"
    assert all("authorization" not in r.headers for r in fake.requests)


@pytest.mark.asyncio
async def test_an_unreachable_remote_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, http={"attempts": 1})
    with respx.mock(assert_all_mocked=True) as router:
        router.route(host=HOST).mock(side_effect=httpx.ConnectError("refused"))
        remote = Remote(cfg, http=httpx.AsyncClient())
        report = await discover(remote)
        await remote.aclose()
    assert report["warnings"][0].startswith("the remote's metadata cannot be read (FHIRHUB-SYNC-UNREACHABLE")


# ================================================================================ notifications
def test_notification_payloads_name_their_resources() -> None:
    assert notification_refs(None, BASE) == []
    assert notification_refs({"resourceType": "Patient", "id": "p1"}, BASE) == [("Patient", "p1")]
    backport_r4 = {"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": {"resourceType": "Parameters", "parameter": [
            {"name": "notification-event", "part": [{"name": "event-number", "valueString": "3"},
                                                    {"name": "focus", "valueReference": {"reference": f"{BASE}/Appointment/a9"}}]}]}},
        {"fullUrl": f"{BASE}/Appointment/a9", "request": {"method": "PUT", "url": "Appointment/a9"}}]}
    assert notification_refs(backport_r4, BASE) == [("Appointment", "a9")]
    r4b = {"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": {"resourceType": "SubscriptionStatus", "notificationEvent": [{"focus": {"reference": "Patient/p2"}}]}},
        {"resource": {"resourceType": "Patient", "id": "p3"}}]}
    assert notification_refs(r4b, BASE) == [("Patient", "p2"), ("Patient", "p3")]
