from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from trustmesh.events import Decision, Event, EventClass, event
from trustmesh.reasons import Reason

Make = Callable[..., Event]


@pytest.fixture
def now() -> datetime:
    """A fixed clock reading: 2025-03-01T12:30:45.123456Z = 1740832245123 ms."""
    return datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture
def make(now: datetime) -> Make:
    """Build a valid API Activity deny event; keywords override arguments of event()."""

    def build(**overrides: Any) -> Event:
        kwargs: dict[str, Any] = {
            "activity_id": 2,
            "activity_name": "Read",
            "component": "gateway",
            "decision": Decision.DENY,
            "reason": Reason.POLICY_DENY,
            "message": "GET /orders/42 denied by policy",
            "now": now,
        }
        kwargs.update(overrides)
        cls = kwargs.pop("cls", EventClass.API_ACTIVITY)
        return event(cls, **kwargs)

    return build


@pytest.fixture
def sample(make: Make) -> Event:
    return make(
        spiffe_id="spiffe://shop.example/gateway",
        peer_spiffe_id="spiffe://shop.example/orders",
        sub="alice",
        client_id="storefront",
        jti="7f9c2ba4e88f827d616045507605853e",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        attributes={"route": "/orders/{id}", "attempt": 2, "cached": False, "tenant": None},
    )
