"""The one declaration, ``trustmesh.yaml``: frozen models, a safe loader and its JSON Schema.

::

    config = load_config(resolve_config_path(None))
    config.spiffe_id("orders")             # spiffe://<trust-domain>/orders
    for call in config.calls:
        call.from_, call.to, call.rules    # rules: parsed AllowRule values
"""

from __future__ import annotations

from trustmesh.config.durations import Duration, format_duration, parse_duration
from trustmesh.config.loader import (
    CONFIG_FILE_NAME,
    MAX_CONFIG_BYTES,
    config_json_schema,
    default_config_path,
    load_config,
    parse_config,
    resolve_config_path,
)
from trustmesh.config.models import (
    HARD_MAX_SVID_TTL,
    HTTP_METHODS,
    MIN_TTL,
    AllowRule,
    CallSpec,
    IdentitySettings,
    ServiceSpec,
    TrustmeshConfig,
    parse_allow_rule,
)

__all__ = [
    "CONFIG_FILE_NAME",
    "HARD_MAX_SVID_TTL",
    "HTTP_METHODS",
    "MAX_CONFIG_BYTES",
    "MIN_TTL",
    "AllowRule",
    "CallSpec",
    "Duration",
    "IdentitySettings",
    "ServiceSpec",
    "TrustmeshConfig",
    "config_json_schema",
    "default_config_path",
    "format_duration",
    "load_config",
    "parse_allow_rule",
    "parse_config",
    "parse_duration",
    "resolve_config_path",
]
