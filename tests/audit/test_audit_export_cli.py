"""``trustmesh audit export`` against a running collector, as the operator: every page of
the selection (not just the first) as JSON lines to a 0600 file or stdout, the filters
of ``audit events``, resuming with ``--after``; pseudonymised with a key file (or the
declared one) — and a key file others may read, or too short, refused before anything
is read; to a real syslog-over-TLS receiver and a real OTLP/HTTP receiver; a receiver
that fails stops the export with exit 1, saying how many went."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from ledgerrig import ocsf
from stackrig import TD, AuditStack, Ran, audit_stack, tm
from syslogrig import SyslogReceiver, parse, syslog_receiver
from tlsrig import Pki, Receiver, make_client_pki, make_pki, receiver

from trustmesh.audit.pseudonymise import PREFIX, Pseudonymiser
from trustmesh.audit.search import Query
from trustmesh.events import Endpoint

SEEDED = 1100  # more than one page (1000)
KEY = bytes(range(40, 80))
CONFIG = f"""
trust_domain: {TD}
dev: true
services:
  payments: {{external: true}}
audit:
  checkpoint_every: 500
  export: {{pseudonymise_key_file: keys/pseudonyms.key}}
"""


def seeded(n: int) -> dict[str, Any]:
    return ocsf(n, sub=f"user{n % 5}", src=Endpoint(ip=f"198.51.100.{n % 9 + 1}"))


@pytest.fixture(name="stack")
async def stack_fixture(short_tmp: Path) -> AsyncIterator[AuditStack]:
    config = short_tmp / "trustmesh.yaml"
    config.write_text(CONFIG)
    async with audit_stack(config, short_tmp / "state") as stack:
        await stack.ingest([seeded(n) for n in range(1, SEEDED + 1)])
        yield stack


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def summary(ran: Ran) -> tuple[int, int]:
    """How many the command says it exported, and the last seq."""
    found = re.search(r"exported (\d+) events.*; last seq (\d+)", ran.stderr)
    assert found, ran.stderr
    return int(found[1]), int(found[2])


async def stored(stack: AuditStack, last: int, **filters: Any) -> list[dict[str, Any]]:
    """The log's events up to seq ``last`` that match ``filters``, as stored."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await stack.running.service.ledger.search(
            Query(after_seq=after, limit=1000, **filters)
        )
        found += [s.event for s in page if s.seq <= last]
        if not page or page[-1].seq >= last:
            return found
        after = page[-1].seq


def key_file(folder: Path, key: bytes = KEY, mode: int = 0o600) -> Path:
    path = folder / "keys" / "pseudonyms.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key + b"\n")
    path.chmod(mode)
    return path


async def test_jsonl_pages_through_the_whole_selection(stack: AuditStack, short_tmp: Path) -> None:
    out = short_tmp / "export.jsonl"
    ran = await stack.tm("audit", "export", "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    count, last = summary(ran)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(lines) >= SEEDED
    assert lines == await stored(stack, last)  # every page, in order, as stored
    assert sum(e.get("unmapped", {}).get("trustmesh", {}).get("sub") == "user1" for e in lines)
    # the filters of `audit events`, and resuming after a seq, to stdout
    ran = await stack.tm("audit", "export", "--decision", "deny", "--class", "6003")
    assert ran.returncode == 0, ran.stderr
    denied = [json.loads(line) for line in ran.stdout.splitlines()]
    count, last = summary(ran)
    expected = await stored(stack, last, decision="deny", class_uid=6003)
    assert count == len(denied) == len(expected) == SEEDED // 2 * 4 // 5
    assert denied == expected
    ran = await stack.tm("audit", "export", "--after", "1000")
    assert ran.returncode == 0, ran.stderr
    resumed = [json.loads(line) for line in ran.stdout.splitlines()]
    assert resumed[: SEEDED - 1000] == lines[1000:SEEDED]
    # an existing file is cut and narrowed to 0600
    out.chmod(0o644)
    ran = await stack.tm("audit", "export", "--out", str(out), "--principal", "user2")
    assert ran.returncode == 0, ran.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_text().splitlines()) == summary(ran)[0] == SEEDED // 5


