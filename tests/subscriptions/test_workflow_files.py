"""Workflow files are checked at start; every error names the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.settings import Settings
from hub.subscriptions import spec
from hub.subscriptions.spec import Matcher
from hub.subscriptions.workflows.loader import WorkflowFileError, load_workflows
from tests.subscriptions.helpers import _shared

GOOD = """trigger:
  resource: Appointment
  criteria: status=booked
steps:
  - name: wait
    wait: {duration: 1h}
"""


def matcher() -> Matcher:
    from hub.search.engine import SearchEngine

    return Matcher(SearchEngine(_shared()[2]))


def test_the_shipped_workflows_load() -> None:
    names = {w.name for w in load_workflows(Settings().workflows_dir, matcher())}
    assert names == {"appointment-reminders", "new-patient-intake", "intake-received", "no-show-follow-up",
                     "claim-check", "claim-denial"}


@pytest.mark.parametrize(("text", "line", "words"), [
    (GOOD + "  - name: bad\n    wait: {duration: soon}\n", 8, "not a duration"),
    (GOOD.replace("criteria: status=booked", "criteria: nosuchparam=1"), 3, "nosuchparam"),
    (GOOD + "  - name: x\n    send: {to: \"%patient\", text: {en: \"{{ %resource.( }}\"}}\n", 8, "does not parse"),
    (GOOD + "  - name: y\n    colour: blue\n", 7, "colour"),
    (GOOD.replace("steps:", "trigger2: 1\nsteps:"), 1, "trigger2"),
    ("trigger: [unclosed\n", 2, "YAML"),
    (GOOD + "  - name: m\n    message: {connector: mllp-out}\n", 8, "no HL7v2 connector"),
])
def test_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(WorkflowFileError) as err:
        load_workflows(tmp_path, matcher(), connectors=set())
    assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)
    assert words in str(err.value)


def test_subscription_types_for_the_scope_check() -> None:
    from hub.settings import Settings

    topics = spec.TopicCatalog.load(Settings().profiles_dir)
    assert spec.subscription_types({"criteria": "Observation?code=x"}, topics) == {"Observation"}
    assert spec.subscription_types({"criteria": "https://fhirhub.dev/SubscriptionTopic/claim-adjudicated"}, topics) == {"ClaimResponse"}
    assert spec.subscription_types({"criteria": "garbage"}, topics) == frozenset()
