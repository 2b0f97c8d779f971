"""The ``audit:`` and ``detection:`` sections of the declaration: the audit collector's
listener, store and checkpoints, how producers deliver to it, and the Sigma rules it runs::

    audit:
      checkpoint_every: 1000        # sign the chain's head every N records ...
      checkpoint_interval: 10s      # ... or T, whichever comes first
      spool: {max_bytes: 67108864, on_full: block}
      alerts:
        syslog:                     # RFC 5424 over TLS; a client certificate if it asks
          {host: siem.example, ca_file: siem-ca.pem, cert_file: tm.pem, key_file: tm.key}
      retention:
        default: 365d               # prune records older than this (none: keep for ever)
        classes: {6003: 90d, 2004: null}   # per OCSF class_uid; null keeps it for ever
        interval: 1h                # how often the collector prunes
        database: postgresql+asyncpg://audit_pruner@db/audit   # PostgreSQL only
      tracing:
        sample_ratio: 0.1           # allowed requests traced; denied and failed: all
        retention: 7d               # spans older than this are pruned
        otlp: {url: "http://127.0.0.1:4318"}   # also forward spans (OTLP/HTTP protobuf)
    detection:
      rules: [rules/]               # more Sigma rule files or folders (beside the file)
      timezone: Europe/Paris
      working_hours: [8, 18]
      anomaly: {window: 10m, learning: 1d, threshold: 3}   # per-principal baselines

    audit:
      console: {port: 8443}         # the web console (admins sign in at the provider)
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import ClassVar, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from trustmesh.config.durations import Duration

__all__ = [
    "AlertsConfig",
    "AnomalyConfig",
    "AuditConfig",
    "CheckpointWebhookConfig",
    "ConsoleConfig",
    "DetectionConfig",
    "ExportConfig",
    "OtlpConfig",
    "RetentionConfig",
    "SpoolConfig",
    "SyslogConfig",
    "TracingConfig",
    "WebhookConfig",
]

_MODEL_CONFIG: Final = ConfigDict(frozen=True, extra="forbid", strict=True)


class SpoolConfig(BaseModel):
    """Where a producer keeps the events the collector has not acknowledged yet."""

    model_config = _MODEL_CONFIG

    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        le=1 << 40,
        description="The most a producer's spool (fsynced, under <state>/spool/) may hold.",
    )
    on_full: Literal["block", "drop"] = Field(
        default="block",
        description="A full spool: 'block' the producer until the collector takes events "
        "again, or 'drop' them, counted, with an event and an alert once it is back.",
    )


class SignedPostConfig(BaseModel):
    """Where the collector POSTs JSON signed with HMAC-SHA256 (``X-Trustmesh-Signature``,
    see trustmesh.audit.webhook)."""

    model_config = _MODEL_CONFIG

    url: str = Field(
        pattern=r"^https://[^\s@/]+(/[^\s]*)?$",
        max_length=2048,
        description="https only; no credentials in it.",
    )
    secret_file: str = Field(
        min_length=1,
        description="A file (mode 0600 or stricter) holding the signing secret, at least "
        "16 bytes; relative to the declaration's folder. Never the secret itself.",
    )
    ca_file: str | None = Field(
        default=None, description="PEM CA certificates to trust instead of the system's."
    )


class WebhookConfig(SignedPostConfig):
    """A receiver of alerts: each is POSTed as JSON, signed."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Names it in logs.")
    min_level: Literal["informational", "low", "medium", "high", "critical"] = Field(
        default="low", description="Alerts of this level or above are sent."
    )


class _ClientCertificate(BaseModel):
    """The certificate the collector presents to a receiver that asks for one (mutual
    TLS): both files, or neither."""

    model_config = _MODEL_CONFIG

    cert_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM certificate chain (the collector's certificate first) presented to "
        "a receiver that asks for one (mutual TLS); relative to the declaration's folder. "
        "Goes with key_file.",
    )
    key_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM private key of cert_file, unencrypted, in a file (mode 0600 or "
        "stricter) no one but its owner may read; relative to the declaration's folder.",
    )

    @model_validator(mode="after")
    def _pair(self) -> _ClientCertificate:
        if (self.cert_file is None) != (self.key_file is None):
            pair = ("cert_file", "key_file")
            given, missing = pair if self.key_file is None else pair[::-1]
            problem = PydanticCustomError(
                "invalid",
                "{problem} (expected {expected})",
                {
                    "problem": f"{given} without {missing}",
                    "expected": "both cert_file and key_file, or neither",
                },
            )
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [InitErrorDetails(type=problem, loc=(missing,), input=None)],
            )
        return self


