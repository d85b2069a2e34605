"""Settings, read from ``FHIRHUB_*`` environment variables (README lists them all)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIRHUB_", extra="ignore")

    database_url: str = Field("sqlite:///var/fhirhub.db", description="SQLAlchemy URL; postgresql+psycopg:// selects PostgreSQL")
    host: str = Field("127.0.0.1", description="address `fhirhub serve` listens on")
    port: int = Field(8080, description="port `fhirhub serve` listens on")
    base_url: str | None = Field(None, description="public FHIR base URL used in fullUrl/links; default: taken from each request")
    profiles_dir: Path = Field(ROOT / "profiles", description="FHIR conformance resources loaded at start")
    default_page_size: int = Field(20, description="_count when the client gives none")
    max_page_size: int = Field(1000, description="largest _count honoured")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="largest request body accepted (413 beyond)")
    max_bundle_entries: int = Field(10_000, description="largest batch/transaction accepted (413 beyond)")
    db_pool_size: int = Field(20, description="database connection pool size")
    log_level: str = Field("INFO", description="log level (no PHI is logged at INFO and above)")
    auth: str = Field("on", description="on: every FHIR call needs a bearer token; off: only when listening on loopback")
    auth_issuer: str | None = Field(None, description="accept tokens from this external OIDC issuer instead of the hub's own")
    auth_jwks_url: str | None = Field(None, description="JWKS URL of the external issuer (default: from its discovery document)")
    auth_audience: str | None = Field(None, description="audience tokens must carry (default: the FHIR base URL)")
    token_ttl: int = Field(300, description="lifetime of access tokens the hub issues, in seconds")
    rate_limit: float = Field(200.0, description="requests per second per client (0: no limit)")
    rate_burst: int = Field(400, description="requests a client may burst above the rate")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS (empty: CORS off)")
    tls_certfile: Path | None = Field(None, description="PEM certificate: serve HTTPS")
    tls_keyfile: Path | None = Field(None, description="PEM private key for tls_certfile")


def resolve_database_url(url: str) -> str:
    """Make relative SQLite paths relative to the working directory and create their folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url