async def test_subjects_and_addresses_are_pseudonymised(stack: AuditStack, short_tmp: Path) -> None:
    given = key_file(short_tmp / "given", bytes(range(32)))
    ran = await stack.tm("audit", "export", "--pseudonymise-key-file", str(given))
    assert ran.returncode == 0, ran.stderr
    assert "(pseudonymised)" in ran.stderr
    assert "user1" not in ran.stdout
    assert "198.51.100." not in ran.stdout
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    _, last = summary(ran)
    originals = await stored(stack, last)
    pseudonymiser = Pseudonymiser(bytes(range(32)))
    assert lines == [pseudonymiser.event(e) for e in originals]
    first = lines[0]
    assert first["actor"]["user"]["uid"] == pseudonymiser.token("user1")
    assert first["src_endpoint"]["ip"].startswith(PREFIX)
    assert first["metadata"]["uid"] == originals[0]["metadata"]["uid"]  # ids kept
    # the declared key (--config): other pseudonyms, the same people still linked
    key_file(short_tmp)
    ran = await stack.tm("audit", "export", "--principal", "user1", declaration=True)
    assert ran.returncode == 0, ran.stderr
    declared = [json.loads(line) for line in ran.stdout.splitlines()]
    assert len(declared) == SEEDED // 5
    token = Pseudonymiser(KEY).token("user1")
    assert {e["actor"]["user"]["uid"] for e in declared} == {token}
    assert "user1" not in ran.stdout


@pytest.mark.parametrize(
    ("key", "mode", "message"),
    [
        (KEY, 0o640, "others may read or write"),
        (KEY, 0o604, "chmod 600"),
        (b"k" * 31, 0o600, "holds 31 bytes, at least 32"),
    ],
    ids=["group-readable", "world-readable", "short"],
)
async def test_a_key_file_others_may_read_or_too_short_is_refused(
    stack: AuditStack, short_tmp: Path, key: bytes, mode: int, message: str
) -> None:
    path = key_file(short_tmp, key, mode)
    out = short_tmp / "never.jsonl"
    for args in (["--pseudonymise-key-file", str(path)], []):  # given, or declared
        ran = await stack.tm("audit", "export", "--out", str(out), *args, declaration=not args)
        assert ran.returncode == 2
        assert message in ran.stderr
        assert str(path) in ran.stderr
        assert not out.exists()
        assert ran.stdout == ""


@pytest.fixture(name="syslog")
def syslog_fixture(pki: Pki) -> Iterator[SyslogReceiver]:
    yield from syslog_receiver(pki)


@pytest.fixture(name="otlp")
def otlp_fixture() -> Iterator[Receiver]:
    yield from receiver(None)


async def test_syslog_over_tls_gets_every_event(
    stack: AuditStack, syslog: SyslogReceiver, pki: Pki
) -> None:
    where = f"127.0.0.1:{syslog.port}"
    args = ["--format", "syslog", "--syslog", where, "--ca-file", str(pki.ca_file)]
    ran = await stack.tm("audit", "export", *args, "--principal", "user3")
    assert ran.returncode == 0, ran.stderr
    count, last = summary(ran)
    assert count == SEEDED // 5
    frames = syslog.wait_for(count)
    assert len(frames) == count
    messages = [parse(frame) for frame in frames]
    expected = await stored(stack, last, principal="user3")
    assert [json.loads(m.msg) for m in messages] == expected
    assert all(m.msgid.startswith("ocsf-") for m in messages)