class SyslogConfig(_ClientCertificate):
    """A syslog receiver: RFC 5424 over TLS (RFC 5425), octet-counted."""

    model_config = _MODEL_CONFIG

    host: str = Field(pattern=r"^[A-Za-z0-9.:_-]{1,253}$", description="Receiver's host name.")
    port: int = Field(default=6514, ge=1, le=65535, description="RFC 5425's port by default.")
    ca_file: str | None = Field(
        default=None, description="PEM CA certificates to trust instead of the system's."
    )


class AlertsConfig(BaseModel):
    """Where the collector sends the alerts it raises, besides its own store."""

    model_config = _MODEL_CONFIG

    webhooks: list[WebhookConfig] = Field(default_factory=list, max_length=32)
    syslog: SyslogConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> AlertsConfig:
        names = [hook.name for hook in self.webhooks]
        if len(set(names)) != len(names):
            raise PydanticCustomError("invalid", "each webhook name once", {})
        return self


class RetentionConfig(BaseModel):
    """How long the audit log keeps each class of event (see trustmesh.audit.retention):
    a record is pruned once a checkpoint signed at least its retention ago covers it,
    and each prune leaves a signed prune checkpoint that keeps the chain verifiable."""

    model_config = _MODEL_CONFIG

    default: Duration | None = Field(
        default=None, description="Keep records this long; none (the default): for ever."
    )
    classes: dict[int, Duration | None] = Field(
        default_factory=dict,
        max_length=256,
        description="Per OCSF class_uid, a retention that overrides the default (null: for ever).",
    )
    interval: Duration = Field(
        default="1h", validate_default=True, description="How often the collector prunes."
    )
    database: str | None = Field(
        default=None,
        pattern=r"^postgresql(\+asyncpg)?://",
        max_length=2048,
        description="PostgreSQL only: the URL of a role that may DELETE audit records and "
        "INSERT prune checkpoints (trustmesh.audit.ledger_schema.prune_grants); the "
        "collector's own role cannot. Without it pruning is off on PostgreSQL (the "
        "collector says so when it starts). On SQLite the collector's own file is used.",
    )

    @field_validator("classes")
    @classmethod
    def _class_uids(cls, value: dict[int, object]) -> dict[int, object]:
        for uid in value:
            if not 0 < uid < 2**31:
                raise PydanticCustomError(
                    "invalid", "{uid} is not an OCSF class_uid (1 to 2^31-1)", {"uid": uid}
                )
        return value

    @model_validator(mode="after")
    def _bounds(self) -> RetentionConfig:
        if not timedelta(seconds=10) <= self.interval <= timedelta(days=7):
            raise PydanticCustomError("invalid", "retention.interval must be from 10s to 7d", {})
        ages = [self.default, *self.classes.values()]
        if any(age is not None and age < timedelta(hours=1) for age in ages):
            raise PydanticCustomError(
                "invalid", "a retention is at least 1h (or null: keep for ever)", {}
            )
        return self


class ExportConfig(BaseModel):
    """How ``trustmesh audit export`` sends the log to another tool."""

    model_config = _MODEL_CONFIG

    pseudonymise_key_file: str | None = Field(
        default=None,
        min_length=1,
        description="A file (mode 0600 or stricter) holding at least 32 random bytes: "
        "exported subjects and addresses become keyed pseudonyms (HMAC-SHA256); relative "
        "to the declaration's folder. Never the key itself.",
    )


class OtlpConfig(_ClientCertificate):
    """An OTLP/HTTP receiver (an OpenTelemetry Collector, Jaeger, Tempo) to which the
    collector forwards every span it stores: protobuf, ``POST <url>/v1/traces``."""

    model_config = _MODEL_CONFIG

    url: str = Field(
        pattern=r"^(https://[^\s@/]+|http://(127\.0\.0\.1|\[::1\]|localhost)(:[0-9]{1,5})?)(/[^\s]*)?$",
        max_length=2048,
        description="The receiver's base URL (/v1/traces is added): https, or plain http "
        "to a loopback address only; no credentials in it.",
    )
    ca_file: str | None = Field(
        default=None, description="PEM CA certificates to trust instead of the system's."
    )


