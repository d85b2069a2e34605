"""HL7v2 settings, read from ``FHIRHUB_*`` environment variables (kept apart from ``hub/settings.py``).

| variable | default | meaning |
|---|---|---|
| ``FHIRHUB_CONNECTORS_DIR`` | ``connectors/`` | connector definitions (``*.yaml``) loaded by ``fhirhub serve`` |
| ``FHIRHUB_MAPPINGS_DIR`` | ``mappings/`` | the mapping set a connector uses when it names none |
| ``FHIRHUB_MLLP_PORT_OFFSET`` | ``0`` | added to the port of every ``mllp-listener`` (run several hubs, tests) |
| ``FHIRHUB_MLLP_PORT_<NAME>`` | — | the port of listener ``<name>`` (upper case, ``-`` as ``_``); wins over the offset |
| ``FHIRHUB_MLLP_HOST_<NAME>`` / ``FHIRHUB_MLLP_TARGET_<NAME>`` | — | listener bind address / sender ``host:port`` override |
| ``FHIRHUB_MAPPINGS_RELOAD_SECONDS`` | ``2`` | how often mapping files are checked for changes (0: never) |
| ``FHIRHUB_HL7_RETENTION_DAYS`` | ``0`` | purge stored messages older than this every hour (0: keep) |
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[2]


class Hl7Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIRHUB_", extra="ignore")

    connectors_dir: Path = Field(ROOT / "connectors", description="connector definitions loaded at start")
    mappings_dir: Path = Field(ROOT / "mappings", description="default mapping set")
    mllp_port_offset: int = Field(0, description="added to every mllp-listener port")
    mappings_reload_seconds: float = Field(2.0, description="mapping change check interval (0: never)")
    hl7_retention_days: float = Field(0.0, description="purge stored messages older than this (0: keep)")


def env_name(name: str) -> str:
    """``mllp-inbound`` -> ``MLLP_INBOUND``."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def override(kind: str, connector: str) -> str | None:
    """``FHIRHUB_MLLP_<KIND>_<NAME>`` (kind PORT, HOST or TARGET), or None."""
    value = os.environ.get(f"FHIRHUB_MLLP_{kind}_{env_name(connector)}")
    return value.strip() if value and value.strip() else None
