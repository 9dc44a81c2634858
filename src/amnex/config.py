"""Configuration: typed settings from `AMNEX_*` environment variables and an optional TOML file.

Settings are built once in an entry point (`cli.py`, tests) and passed down; nothing reads
`os.environ` at import time. Precedence, highest first: explicit arguments, environment
variables, the TOML file named by `AMNEX_CONFIG_FILE` (or `--config`), defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SmtpTls = Literal["none", "starttls", "implicit"]


class Settings(BaseSettings):
    """Every knob Amnex has. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="AMNEX_", extra="forbid", frozen=True)

    # Storage
    database_url: str = "sqlite+aiosqlite:///.amnex/amnex.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL only a process crash, and is faster."
    )
    sqlite_busy_timeout_ms: int = Field(
        30_000,
        ge=0,
        description="How long a SQLite statement waits for another connection's write lock "
        "before failing with 'database is locked'. The accept path retries such failures for "
        "`accept_db_retry_s`, so a wait longer than that delays its 503 by up to this much.",
    )
    database_pool_size: int = 10
    redis_url: str | None = None

    # HTTP
    dev_mode: bool = False
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR ranges of proxies that terminate TLS and set "
        "X-Forwarded-Proto: https when they did.",
    )
    hsts_max_age_s: int = 31_536_000
    max_body_bytes: int = 1_048_576
    default_rate_limit_per_s: int = 100
    api_key_cache_ttl_s: float = 5.0
    idempotency_ttl_s: int = 86_400

    # Accept path: group commit
    accept_batch_max: int = 256
    accept_writers: int = Field(0, description="0 = 1 on SQLite, 4 on PostgreSQL.")
    accept_db_retry_s: float = 2.0

    # Accept path: backpressure (api.backpressure)
    max_queue_depth: int = Field(
        200_000,
        ge=0,
        description="`POST /v1/messages` answers 503 `queue_full` while this many messages "
        "are due and not yet claimed (0: never).",
    )
    max_account_backlog: int = Field(
        50_000,
        ge=0,
        description="`POST /v1/messages` answers 429 `account_backlog_full` to an account "
        "with this many due messages of its own (0: never).",
    )
    max_connector_backlog: int = Field(
        100_000,
        ge=0,
        description="`POST /v1/messages` answers 503 `connector_backlog_full` to an SMS "
        "routed to a connector with this many due messages (0: never).",
    )
    backpressure_sample_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often each API process samples the due queue (depth, per-account "
        "backlog, oldest due message, pending webhooks).",
    )

    # Dispatch
    claim_batch_size: int = 100
    lease_s: float = 60.0
    poll_interval_s: float = Field(0.1, le=0.1)
    claim_coalesce_s: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="After a claim that found fewer due messages than it asked for, the "
        "next claim waits this long, however often the worker is woken.",
    )
    worker_concurrency: int = 64
    retry_base_s: float = 2.0
    retry_max_s: float = 600.0
    max_retry_age_s: float = 86_400.0
    shutdown_grace_s: float = 20.0
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve the worker's Prometheus metrics on this port (off when unset).",
    )
    worker_metrics_host: str = "127.0.0.1"

    # SMS: receipts, inbound messages, routing
    receipt_wait_s: float = Field(
        172_800.0,
        gt=0,
        description="How long a `sent` SMS without a validity period waits for its receipt "
        "before it becomes `undelivered` with `receipt_timeout` (plus `receipt_grace_s`).",
    )
    receipt_grace_s: float = Field(
        600.0, ge=0, description="Added to the validity period before `receipt_timeout`."
    )
    unmatched_receipt_ttl_s: float = Field(
        604_800.0,
        gt=0,
        description="A receipt whose message id matches nothing is kept this long, then dropped "
        "(logged and counted).",
    )
    inbound_part_ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="Parts of a multi-part inbound SMS wait this long for the rest; then what "
        "arrived is stored as the message, marked incomplete.",
    )
    route_cache_ttl_s: float = Field(
        2.0, gt=0, description="How often API and worker processes reload routes and connectors."
    )
    bind_lease_ttl_s: float = Field(
        20.0,
        gt=0,
        description="How long a worker holds a connector's bind slot without renewing it; "
        "at least twice `bind_lease_renew_s`.",
    )
    bind_lease_renew_s: float = Field(
        5.0,
        gt=0,
        description="How often each worker renews its bind slots and rebalances them.",
    )

    # Compliance: the operator's platform-wide rules
    blocked_countries: str = Field(
        "", description="Comma-separated ISO 3166 codes no account may send SMS to."
    )
    blocked_prefixes: str = Field(
        "",
        description="Comma-separated E.164 prefixes blocked for every account, added to the "
        "built-in premium-rate and fraud-prone ranges.",
    )
    exempt_prefixes: str = Field(
        "", description="Comma-separated E.164 prefixes lifted out of the built-in blocked ranges."
    )

    # Privacy: content at rest, retention, the purge
    content_key_period_s: int = Field(
        86_400,
        ge=60,
        description="Each content key encrypts the content written during one such period; "
        "a key is destroyed once nothing under it is left.",
    )
    failed_content_retention_s: float = Field(
        259_200,
        ge=0,
        description="Content of a failed or undelivered message is kept this long (72 h) for "
        "the client to look into; delivered, rejected and canceled content goes at once.",
    )
    inbound_content_retention_s: float = Field(
        2_592_000, ge=0, description="Text of inbound messages is kept this long (30 days)."
    )
    metadata_retention_days: int = Field(
        365, ge=1, description="Messages in a final status are deleted this long after creation."
    )
    max_content_retention_days: int = Field(
        30,
        ge=0,
        description="The longest an account may keep content (`PATCH .../retention`); an "
        "account's longer value, stored before the limit was lowered, is capped to it.",
    )
    max_metadata_retention_days: int = Field(
        730,
        ge=1,
        description="The longest an account may keep message metadata; capped the same way.",
    )
    purge_interval_s: float = Field(
        60.0, gt=0, description="How often `amnex worker` runs the purge."
    )
    purge_chunk: int = Field(1000, ge=1, le=100_000, description="Rows per purge transaction.")
    audit_retention_days: int = Field(
        2_190,
        ge=30,
        description="Audit entries older than this (6 years) are deleted by the purge; each "
        "chain keeps verifying from an anchor at its oldest remaining entry.",
    )
    audit_personal_retention_days: int = Field(
        365,
        ge=1,
        description="The personal fields of audit entries (a person's name, an address) are "
        "deleted this long after the entry; the entry and its chain stay.",
    )
    subject_export_ttl_days: int = Field(
        30, ge=1, description="An access or portability export can be downloaded this long."
    )
    privacy_records_file: Path | None = Field(
        None,
        description="A TOML file with the records of processing (controller, privacy contact, "
        "supervisory authority, data regions, purposes, processors): see "
        "docs/privacy-records.example.toml. Unset: built-in defaults marked `not configured`.",
    )

    # Webhooks
    webhook_allow_loopback: bool = Field(
        False,
        description="Let webhook endpoints resolve to loopback addresses (`amnex dev` does).",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhook endpoints resolve to private, link-local and CGNAT "
        "addresses (an internal receiver). Cloud metadata addresses stay refused.",
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDR networks webhook endpoints may resolve to even though they are "
        "private (e.g. 10.20.0.0/16 for one internal receiver).",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=60, description="One webhook delivery attempt's deadline."
    )
    webhook_concurrency: int = Field(
        50, ge=1, le=1000, description="Webhook deliveries in flight per worker."
    )
    webhook_log_retention_days: int = Field(
        30, ge=1, description="The webhook delivery log (attempts, no bodies) is kept this long."
    )

    # Secrets at rest
    master_key: SecretStr | None = Field(
        None,
        description="32 random bytes, base64: wraps every key that encrypts data at rest "
        "(content, addresses, carrier passwords). "
        "Generate with `amnex crypto generate-key`.",
    )
    master_key_file: Path | None = Field(
        None, description="A file holding the master key (base64), instead of `master_key`."
    )
    previous_master_keys: SecretStr | None = Field(
        None,
        description="Comma-separated earlier master keys, accepted for opening keys while "
        "`amnex crypto rotate-master` re-wraps them under the current one.",
    )

    # Email channel (SMTP relay or the recipient's server)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_tls: SmtpTls = "none"
    smtp_validate_certs: bool = True
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = 30.0
    smtp_helo_name: str | None = None
    smtp_pool_size: int = 8
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key_file: Path | None = None

    # Email: unsubscribe and bounces
    public_url: str | None = Field(
        None,
        description="The address recipients reach the API at (e.g. https://amnex.example.com): "
        "one-click unsubscribe links in marketing email point under it. `amnex dev` defaults "
        "it to its own address. Without it marketing email waits (temporary `internal_error`).",
    )
    unsubscribe_secret: SecretStr | None = Field(
        None,
        description="Key material for unsubscribe tokens (at least 32 random characters). "
        "Unset: the master key; without one, a key derived from `database_url` (weak). "
        "Changing the key source breaks the links in email already sent.",
    )

    # Email: the bounce receiver (VERP envelope senders, DSN and ARF reports)
    bounce_domain: str | None = Field(
        None,
        max_length=200,
        # Two or more ASCII labels (an IDN in its xn-- form): it goes into MAIL FROM as is.
        pattern=(
            r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
            r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
        ),
        description="Send email with the envelope sender `bounces+<message id>@<bounce_domain>` "
        "(VERP), so that bounces and complaints name their message; the domain's MX must lead "
        "to the bounce receiver. Unset: the From address is the envelope sender, as before.",
    )
    bounce_listen_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="`amnex worker` runs the bounce receiver (an SMTP server) on this port when "
        "set (0: any free port). Needs `bounce_domain`.",
    )
    bounce_listen_host: str = Field(
        "127.0.0.1", description="The address the bounce receiver listens on."
    )
    bounce_max_message_bytes: int = Field(
        1_048_576,
        ge=10_240,
        description="Mail to the bounce receiver larger than this is refused (552).",
    )

    # Logging
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text`: a line for people; `json`: one JSON object per line, for a log "
        "collector. Either way addresses are masked and message content is dropped.",
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the plain URLs operators write and pick the async driver for them."""
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.removeprefix("sqlite:///")
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+asyncpg://" + value.removeprefix(plain)
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_accept_writers(self) -> int:
        if self.accept_writers > 0:
            return 1 if self.is_sqlite else self.accept_writers
        return 1 if self.is_sqlite else 4

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("AMNEX_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings in an entry point; `config_file` wins over `AMNEX_CONFIG_FILE`."""
    if config_file is not None:
        if not config_file.is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        os.environ["AMNEX_CONFIG_FILE"] = str(config_file)
    return Settings(**overrides)
