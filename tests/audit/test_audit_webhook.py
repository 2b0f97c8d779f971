"""Webhooks against a real HTTPS receiver (a CA of the test's own): every request is
signed over the exact body and a timestamp, which the receiver verifies; a 5xx or 429
is retried with growing, jittered waits (an injected sleep: nothing waits for real)
until it succeeds or the attempts run out; a 4xx is not retried; a full queue counts
its drops; a receiver whose certificate the CA did not issue gets nothing. A tampered
body, a wrong secret and a stale or future timestamp fail verification."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tlsrig import Pki, Receiver, make_pki, receiver

from trustmesh.audit._delivery import Backoff
from trustmesh.audit.webhook import (
    SIGNATURE_HEADER,
    Webhook,
    WebhookSender,
    load_webhook,
    sign,
    verify_signature,
)
from trustmesh.config.audit import AlertsConfig, AuditConfig
from trustmesh.errors import ConfigError

SECRET = b"0123456789abcdef-webhook-secret"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
CLOCK = NOW.timestamp()


def alert(n: int = 1, level: str = "high") -> dict[str, Any]:
    return {
        "uid": f"{n:032x}",
        "rule_id": "brute-force",
        "title": "Brute force from one address",
        "level": level,
        "group": {"src_endpoint.ip": "10.0.0.7"},
        "event_uids": ["e1", "e2"],
        "window": {"start": 0, "end": 60_000},
    }


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="rig")
def rig_fixture(pki: Pki) -> Iterator[Receiver]:
    yield from receiver(pki)


def hook(rig: Receiver, pki: Pki, **kwargs: Any) -> Webhook:
    kwargs.setdefault("ca_file", str(pki.ca_file))
    return Webhook("siem", f"https://127.0.0.1:{rig.port}/hooks/alerts", SECRET, **kwargs)


class Waits:
    """An injected sleep: records each wait, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_a_signed_alert_reaches_a_real_https_receiver(rig: Receiver, pki: Pki) -> None:
    sender = WebhookSender([hook(rig, pki)], clock=lambda: CLOCK)
    sender.start()
    assert sender.submit(alert()) == 1
    assert sender.close(10)
    (request,) = rig.requests
    assert request.path == "/hooks/alerts"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Trustmesh-Delivery"] == f"{1:032x}"
    assert json.loads(request.body) == alert()
    header = request.headers[SIGNATURE_HEADER]
    assert header.startswith(f"t={int(CLOCK)},v1=")
    assert verify_signature(SECRET, header, request.body, NOW)
    assert sender.stats["siem"].delivered == 1


def test_5xx_and_429_are_retried_with_backoff_then_delivered(rig: Receiver, pki: Pki) -> None:
    rig.statuses[:] = [503, 503, 429, 200]
    waits, times = Waits(), iter(range(int(CLOCK), int(CLOCK) + 100))
    sender = WebhookSender(
        [hook(rig, pki)],
        clock=lambda: next(times),
        sleep=waits,
        rand=lambda: 1.0,  # the jitter's top: the waits are the ceilings
        backoff=Backoff(attempts=5, base=1.0, factor=2.0, cap=60.0),
    )
    sender.start()
    sender.submit(alert())
    assert sender.close(10)
    assert len(rig.requests) == 4
    assert waits.waits == [1.0, 2.0, 4.0]
    # one delivery id, each attempt signed anew at its own time
    assert {r.headers["X-Trustmesh-Delivery"] for r in rig.requests} == {f"{1:032x}"}
    stamps = [r.headers[SIGNATURE_HEADER].split(",")[0] for r in rig.requests]
    assert len(set(stamps)) == 4
    stats = sender.stats["siem"]
    assert (stats.delivered, stats.retries, stats.failed) == (1, 3, 0)


def test_a_403_or_401_is_retried_as_an_authorization_being_changed(rig: Receiver, pki: Pki) -> None:
    """The receiver's authorization of the hook may be changing (a rotated secret, a
    policy reload): retried with the backoff, not given up at the first answer."""
    rig.statuses[:] = [403, 401, 408, 200]
    waits = Waits()
    sender = WebhookSender(
        [hook(rig, pki)], sleep=waits, rand=lambda: 1.0, backoff=Backoff(attempts=5, base=1.0)
    )
    sender.start()
    sender.submit(alert())
    assert sender.close(10)
    assert len(rig.requests) == 4
    assert waits.waits == [1.0, 2.0, 4.0]
    stats = sender.stats["siem"]
    assert (stats.delivered, stats.retries, stats.failed) == (1, 3, 0)


