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
    workers: int = Field(
        1, ge=1, le=64,
        description="API worker processes; above 1, the REST API runs in that many processes and the background"
        " services (subscriptions, workflows, MLLP, sync) in one more (see ARCHITECTURE: Processes)",
    )
    base_url: str | None = Field(None, description="public FHIR base URL used in fullUrl/links; default: taken from each request")
    profiles_dir: Path = Field(ROOT / "profiles", description="FHIR conformance resources loaded at start")
    default_page_size: int = Field(20, description="_count when the client gives none")
    max_page_size: int = Field(1000, description="largest _count honoured")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="largest request body accepted (413 beyond)")
    max_bundle_entries: int = Field(10_000, description="largest batch/transaction accepted (413 beyond)")
    db_pool_size: int = Field(20, description="database connection pool size")
    read_threads: int = Field(0, description="threads per process running reads and searches (0: 4 on SQLite, 8 on PostgreSQL)")
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
    # --- subscriptions and workflows (issue 5) ---
    subscriptions: str = Field("on", description="on: `fhirhub serve` runs the subscription dispatcher, deliveries and workflows")
    subscription_start: str = Field("beginning", description="beginning | head: where the dispatcher of a new database starts reading the outbox")
    subscription_poll: float = Field(2.0, description="seconds between recovery polls of the outbox and of due retries (commits wake it at once)")
    subscription_concurrency: int = Field(4, description="deliveries in flight at once per endpoint (scheme://host:port)")
    subscription_senders: int | None = Field(
        None, description="processes that send rest-hook deliveries (0: the services process sends them itself); "
                          "default 1 when serving with API workers (FHIRHUB_WORKERS above 1), else 0")
    subscription_timeout: float = Field(10.0, description="seconds a rest-hook endpoint has to answer")
    subscription_retry_initial: float = Field(1.0, description="first retry delay in seconds (then exponential, with jitter)")
    subscription_retry_max: float = Field(600.0, description="longest delay between two retries, in seconds")
    subscription_retry_for: float = Field(86400.0, description="seconds a delivery is retried before it is parked as dead")
    subscription_error_after: int = Field(5, description="consecutive failed attempts that put a subscription in status error")
    subscription_queue: int = Field(5000, description="pending deliveries per endpoint held in memory (the rest wait in the database)")
    subscription_retention_days: float = Field(30.0, description="days delivered and dead deliveries are kept (for $events and $resend)")
    workflows_dir: Path = Field(ROOT / "workflows", description="folder of workflow files (*.yaml)")
    workflow_concurrency: int = Field(4, description="workflow runs executing at once")
    workflow_retry_for: float = Field(86400.0, description="seconds a failing workflow step (channel, webhook) is retried")
    smtp_host: str | None = Field(None, description="SMTP server for the email channel (unset: email is not available)")
    smtp_port: int = Field(25, description="SMTP port")
    smtp_username: str | None = Field(None, description="SMTP login (optional)")
    smtp_password: str | None = Field(None, description="SMTP password (optional)")
    smtp_starttls: bool = Field(False, description="upgrade the SMTP connection with STARTTLS")
    smtp_from: str = Field("clinic@fhirhub.invalid", description="From address of workflow emails")
    sms_url: str | None = Field(None, description="HTTP endpoint of the SMS provider (unset: SMS is not available)")
    sms_token: str | None = Field(None, description="bearer token sent to the SMS provider")
    sms_from: str | None = Field(None, description="sender number or name given to the SMS provider")
    # --- EHR sync over FHIR REST (issue 7) ---
    sync_connectors_dir: Path = Field(ROOT / "connectors", description="folder whose fhir-*.yaml files (kind fhir-rest) define the EHR sync connectors")


def resolve_database_url(url: str) -> str:
    """Make relative SQLite paths relative to the working directory and create their folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url
