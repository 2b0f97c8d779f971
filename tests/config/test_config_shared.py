"""The declaration's ``shared:`` section (issue 21's scale-out configuration): its Redis
is the gateway's and the provider's where they declare none, never over one they
declare; a PostgreSQL URL and a name prefix that cannot work are refused at their line."""

from __future__ import annotations

import pytest

from trustmesh.config import parse_config
from trustmesh.errors import ConfigError

BASE = """trust_domain: shared.example
dev: true
services:
  inventory: {run: "trustmesh.demo.inventory:app"}
"""
SHARED = "redis://cache.internal:6379/0"


def test_shared_redis_is_the_gateways_and_providers_where_they_declare_none() -> None:
    config = parse_config(
        BASE
        + f"shared: {{redis: '{SHARED}'}}\n"
        + "gateway:\n  routes: [{path: /items, to: inventory}]\n",
        source="t",
    )
    assert config.auth.redis == SHARED
    assert config.gateway is not None
    assert config.gateway.redis == SHARED


def test_a_declared_redis_is_kept() -> None:
    own = "rediss://limits.internal:6380/1"
    config = parse_config(
        BASE
        + f"shared: {{redis: '{SHARED}'}}\n"
        + f"auth: {{redis: '{own}'}}\n"
        + f"gateway:\n  redis: '{own}'\n  routes: [{{path: /items, to: inventory}}]\n",
        source="t",
    )
    assert config.auth.redis == own
    assert config.gateway is not None
    assert config.gateway.redis == own


def test_without_a_gateway_none_is_made() -> None:
    config = parse_config(BASE + f"shared: {{redis: '{SHARED}'}}\n", source="t")
    assert config.gateway is None
    assert config.auth.redis == SHARED


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ("{postgres: 'mysql://u@db/x'}", "scheme 'mysql' is not PostgreSQL's"),
        ("{postgres: 'postgresql://db.internal/x'}", "a host, a role and a database"),
        ("{postgres: 'postgresql://owner@db.internal'}", "a host, a role and a database"),
        ("{prefix: 'Shop-1'}", "'Shop-1' cannot start a PostgreSQL name"),
        ("{redis: 'http://cache/0'}", "shared.redis"),
    ],
)
def test_a_shared_section_that_cannot_work_is_refused_at_its_line(section: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"shared: {section}\n", source="t.yaml")
    assert said in str(caught.value)
    assert "t.yaml:5:" in str(caught.value)


GATEWAY = "gateway:\n  workers: 4\n  routes: [{path: /items, to: inventory}]\n"


def test_gateway_workers_with_limits_need_a_shared_redis() -> None:
    limited = GATEWAY + "  rate_limits: [{per: ip, limit: 10/minute}]\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + limited, source="t.yaml")
    assert "4 workers would each admit the whole rate limit" in str(caught.value)
    assert "shared.redis" in str(caught.value)
    config = parse_config(BASE + f"shared: {{redis: '{SHARED}'}}\n" + limited, source="t.yaml")
    assert config.gateway is not None
    assert config.gateway.workers == 4
    assert parse_config(BASE + GATEWAY, source="t.yaml").gateway is not None  # no limits


def test_gateway_workers_are_the_python_engines() -> None:
    nginx = GATEWAY + "  engine: nginx\n  waf: {mode: 'off'}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + nginx, source="t.yaml")
    assert "nginx.workers for engine: nginx" in str(caught.value)