class TracingConfig(BaseModel):
    """Which requests every component traces (OpenTelemetry spans, W3C trace context),
    how long the collector keeps their spans, and where else it sends them."""

    model_config = _MODEL_CONFIG

    enabled: bool = Field(
        default=True, description="Whether components record spans at all (false: none)."
    )
    sample_ratio: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="The share of allowed requests traced, decided where a trace starts "
        "(the gateway) and followed by every hop. A denied or failed request is always "
        "traced.",
    )
    max_queue: int = Field(
        default=2048,
        ge=16,
        le=1_000_000,
        description="Spans a component holds for the collector at most; past it, spans "
        "are dropped and counted (the decisions stay in the audit log).",
    )
    retention: Duration = Field(
        default="7d", validate_default=True, description="Spans older than this are pruned."
    )
    otlp: OtlpConfig | None = Field(
        default=None, description="Also forward every stored span to this OTLP receiver."
    )


class CheckpointWebhookConfig(SignedPostConfig):
    """Where every signed checkpoint is also POSTed, signed like the alert webhooks: a
    copy off this machine, so cutting the log and the local checkpoint file together
    stays visible."""


class ConsoleConfig(BaseModel):
    """The web console, served by the audit collector's process on a TLS listener of its
    own; admins sign in at the identity provider (authorization code + PKCE, TOTP)."""

    model_config = _MODEL_CONFIG

    port: int = Field(
        default=0, ge=0, le=65535, description="Port of its listener on listen.host; 0 picks one."
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https://[A-Za-z0-9.:\[\]-]{1,253}$",
        description="The https origin browsers use to reach it (behind a proxy, say); by "
        "default https://127.0.0.1:<port>, and the provider then lets the sign-in return "
        "to any loopback port (RFC 8252 §7.3).",
    )
    tls_cert: str | None = Field(
        default=None,
        description="PEM certificate chain, relative to this file (required outside dev "
        "mode; dev mode issues one from the local edge CA).",
    )
    tls_key: str | None = Field(default=None, description="PEM private key of tls_cert.")
    session_ttl: Duration = Field(
        default="8h", validate_default=True, description="A sign-in lasts at most this long…"
    )
    idle_timeout: Duration = Field(
        default="30m", validate_default=True, description="…and ends after this long unused."
    )
    refresh: Duration = Field(
        default="2s", validate_default=True, description="How often live pages ask for news."
    )

    #: Its OAuth client at the provider (authenticated by the collector's SVID).
    client_id: ClassVar[str] = "trustmesh-console"

    @property
    def redirect_uri(self) -> str:
        """Where the provider sends a sign-in back: on the loopback address without a
        port unless ``public_url`` says otherwise (the port then varies, RFC 8252 §7.3)."""
        return f"{self.public_url or 'https://127.0.0.1'}/auth/callback"

    @model_validator(mode="after")
    def _lifetimes(self) -> ConsoleConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise PydanticCustomError("invalid", "tls_cert and tls_key go together", {})
        if not timedelta(minutes=1) <= self.idle_timeout <= self.session_ttl <= timedelta(hours=24):
            raise PydanticCustomError(
                "invalid", "1m <= idle_timeout <= session_ttl <= 24h is required", {}
            )
        if not timedelta(seconds=1) <= self.refresh <= timedelta(minutes=1):
            raise PydanticCustomError("invalid", "refresh must be from 1s to 1m", {})
        return self


