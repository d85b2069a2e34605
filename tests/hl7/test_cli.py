"""The HL7v2 commands: ``fhirhub map``, ``fhirhub map test``, ``fhirhub replay``, ``fhirhub messages ...``.

They are typer apps in ``hub/hl7/cli.py``; here they are mounted on a typer app the way
``hub/cli.py`` registers them.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hub.app import Hub
from hub.hl7.cli import map_command, messages_app, replay_command
from tests.hl7.support import MAPPINGS, NEXTGEN, Client, adt, listener, msa, running, uid

app = typer.Typer()
app.command("map")(map_command)
app.command("replay")(replay_command)
app.add_typer(messages_app, name="messages")


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_map_prints_the_bundle_and_stores_nothing() -> None:
    code, out = cli("map", str(NEXTGEN / "nonbatch_01.hl7"))
    assert code == 0
    bundle = json.loads(out[: out.rindex("}") + 1])
    assert bundle["type"] == "transaction"
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Patient", "Appointment", "Practitioner"}


def test_map_reports_an_error_the_way_the_ack_would(tmp_path: Path) -> None:
    bad = tmp_path / "oru.hl7"
    bad.write_text("MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.5.1\rPID|1\r")
    code, out = cli("map", str(bad))
    assert code == 1 and '"ack": "AR"' in out and "HL7-UNSUPPORTED-MESSAGE" in out
    assert cli("map", str(tmp_path / "missing.hl7"))[0] == 2


def test_map_test_runs_the_golden_tests_with_readable_diffs(tmp_path: Path) -> None:
    code, out = cli("map", "test")
    assert code == 0 and " 0 failed" in out
    changed = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, changed)
    sex = changed / "codemaps" / "AdministrativeSex.yaml"
    text = sex.read_text()
    assert "code: \"female\"" in text
    sex.write_text(text.replace("code: \"female\"", "code: \"other\"", 1))
    code, out = cli("map", "test", "--mappings", str(changed))
    assert code == 1 and "FAIL" in out
    assert re.search(r'^- +"gender": "female",$', out, re.M) and re.search(r'^\+ +"gender": "other",$', out, re.M)
    broken = changed / "messages" / "ADT_A04.yaml"
    broken.write_text(broken.read_text().replace("template: PID-Patient", "template: PID-Nope"))
    code, out = cli("map", "test", "--mappings", str(changed))
    assert code == 2 and "ADT_A04.yaml:" in out and "PID-Nope" in out


@pytest.mark.asyncio
async def test_messages_list_show_reprocess_purge_and_replay(hub: Hub, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("FHIRHUB_DATABASE_URL", hub.settings.database_url)
    connectors = tmp_path / "connectors"
    connectors.mkdir()
    (connectors / "in.yaml").write_text("kind: mllp-listener\nname: test-in\nport: 2575\n")
    monkeypatch.setenv("FHIRHUB_CONNECTORS_DIR", str(connectors))
    ok, bad = uid(), uid()
    async with running(hub, [listener()]) as rt:
        c = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await c.call(adt(ok, uid(), family="Cliperson")))[0] == "AA"
        assert msa(await c.call(adt(bad, uid(), extra="IN1|1|PLAN1")))[0] == "AE"
        await c.close()

    def run(*args: str) -> tuple[int, str]:
        return await_in_thread(*args)

    code, out = run("messages", "list", "--control-id", ok, "--json")
    assert code == 0
    [row] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert row["status"] == "applied" and row["type"] == "ADT^A04"
    code, out = run("messages", "show", str(row["id"]))
    assert code == 0 and "MSA|AA|" + ok in out and "Patient/" in out and "Cliperson" in out
    code, out = run("messages", "show", str(row["id"]), "--raw")
    assert code == 0 and out.startswith("MSH|") and f"|{ok}|" in out and "MSA" not in out
    code, out = run("messages", "list", "--error", "HL7-MAP-REQUIRED", "--status", "error", "--json")
    assert code == 0 and bad in out and "IN1^1^4" in out
    code, out = run("messages", "list", "--since", "1h")
    assert code == 0 and "message(s)" in out
    code, out = run("messages", "reprocess", "--error", "HL7-MAP-REQUIRED", "--connector", "test-in")
    assert code == 1 and "still failing" in out  # nothing was fixed
    assert run("messages", "reprocess")[0] == 2

    # replay: the stored messages through a changed copy of the mapping files
    changed = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, changed)
    pid = changed / "segments" / "PID-Patient.yaml"
    pid.write_text(pid.read_text().replace("- {target: active, const: true", "- {target: active, const: false", 1))
    code, out = run("replay", "--since", "1h", "--mappings", str(changed), "--connector", "test-in")
    assert code == 0, out
    assert f"MSH-10 {ok}" in out and "active: true -> false" in out
    code, out = run("replay", "--since", "1h", "--connector", "test-in")
    assert code == 0 and "0 message(s) would change" in out  # the stored Bundles equal what the files make now

    code, out = run("messages", "purge", "--older-than", "1d")
    assert code == 0 and "0 message(s) deleted" in out
    assert run("messages", "purge")[0] == 2


def await_in_thread(*args: str) -> tuple[int, str]:
    """The CLI opens its own database connections; run it off the event loop's thread."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(cli, *args).result(timeout=300)


def test_asyncio_is_available() -> None:
    assert asyncio.get_event_loop_policy() is not None
