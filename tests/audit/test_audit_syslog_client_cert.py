"""Syslog over mutual TLS (``audit.alerts.syslog.cert_file``/``key_file``): the two go
together, refused at load otherwise with the missing key named."""

from __future__ import annotations

import pytest

from trustmesh.config import default_config_path, parse_config
from trustmesh.config.audit import SyslogConfig
from trustmesh.errors import ConfigError


def declaration(syslog: str) -> str:
    """The default declaration with ``audit.alerts.syslog`` set to ``syslog`` (flow YAML)."""
    text = default_config_path().read_text()
    assert "audit: {}\n" in text
    return text.replace("audit: {}\n", f"audit:\n  alerts:\n    syslog: {syslog}\n")


@pytest.mark.parametrize(
    ("given", "missing"), [("cert_file", "key_file"), ("key_file", "cert_file")]
)
def test_a_certificate_without_its_key_or_a_key_alone_is_refused_at_load(
    given: str, missing: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(declaration(f"{{host: siem.example, {given}: a.pem}}"), source="t.yaml")
    (problem,) = refused.value.problems
    line = declaration("").splitlines().index("    syslog: ") + 1
    assert problem == (
        f"t.yaml:{line}: audit.alerts.syslog.{missing}: {given} without {missing} "
        "(expected both cert_file and key_file, or neither)"
    )


def test_both_or_neither_load() -> None:
    both = "{host: siem.example, cert_file: tm.pem, key_file: tm.key}"
    declared = parse_config(declaration(both), source="t.yaml").audit
    assert declared is not None
    assert declared.alerts.syslog == SyslogConfig(
        host="siem.example", cert_file="tm.pem", key_file="tm.key"
    )
    neither = parse_config(declaration("{host: siem.example}"), source="t.yaml").audit
    assert neither is not None
    assert neither.alerts.syslog is not None
    assert (neither.alerts.syslog.cert_file, neither.alerts.syslog.key_file) == (None, None)
