from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import DIALECTS, fresh_database
from tests.server import HubProcess, running_hub


@pytest.fixture(scope="module", params=DIALECTS)
def hub_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """The real server, once per dialect, on a free port with an empty database."""
    workdir = tmp_path_factory.mktemp(f"hub-{request.param}")
    with fresh_database(request.param, workdir) as url, running_hub(url, workdir, {"FHIRHUB_AUTH": "off"}) as hub:
        yield hub