def test_the_jitter_stays_under_the_ceiling_and_retry_after_is_honoured() -> None:
    backoff = Backoff(attempts=10, base=0.5, factor=2.0, cap=8.0)
    assert backoff.delay(1, lambda: 0.5) == 0.25
    assert backoff.delay(10, lambda: 1.0) == 8.0  # capped
    assert backoff.delay(1, lambda: 0.0, after=3.0) == 3.0
    assert backoff.delay(1, lambda: 0.0, after=3600.0) == 8.0  # Retry-After capped too


def test_attempts_run_out_and_a_4xx_is_not_retried(
    rig: Receiver, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    rig.statuses[:] = [500] * 3 + [400]
    waits = Waits()
    sender = WebhookSender(
        [hook(rig, pki)], sleep=waits, backoff=Backoff(attempts=3), rand=lambda: 0.0
    )
    reported: list[tuple[str, str, str]] = []
    sender.notify(lambda *failure: reported.append(failure))
    sender.start()
    sender.submit(alert(1))
    sender.submit(alert(2))
    assert sender.close(10)
    assert len(rig.requests) == 4  # three for the first, one for the second
    stats = sender.stats["siem"]
    assert (stats.delivered, stats.failed, stats.retries) == (0, 2, 2)
    assert len(waits.waits) == 2
    assert f"gave up on alert {1:032x}: HTTP 500 (after 3 attempts)" in caplog.text
    assert f"gave up on alert {2:032x}: refused: HTTP 400" in caplog.text
    assert SECRET.decode() not in caplog.text
    # each give-up reported (the collector records it as an export-failed event)
    assert reported == [
        ("webhook siem", f"alert {1:032x}", "HTTP 500 (after 3 attempts)"),
        ("webhook siem", f"alert {2:032x}", "refused: HTTP 400"),
    ]


def test_a_network_error_is_retried(pki: Pki, tmp_path: Path) -> None:
    gen = receiver(pki)
    rig = next(gen)
    port = rig.port
    gen.close()  # nobody listens there any more
    waits = Waits()
    url = f"https://127.0.0.1:{port}/x"
    sender = WebhookSender(
        [Webhook("gone", url, SECRET, ca_file=str(pki.ca_file))],
        sleep=waits,
        backoff=Backoff(attempts=3),
    )
    sender.start()
    sender.submit(alert())
    assert sender.close(10)
    assert (sender.stats["gone"].failed, len(waits.waits)) == (1, 2)


def test_an_untrusted_certificate_gets_nothing(rig: Receiver, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")  # a CA that did not issue the receiver's certificate
    sender = WebhookSender(
        [hook(rig, other, ca_file=str(other.ca_file))],
        sleep=Waits(),
        backoff=Backoff(attempts=2),
    )
    sender.start()
    sender.submit(alert())
    assert sender.close(10)
    assert rig.requests == []
    assert sender.stats["siem"].failed == 1


def test_levels_below_the_minimum_are_not_sent(rig: Receiver, pki: Pki) -> None:
    sender = WebhookSender([hook(rig, pki, min_level="high")])
    sender.start()
    assert [sender.submit(alert(n, level)) for n, level in enumerate(("low", "high"))] == [0, 1]
    assert sender.submit(alert(3, "critical")) == 1
    assert sender.close(10)
    assert [json.loads(r.body)["level"] for r in rig.requests] == ["high", "critical"]


def test_a_full_queue_drops_and_counts_without_blocking(rig: Receiver, pki: Pki) -> None:
    gate = threading.Event()
    sender = WebhookSender(
        [hook(rig, pki)], max_queue=2, sleep=lambda _: gate.wait(10), backoff=Backoff(attempts=2)
    )
    rig.statuses[:] = [503]  # the first alert waits on the gate before its retry
    sender.start()
    assert sender.submit(alert(1)) == 1
    rig.wait_for(1)
    assert [sender.submit(alert(n)) for n in range(2, 6)] == [1, 1, 0, 0]
    gate.set()
    assert sender.close(10)
    stats = sender.stats["siem"]
    assert (stats.submitted, stats.dropped, stats.delivered) == (3, 2, 3)
    assert sender.submit(alert(9)) == 0  # closed


def test_verify_signature_refuses_tampering_other_secrets_and_stale_times() -> None:
    body = json.dumps(alert()).encode()
    header = sign(SECRET, int(CLOCK), body)
    assert verify_signature(SECRET, header, body, NOW)
    assert verify_signature(SECRET, header, body, NOW + timedelta(seconds=300))
    assert not verify_signature(SECRET, header, body.replace(b"high", b"low!"), NOW)
    assert not verify_signature(b"another-secret-of-16+", header, body, NOW)
    assert not verify_signature(SECRET, header, body, NOW + timedelta(seconds=301))  # stale
    assert not verify_signature(SECRET, header, body, NOW - timedelta(seconds=301))  # future
    assert verify_signature(SECRET, header, body, NOW + timedelta(hours=1), tolerance=3600)
    mac = header.partition("v1=")[2]
    # another timestamp with the same mac: the time is signed
    assert not verify_signature(SECRET, f"t={int(CLOCK) + 1},v1={mac}", body, NOW)
    # a rotated secret: one of several v1 matching is enough
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature(SECRET, rotated, body, NOW)
    for bad in (
        "",
        "t=,v1=",
        f"v1={mac}",
        f"t={int(CLOCK)}",
        f"t=x,v1={mac}",
        "garbage",
        f"t={int(CLOCK)},t={int(CLOCK)},v1={mac}",
        f"t={int(CLOCK)},v1={mac.upper()}",
    ):
        assert not verify_signature(SECRET, bad, body, NOW), bad


def test_a_webhook_is_checked_when_it_is_made() -> None:
    good = {"name": "siem", "url": "https://siem.example/hook", "secret": SECRET}
    Webhook(**good)
    for change, why in (
        ({"secret": b"short"}, "at least 16 bytes"),
        ({"url": "http://siem.example/hook"}, "https"),
        ({"url": "http://127.0.0.1:8080/hook"}, "https"),
        ({"url": "https://user:pw@siem.example/"}, "credentials"),
        ({"url": "https://siem.example:99999/"}, "not a valid URL"),
        ({"name": "Bad Name"}, "name"),
        ({"min_level": "severe"}, "min_level"),
    ):
        with pytest.raises(ConfigError, match=why):
            Webhook(**{**good, **change})
    assert "0123456789" not in repr(Webhook(**good))
    with pytest.raises(ConfigError, match="each name once"):
        WebhookSender([Webhook(**good), Webhook(**good)])
    with pytest.raises(ConfigError, match="CA certificates"):
        WebhookSender([Webhook(**good, ca_file="/nonexistent/ca.pem")])


def test_a_declared_webhook_reads_its_secret_from_a_private_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_bytes(SECRET + b"\n")
    secret_file.chmod(0o600)
    declared = AuditConfig.model_validate(
        {
            "alerts": {
                "webhooks": [
                    {
                        "name": "siem",
                        "url": "https://siem.example/hook",
                        "secret_file": "hook.secret",
                        "ca_file": "ca.pem",
                        "min_level": "medium",
                    }
                ],
                "syslog": {"host": "siem.example"},
            }
        }
    )
    (config,) = declared.alerts.webhooks
    assert declared.alerts.syslog is not None
    assert declared.alerts.syslog.port == 6514
    made = load_webhook(config, tmp_path)
    assert (made.secret, made.ca_file, made.min_level) == (
        SECRET,
        str(tmp_path / "ca.pem"),
        "medium",
    )
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="others may read or write it"):
        load_webhook(config, tmp_path)
    secret_file.chmod(0o600)
    secret_file.write_bytes(b"short\n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_webhook(config, tmp_path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_webhook(config.model_copy(update={"secret_file": "missing"}), tmp_path)
    assert AuditConfig().alerts == AlertsConfig()
    hook = {"name": "a", "url": "https://x.example/", "secret_file": "s"}
    for bad in (
        {"webhooks": [{**hook, "url": "http://x.example/"}]},
        {"webhooks": [{**hook, "url": "https://u:p@x.example/"}]},
        {"webhooks": [{**hook, "secret": "inline"}]},
        {"webhooks": [{**hook, "min_level": "severe"}]},
        {"webhooks": [hook, hook]},
        {"syslog": {"host": "x", "port": 0}},
    ):
        with pytest.raises(ValidationError):
            AlertsConfig.model_validate(bad)


def test_close_gives_up_a_retry_in_progress_once_its_time_is_up(rig: Receiver, pki: Pki) -> None:
    rig.statuses[:] = [503]
    sender = WebhookSender(  # the default sleep: a real wait of 30 s before the retry
        [hook(rig, pki)], rand=lambda: 1.0, backoff=Backoff(attempts=3, base=30.0)
    )
    sender.start()
    sender.submit(alert(1))
    sender.submit(alert(2))
    rig.wait_for(1)
    started = time.monotonic()
    assert not sender.close(0.2)  # not everything was delivered
    assert time.monotonic() - started < 2
    stats = sender.stats["siem"]
    assert (stats.delivered, stats.failed, stats.dropped) == (0, 1, 1)
    assert len(rig.requests) == 1