async def test_syslog_that_requires_a_client_certificate_gets_it(
    stack: AuditStack, pki: Pki, short_tmp: Path
) -> None:
    client = make_client_pki(short_tmp / "client", "trustmesh export")
    for ready in syslog_receiver(pki, client_ca=client.ca_file):
        where = f"127.0.0.1:{ready.port}"
        args = ["--format", "syslog", "--syslog", where, "--ca-file", str(pki.ca_file)]
        bare = await stack.tm("audit", "export", *args, "--principal", "user3")
        assert bare.returncode == 1, bare.stderr  # refused without one: nothing counted sent
        assert "0 events were exported before it" in bare.stderr
        mine = ["--client-cert", str(client.cert_file), "--client-key", str(client.key_file)]
        ran = await stack.tm("audit", "export", *args, *mine, "--principal", "user3")
        assert ran.returncode == 0, ran.stderr
        count, _ = summary(ran)
        assert len(ready.wait_for(count)) == count
        assert {"organizationName": "trustmesh tests", "commonName": "trustmesh export"} in (
            ready.peers
        )
        alone = await stack.tm("audit", "export", *args, "--client-cert", str(client.cert_file))
        assert alone.returncode == 2
        assert "--client-cert/--client-key" in alone.stderr
        other = await stack.tm("audit", "export", *mine)  # jsonl: no receiver to present it to
        assert other.returncode == 2
        assert "go with --syslog" in other.stderr


async def test_otlp_gets_every_event_in_batches(stack: AuditStack, otlp: Receiver) -> None:
    ran = await stack.tm(
        "audit", "export", "--format", "otlp", "--otlp", f"http://127.0.0.1:{otlp.port}"
    )
    assert ran.returncode == 0, ran.stderr
    count, last = summary(ran)
    bodies = [json.loads(r.body) for r in otlp.requests]
    assert {r.path for r in otlp.requests} == {"/v1/logs"}
    records = [
        json.loads(log["body"]["stringValue"])
        for body in bodies
        for log in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    ]
    assert len(bodies) >= 3  # 512 a request
    assert records == await stored(stack, last)
    assert count == len(records) >= SEEDED


async def test_a_failing_receiver_stops_the_export_saying_how_many_went(
    stack: AuditStack, otlp: Receiver, pki: Pki
) -> None:
    otlp.statuses[:] = [200, 503]
    url = f"http://127.0.0.1:{otlp.port}"
    ran = await stack.tm("audit", "export", "--format", "otlp", "--otlp", url)
    assert ran.returncode == 1
    assert "export stopped: otlp: HTTP 503" in ran.stderr
    assert "512 events were exported before it" in ran.stderr
    assert len(otlp.requests) == 2
    # a syslog receiver that is not there: nothing went
    closed = f"127.0.0.1:{otlp.port}"
    otlp.server.shutdown()
    otlp.server.server_close()
    args = ["--format", "syslog", "--syslog", closed, "--ca-file", str(pki.ca_file)]
    ran = await stack.tm("audit", "export", *args)
    assert ran.returncode == 1
    assert "export stopped: syslog" in ran.stderr
    assert "0 events were exported before it" in ran.stderr


async def test_usage_mistakes_exit_2(stack: AuditStack, short_tmp: Path) -> None:
    for args, message in [
        (["--format", "syslog"], "--format syslog needs --syslog HOST:PORT"),
        (["--format", "otlp"], "--format otlp needs --otlp URL"),
        (["--syslog", "h:1"], "--syslog does not go with --format jsonl"),
        (["--format", "syslog", "--syslog", "nohost"], "expected HOST:PORT"),
        (["--format", "otlp", "--otlp", "http://example.com"], "http:// to loopback"),
        (["--since", "yesterday"], "since must be an ISO 8601 time"),
    ]:
        ran = await stack.tm("audit", "export", *args)
        assert ran.returncode == 2, (args, ran.stderr)
        assert message in ran.stderr, ran.stderr
    ran = await asyncio.to_thread(tm, "audit", "export", "--state", str(short_tmp / "none"))
    assert ran.returncode == 1
    assert "the audit collector is not running" in ran.stderr


def test_the_syslog_export_retries_three_times_waiting_at_most_a_second() -> None:
    """Its retries as declared (a positional Backoff once took the cap for the factor)."""
    from trustmesh.audit._delivery import Backoff
    from trustmesh.cli.audit_export_cmd import ExportFormat, _sink

    sink = _sink(ExportFormat.syslog, None, "127.0.0.1:9", None, None)
    try:
        assert sink.sender._worker.backoff == Backoff(attempts=3, base=0.2, cap=1.0)  # type: ignore[attr-defined]
    finally:
        sink.close()
