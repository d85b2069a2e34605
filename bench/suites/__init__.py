"""Benchmark suites. Each module has ``NAME``, ``TITLE`` and ``run(db, workdir, opts) -> Section``.

To add one (search, auth overhead, subscriptions, MLLP …): write ``bench/suites/NAME.py`` with those
three names, using :mod:`bench.harness` for databases, servers and load, and list it in ``SUITES``.
``python -m bench --only NAME`` then runs it alone.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Protocol

from bench.harness import Options, Section
from bench.suites import auth, mllp, search, store, subscriptions, sync


class Suite(Protocol):
    NAME: str
    TITLE: str

    def run(self, db: str, workdir: Path, opts: Options) -> Section: ...


SUITES: dict[str, ModuleType] = {m.NAME: m for m in (store, auth, search, subscriptions, sync, mllp)}
