from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.subscriptions.helpers import Mailbox, Receiver, receiver, smtp_server


@pytest.fixture
def http_receiver() -> Iterator[Receiver]:
    with receiver() as rec:
        yield rec


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box
