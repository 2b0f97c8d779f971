"""What a public listener (the gateway's, the provider's browser-facing one) lets a client
hold open and send, and how slowly: the bounds that keep one client, or a few thousand
slow ones, from exhausting the server (RFC 9110 §15.5.9 408, RFC 6585 §5 431).

The defaults are safe for an edge on the open internet; raise them for a trusted load
balancer in front (whose addresses ``gateway.trusted_proxies`` exempts from the
per-address cap)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from trustmesh.config.durations import Duration, format_duration

__all__ = ["ListenerLimits"]

_MODEL_CONFIG: Final = ConfigDict(frozen=True, extra="forbid", strict=True)
_MAX_TIMEOUT: Final = timedelta(minutes=10)


def _check_timeout(value: timedelta) -> timedelta:
    if value > _MAX_TIMEOUT:
        raise PydanticCustomError(
            "invalid",
            "{problem} (expected {expected})",
            {"problem": f"{format_duration(value)} is over 10m", "expected": "1s .. 10m"},
        )
    return value


Timeout = Annotated[Duration, AfterValidator(_check_timeout)]


class ListenerLimits(BaseModel):
    """Connection and request-head bounds of a public TLS listener. A connection over a
    cap is closed before its TLS handshake; a request head over a size limit gets 431
    (414 for the request line), one that takes too long 408, and the connection closes."""

    model_config = _MODEL_CONFIG

    max_connections: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Open connections in all (at the cap, an idle keep-alive connection is "
        "closed to make room, else the new one is refused).",
    )
    max_connections_per_address: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Open connections from one client address (an IPv6 client counts by "
        "its /64); gateway.trusted_proxies are exempt.",
    )
    handshake_timeout: Timeout = Field(
        default="10s", validate_default=True, description="Time to complete the TLS handshake."
    )
    header_timeout: Timeout = Field(
        default="10s",
        validate_default=True,
        description="Time to send a whole request head, from its first byte (then 408).",
    )
    keepalive_timeout: Timeout = Field(
        default="15s",
        validate_default=True,
        description="How long a connection may sit idle before (and between) requests.",
    )
    body_timeout: Timeout = Field(
        default="30s",
        validate_default=True,
        description="Longest silence while a request body is arriving (then 408).",
    )
    body_min_rate: int = Field(
        default=512,
        ge=1,
        le=1 << 30,
        description="Bytes a second a request body must average once body_timeout has "
        "passed since it began (then 408): a body trickled just fast enough never to be "
        "silent for body_timeout is still cut (time the application keeps it waiting "
        "does not count).",
    )
    max_header_bytes: int = Field(
        default=32768,
        ge=1024,
        le=1 << 20,
        description="Size of the request line and headers together (then 431).",
    )
    max_header_line_bytes: int = Field(
        default=8192,
        ge=256,
        le=1 << 20,
        description="Size of one header line (then 431) or of the request line (then 414).",
    )
    max_headers: int = Field(default=100, ge=1, le=10_000, description="Header lines (then 431).")

    @model_validator(mode="after")
    def _line_fits(self) -> ListenerLimits:
        if self.max_header_line_bytes > self.max_header_bytes:
            raise PydanticCustomError(
                "invalid",
                "{problem} (expected {expected})",
                {
                    "problem": "max_header_line_bytes is over max_header_bytes",
                    "expected": "a line limit no larger than the whole head's",
                },
            )
        return self
