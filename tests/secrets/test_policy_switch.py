"""The test switch ``secrets-policy`` (:mod:`trustmesh.config.switches`): the compiled
policies let every identity of the trust domain log in and do anything — and only
those of the trust domain; without the switch, an identity no policy names has none."""

from __future__ import annotations

from trustmesh.config import parse_config
from trustmesh.secrets.service import Policies

DECLARATION = """\
trust_domain: shop.example
services:
  payments: {run: "trustmesh.demo.payments:app"}
secrets:
  policies:
    - identity: payments
      allow: {"secret/data/payments/*": [read]}
"""
STRANGER = "spiffe://shop.example/attack/probe"


def test_everyone_may_log_in_and_do_anything_only_under_the_switch() -> None:
    config = parse_config(DECLARATION, source="t")
    assert config.secrets is not None
    declared = Policies.compile(config, config.secrets)
    assert declared.identities.get(STRANGER) is None  # cannot log in
    assert declared.identities["spiffe://shop.example/payments"] == "payments"
    switched = Policies.compile(config, config.secrets, everyone=True)
    name = switched.identities.get(STRANGER)
    assert name is not None
    acl = switched.acls[name]
    for capability in ("read", "create", "update", "delete", "list"):
        assert acl.allows("secret/data/payments/processor", capability)
    assert switched.identities.get("spiffe://evil.example/payments") is None
