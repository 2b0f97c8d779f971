from __future__ import annotations

import trustmesh.config


def test_public_api_is_pinned() -> None:
    assert trustmesh.config.__all__ == [
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
    for name in trustmesh.config.__all__:
        assert hasattr(trustmesh.config, name), name
