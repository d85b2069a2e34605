"""Every sample message, through the whole inbound pipeline into a real store (SQLite and PostgreSQL).

``test_samples.py`` checks what conversion makes of each message; here each one is also committed
through the one write path (validation, conditional writes, search index). The ACK codes must be
the same: a message the mapping accepts is also valid FHIR (AA), unsupported types are AR, the
deliberately bad ones AE; nothing crashes and no ACK carries a 5xx-class failure.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hub.app import Hub
from hub.hl7.errors import Hl7Error
from hub.hl7.parse import split_messages
from hub.hl7.pipeline import MappingCache, Pipeline
from tests.hl7.support import listener
from tests.hl7.test_samples import EXPECTED, FILES, ROOT, default_expectation


def test_every_sample_is_committed_or_answered_like_its_conversion(hub: Hub) -> None:
    pipeline = Pipeline(hub.router, listener(message_types=()), MappingCache(), "http://hub.test/fhir")
    mismatches = []
    total: Counter[str] = Counter()
    for path in FILES:
        rel = str(path.relative_to(ROOT))
        raw = path.read_bytes()
        want = EXPECTED[rel][0] if rel in EXPECTED else default_expectation(raw)
        if isinstance(want, str):  # a file that cannot be split into messages: the listener never sees it whole
            continue
        try:
            messages = split_messages(raw)
        except Hl7Error:
            continue
        got: Counter[str] = Counter()
        for i, m in enumerate(messages):
            result = pipeline.process(i + 1, m.encode())
            got[result.ack_code] += 1
            assert result.outcome.error_code not in ("HL7-INTERNAL", "FHIRHUB-INTERNAL"), (rel, i)
        total.update(got)
        if dict(got) != want:
            mismatches.append(f"{rel}: committed {dict(got)}, converted {want}")
    assert not mismatches, "\n".join(mismatches)
    assert total["AA"] >= 200 and total["AR"] >= 100


def test_the_sample_folder_is_there() -> None:
    assert Path(ROOT).is_dir() and FILES