class AuditConfig(BaseModel):
    """The audit collector; `trustmesh up` runs it (every component delivers to it)."""

    model_config = _MODEL_CONFIG

    port: int = Field(
        default=0, ge=0, le=65535, description="Port on listen.host (mTLS); 0 picks one."
    )
    database: str | None = Field(
        default=None,
        description="SQLAlchemy async URL (postgresql+asyncpg://…); default SQLite in the "
        "state directory. On PostgreSQL the collector needs only INSERT and SELECT.",
    )
    checkpoint_every: int = Field(
        default=1000, ge=1, le=10_000_000, description="Sign the chain every N records…"
    )
    checkpoint_interval: Duration = Field(
        default="10s", validate_default=True, description="…or after this long, if sooner."
    )
    checkpoint_file: str | None = Field(
        default=None,
        description="Where signed checkpoints are also appended, outside the database "
        "(default <state>/audit/checkpoints.jsonl): truncation stays visible.",
    )
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    checkpoint_webhook: CheckpointWebhookConfig | None = Field(
        default=None, description="Also POST each signed checkpoint here (signed)."
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    console: ConsoleConfig | None = Field(
        default=None,
        description="Serve the web console too (`trustmesh status` names it `console`).",
    )

    @model_validator(mode="after")
    def _interval(self) -> AuditConfig:
        if not timedelta(seconds=1) <= self.checkpoint_interval <= timedelta(days=1):
            raise PydanticCustomError("invalid", "checkpoint_interval must be from 1s to 24h", {})
        if self.retention.database is not None and not (self.database or "").startswith(
            "postgresql"
        ):
            raise PydanticCustomError(
                "invalid",
                "retention.database is for a PostgreSQL audit database; on SQLite the "
                "collector prunes its own file",
                {},
            )
        return self


class AnomalyConfig(BaseModel):
    """Per-principal baselines learned from the event stream (trustmesh.audit.anomaly):
    an alert, explained, when a principal strays from its own."""

    model_config = _MODEL_CONFIG

    enabled: bool = Field(default=True, description="Learn baselines and alert on them.")
    window: Duration = Field(
        default="10m", validate_default=True, description="Each principal is judged per window."
    )
    learning: Duration = Field(
        default="1d",
        validate_default=True,
        description="How long a principal is only learned, from when it is first seen.",
    )
    threshold: float = Field(
        default=3.0, gt=0, le=100, description="The score that makes a window an alert."
    )
    rate_factor: float = Field(
        default=4.0, gt=1, le=1000, description="A rate this many times the usual counts."
    )
    min_requests: int = Field(
        default=20, ge=1, le=1_000_000, description="Fewer requests to one endpoint never do."
    )
    stuffing_accounts: int = Field(
        default=5,
        ge=2,
        le=10_000,
        description="An address refused sign-in for this many names in a day, none let in.",
    )
    level: Literal["informational", "low", "medium", "high", "critical"] = "high"

    @model_validator(mode="after")
    def _spans(self) -> AnomalyConfig:
        if not timedelta(minutes=1) <= self.window <= timedelta(days=1):
            raise PydanticCustomError("invalid", "anomaly.window must be from 1m to 1d", {})
        if not timedelta(0) <= self.learning <= timedelta(days=90):
            raise PydanticCustomError("invalid", "anomaly.learning must be from 0 to 90d", {})
        return self


class DetectionConfig(BaseModel):
    """The Sigma rules the collector runs on every event it stores."""

    model_config = _MODEL_CONFIG

    shipped_rules: bool = Field(
        default=True, description="Run trustmesh's own ruleset (brute force, lateral movement…)."
    )
    rules: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="More Sigma rule files or folders, relative to the declaration's folder.",
    )
    timezone: str = Field(default="UTC", description="IANA timezone of the working hours.")
    working_days: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5],
        description="ISO weekdays (1 Monday … 7 Sunday) that are working days.",
    )
    working_hours: list[int] = Field(
        default_factory=lambda: [8, 18],
        min_length=2,
        max_length=2,
        description="[start, end): the hours of a working day, local time.",
    )
    dry_run: bool = Field(
        default=False, description="Response actions are only recorded, never taken."
    )
    warm_start: int = Field(
        default=100_000,
        ge=0,
        le=10_000_000,
        description="At start, run detection again over at most this many of the newest "
        "events within the rules' longest window (0: start with empty windows).",
    )
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    never_block: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        max_length=1024,
        description="Addresses or networks no automated response blocks at the gateway "
        "(loopback: the stack itself and its operator).",
    )

    @field_validator("never_block")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                ipaddress.ip_network(text)
            except ValueError:
                raise PydanticCustomError(
                    "invalid", "{text} is not an address or network", {"text": text[:64]}
                ) from None
        return value
