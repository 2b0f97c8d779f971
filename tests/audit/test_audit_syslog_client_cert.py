"""Syslog over mutual TLS (``audit.alerts.syslog.cert_file``/``key_file``) to a real
receiver that requires a client certificate from a CA of its own: without one each
handshake is refused — in TLS 1.2 and in TLS 1.3, where the refusal comes after the
client's handshake — and nothing is counted delivered. The two settings go together,
refused at load otherwise with the missing key named."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from syslogrig import SyslogReceiver, syslog_receiver
from tlsrig import Pki, make_client_pki, make_pki

from trustmesh.audit._delivery import Backoff
from trustmesh.audit.syslog import SyslogSender
from trustmesh.config import default_config_path, parse_config
from trustmesh.config.audit import SyslogConfig
from trustmesh.errors import ConfigError

ALERT: dict[str, Any] = {"uid": "a" * 32, "rule_id": "brute-force", "level": "high"}
SUBJECT = "trustmesh-audit collector-1"


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="client", scope="module")
def client_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_client_pki(tmp_path_factory.mktemp("client"), SUBJECT)


@pytest.fixture(name="rig", params=["TLSv1_2", "TLSv1_3"])
def rig_fixture(pki: Pki, client: Pki, request: pytest.FixtureRequest) -> Iterator[SyslogReceiver]:
    """A receiver that requires a certificate ``client``'s CA issued, at most TLS 1.2
    or 1.3."""
    for rig in syslog_receiver(pki, client_ca=client.ca_file):
        rig.context.maximum_version = ssl.TLSVersion[request.param]
        yield rig


def test_without_a_client_certificate_nothing_is_delivered(rig: SyslogReceiver, pki: Pki) -> None:
    waits: list[float] = []
    failures: list[str] = []
    out = SyslogSender(
        "127.0.0.1",
        rig.port,
        str(pki.ca_file),
        hostname="collector-1",
        backoff=Backoff(attempts=3),
        sleep=waits.append,
        accept_wait=10.0,  # a bound: the refusal arrives at once
    )
    out.notify(lambda _receiver, _item, why: failures.append(why))
    out.start()
    assert out.submit(ALERT)
    assert out.close(30)
    refused = rig.wait_refused(3)
    assert len(refused) == 3
    assert all("PEER_DID_NOT_RETURN_A_CERTIFICATE" in why for why in refused)
    assert (rig.frames, rig.connections) == ([], 0)
    stats = out.stats
    assert (stats.submitted, stats.delivered, stats.failed, stats.retries) == (1, 0, 1, 2)
    assert len(waits) == 2
    (why,) = failures
    assert why.endswith("(after 3 attempts)")


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


def test_a_tls13_receiver_that_sends_no_session_ticket_still_gets_its_messages(
    pki: Pki,
) -> None:
    for rig in syslog_receiver(pki):
        rig.context.num_tickets = 0  # nothing to wait for: the sender waits accept_wait
        out = SyslogSender(
            "127.0.0.1", rig.port, str(pki.ca_file), hostname="collector-1", accept_wait=0.2
        )
        out.start()
        assert out.submit(ALERT)
        assert out.close(10)
        assert len(rig.wait_for(1)) == 1
        assert (out.stats.delivered, out.stats.failed, rig.connections) == (1, 0, 1)
