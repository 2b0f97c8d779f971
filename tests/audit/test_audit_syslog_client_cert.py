"""Syslog over mutual TLS (``audit.alerts.syslog.cert_file``/``key_file``) to a real
receiver that requires a client certificate from a CA of its own: without one, or with
one from another CA, each handshake is refused — in TLS 1.2 and in TLS 1.3, where the
refusal comes after the client's handshake — and nothing is counted delivered; with it
the alert arrives and the receiver sees the certificate's subject, also from a running
collector whose declaration names the files. The two settings go together, refused at
load otherwise with the missing key named; a key file others may read, a missing file,
one that is not PEM, an encrypted key or a key that is not the certificate's stop the
sender from being made (the collector from starting), naming the file and the key."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auditkit import login_failed
from collectorrig import CONFIG, collector_config, collector_rig, identity_for
from cryptography.hazmat.primitives import serialization
from syslogrig import SyslogReceiver, parse, syslog_receiver
from tlsrig import Pki, make_client_pki, make_pki

from trustmesh.audit._delivery import Backoff
from trustmesh.audit.syslog import SyslogSender, load_syslog
from trustmesh.config import default_config_path, parse_config
from trustmesh.config.audit import SyslogConfig
from trustmesh.errors import ConfigError
from trustmesh.testing import RunningIdentityServer

ALERT: dict[str, Any] = {"uid": "a" * 32, "rule_id": "brute-force", "level": "high"}
SUBJECT = "trustmesh-audit collector-1"
PEER = {"organizationName": "trustmesh tests", "commonName": SUBJECT}
BRUTE = "Brute-force login against one account"


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


def sender(rig: SyslogReceiver, pki: Pki, **kwargs: Any) -> SyslogSender:
    return SyslogSender(
        "127.0.0.1",
        rig.port,
        str(pki.ca_file),
        hostname="collector-1",
        accept_wait=10.0,  # a bound: the receiver's ticket or refusal arrives at once
        **kwargs,
    )


def test_with_the_client_certificate_the_alert_arrives(
    rig: SyslogReceiver, pki: Pki, client: Pki
) -> None:
    out = sender(rig, pki, cert_file=str(client.cert_file), key_file=str(client.key_file))
    out.start()
    assert out.submit(ALERT)
    assert out.close(10)
    (frame,) = rig.wait_for(1)
    assert parse(frame).params("trustmesh@32473")["uid"] == ALERT["uid"]
    assert (rig.peers, rig.refused) == ([PEER], [])
    assert (out.stats.delivered, out.stats.failed, out.stats.retries) == (1, 0, 0)


def test_a_client_certificate_from_another_ca_is_refused(
    rig: SyslogReceiver, pki: Pki, tmp_path: Path
) -> None:
    stranger = make_client_pki(tmp_path / "stranger", SUBJECT)
    waits: list[float] = []
    out = sender(
        rig,
        pki,
        cert_file=str(stranger.cert_file),
        key_file=str(stranger.key_file),
        backoff=Backoff(attempts=2),
        sleep=waits.append,
    )
    out.start()
    assert out.submit(ALERT)
    assert out.close(30)
    refused = rig.wait_refused(2)
    assert len(refused) == 2
    assert all("CERTIFICATE_VERIFY_FAILED" in why for why in refused)
    assert (rig.frames, rig.peers) == ([], [])
    assert (out.stats.delivered, out.stats.failed, len(waits)) == (0, 1, 1)


def test_without_a_client_certificate_nothing_is_delivered(rig: SyslogReceiver, pki: Pki) -> None:
    waits: list[float] = []
    failures: list[str] = []
    out = sender(rig, pki, backoff=Backoff(attempts=3), sleep=waits.append)
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
    assert "\naudit:\n" in text
    return text.replace("\naudit:\n", f"\naudit:\n  alerts:\n    syslog: {syslog}\n", 1)


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


# --- the files, checked when the sender is made ----------------------------------------


@pytest.fixture(name="files")
def files_fixture(client: Pki, tmp_path: Path) -> Path:
    """The client certificate and key copied beside a declaration (key 0600)."""
    shutil.copy(client.cert_file, tmp_path / "tm.pem")
    shutil.copy(client.key_file, tmp_path / "tm.key")
    (tmp_path / "tm.key").chmod(0o600)
    return tmp_path


def declared(**files: str) -> SyslogConfig:
    return SyslogConfig(host="127.0.0.1", **{"cert_file": "tm.pem", "key_file": "tm.key", **files})


def refusal(folder: Path, **files: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load_syslog(declared(**files), folder, hostname="collector-1")
    return refused.value.detail


def test_declared_files_are_taken_beside_the_declaration(files: Path, client: Pki) -> None:
    made = load_syslog(declared(), files, hostname="collector-1")
    assert made.context.verify_mode == ssl.CERT_REQUIRED  # the receiver is still checked
    assert made.context.check_hostname
    (files / "tm.key").unlink()
    assert refusal(files) == (
        f"{files / 'tm.key'}: audit.alerts.syslog.key_file: cannot be read "
        "(No such file or directory)"
    )
    absolute = load_syslog(
        declared(cert_file=str(client.cert_file), key_file=str(client.key_file)),
        files,
        hostname="collector-1",
    )
    assert absolute.context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o602], ids=oct)
def test_a_key_file_others_may_read_or_write_is_refused(files: Path, mode: int) -> None:
    (files / "tm.key").chmod(mode)
    assert refusal(files) == (
        f"{files / 'tm.key'}: audit.alerts.syslog.key_file: others may read or write it "
        f"(mode {mode:04o}; chmod 600 it)"
    )
    (files / "tm.key").chmod(0o400)  # stricter than 0600 is fine
    load_syslog(declared(), files, hostname="collector-1")


def test_a_missing_or_unparsable_certificate_is_refused(files: Path) -> None:
    where = f"{files / 'missing.pem'}: audit.alerts.syslog.cert_file"
    assert refusal(files, cert_file="missing.pem") == (
        f"{where}: not a readable PEM certificate chain (No such file or directory)"
    )
    (files / "garbage.pem").write_text("not a certificate\n")
    detail = refusal(files, cert_file="garbage.pem")
    assert detail.startswith(
        f"{files / 'garbage.pem'}: audit.alerts.syslog.cert_file: "
        "not a readable PEM certificate chain ("
    )
    detail = refusal(files, cert_file="tm.key")  # a key where the certificate goes
    assert "audit.alerts.syslog.cert_file: not a readable PEM certificate chain" in detail


def test_a_key_that_is_not_pem_encrypted_or_not_the_certificates_is_refused(
    files: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    where = f"{files / 'tm.key'}: audit.alerts.syslog.key_file"
    other = make_client_pki(tmp_path_factory.mktemp("other"), SUBJECT)
    shutil.copy(other.key_file, files / "tm.key")  # the same subject, another key
    assert refusal(files) == f"{where}: not the key of the certificate in {files / 'tm.pem'}"
    (files / "tm.key").write_text("not a key\n")
    assert refusal(files).startswith(f"{where}: not a readable PEM private key (")
    key = serialization.load_pem_private_key(other.key_file.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )
    (files / "tm.key").write_bytes(encrypted)
    assert refusal(files) == f"{where}: an encrypted key (expected an unencrypted one)"


def test_the_sender_takes_both_files_or_neither(client: Pki) -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        SyslogSender("127.0.0.1", 6514, None, hostname="h", cert_file=str(client.cert_file))
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        SyslogSender("127.0.0.1", 6514, None, hostname="h", key_file=str(client.key_file))


# --- a running collector ----------------------------------------------------------------


@pytest.fixture(name="identity")
def identity_fixture(short_tmp: Path) -> Iterator[RunningIdentityServer]:
    yield from identity_for(collector_config(), short_tmp / "identity")


@pytest.fixture(name="mtls")
def mtls_fixture(pki: Pki, client: Pki) -> Iterator[SyslogReceiver]:
    yield from syslog_receiver(pki, client_ca=client.ca_file)


def collector_declaration(folder: Path, pki: Pki, client: Pki, port: int) -> Path:
    shutil.copy(client.cert_file, folder / "tm.pem")
    shutil.copy(client.key_file, folder / "tm.key")
    (folder / "tm.key").chmod(0o600)
    file = folder / "trustmesh.yaml"
    file.write_text(
        CONFIG
        + "  alerts:\n    syslog:\n"
        + f"      {{host: 127.0.0.1, port: {port}, ca_file: '{pki.ca_file}', "
        + "cert_file: tm.pem, key_file: tm.key}\n"
    )
    return file


async def test_a_running_collector_sends_its_alert_with_the_declared_certificate(
    identity: RunningIdentityServer, short_tmp: Path, pki: Pki, client: Pki, mtls: SyslogReceiver
) -> None:
    file = collector_declaration(short_tmp, pki, client, mtls.port)
    config = collector_config(file.read_text())
    attempts = [login_failed("alice", i * 3, ip="203.0.113.9") for i in range(12)]
    async with collector_rig(
        identity, short_tmp / "state", config, config_file=file, tick=3600
    ) as rig:
        status, _ = await rig.payments.call("POST", "/v1/events", {"events": attempts})
        assert status == 200
        titles: list[str | None] = []
        for _ in range(50):  # other alerts may come first
            frames = await asyncio.to_thread(mtls.wait_for, len(titles) + 1, 0.2)
            titles = [parse(f).params("trustmesh@32473").get("title") for f in frames]
            if BRUTE in titles:
                break
    assert BRUTE in titles
    assert mtls.peers[0] == PEER
    assert mtls.refused == []


async def test_a_key_file_others_may_read_stops_the_collector_from_starting(
    identity: RunningIdentityServer, short_tmp: Path, pki: Pki, client: Pki, mtls: SyslogReceiver
) -> None:
    file = collector_declaration(short_tmp, pki, client, mtls.port)
    (short_tmp / "tm.key").chmod(0o644)
    config = collector_config(file.read_text())
    with pytest.raises(ConfigError) as refused:
        async with collector_rig(identity, short_tmp / "state", config, config_file=file):
            pass
    assert refused.value.detail == (
        f"{short_tmp / 'tm.key'}: audit.alerts.syslog.key_file: others may read or write it "
        "(mode 0644; chmod 600 it)"
    )
    assert (mtls.frames, mtls.connections, mtls.refused) == ([], 0, [])
