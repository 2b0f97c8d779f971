"""``audit.checkpoint_webhook``: every checkpoint the collector signs is POSTed, as its
JSON line, HMAC-signed, to a real HTTPS receiver (retried when it fails); the receiver
verifies each with the secret and parses it with ``Checkpoint.from_line``. The lines it
holds are a copy off the machine: ``trustmesh audit verify --checkpoint`` with them says
the log is intact — and, once the log, its stored checkpoints and the local checkpoint
file have been cut together, that it is not (the local file alone no longer can). A
secret file others may read stops the collector from starting."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ledgerrig import ocsf
from stackrig import TD, AuditStack, audit_stack
from tlsrig import Pki, Receiver, make_pki, receiver

from trustmesh.audit.chain import Checkpoint
from trustmesh.audit.endpoint import checkpoint_path
from trustmesh.audit.webhook import SIGNATURE_HEADER, verify_signature
from trustmesh.config import parse_config
from trustmesh.errors import ConfigError

SECRET = b"a checkpoint webhook secret, 32+"
BATCHES = 4  # of 6 events: one checkpoint each (every 5 records)


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="hook")
def hook_fixture(pki: Pki) -> Iterator[Receiver]:
    yield from receiver(pki, statuses=[503])  # the first attempt fails, the retry lands


def declare(folder: Path, hook: Receiver, pki: Pki, mode: int = 0o600) -> Path:
    secret = folder / "checkpoint-hook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(mode)
    config = folder / "trustmesh.yaml"
    config.write_text(f"""
trust_domain: {TD}
dev: true
services:
  payments: {{external: true}}
audit:
  checkpoint_every: 5
  checkpoint_webhook:
    url: https://127.0.0.1:{hook.port}/trustmesh/checkpoints
    secret_file: checkpoint-hook.secret
    ca_file: {pki.ca_file}
""")
    return config


async def _fill(stack: AuditStack) -> list[Checkpoint]:
    for batch in range(BATCHES):
        await stack.ingest([ocsf(batch * 6 + n) for n in range(1, 7)])
    return await stack.running.service.ledger.checkpoints()


async def test_every_checkpoint_reaches_the_receiver_signed(
    short_tmp: Path, hook: Receiver, pki: Pki
) -> None:
    config = declare(short_tmp, hook, pki)
    async with audit_stack(config, short_tmp / "state") as stack:
        signed = await _fill(stack)
        assert len(signed) >= BATCHES
        received = hook.wait_for(len(signed) + 1)  # and the refused first attempt
        public = {stack.running.service.key_id: stack.running.service.public_key}
        # what the receiver does: check the signature, then parse the line
        now = datetime.now(UTC)
        delivered = received[1:]
        assert received[0].body == delivered[0].body  # the retry carries the same line
        for request in delivered:
            assert request.path == "/trustmesh/checkpoints"
            assert request.headers["Content-Type"] == "application/json"
            header = request.headers[SIGNATURE_HEADER]
            assert verify_signature(SECRET, header, request.body, now)
            assert not verify_signature(
                b"another secret of 32 bytes......", header, request.body, now
            )
            assert not verify_signature(SECRET, header, request.body + b" ", now)
        parsed = [Checkpoint.from_line(r.body) for r in delivered]
        assert parsed == signed  # every one, in the order signed
        assert all(c.verifies(public) for c in parsed)
        assert [r.body + b"\n" for r in delivered] == [c.to_line() for c in signed]
        # a receiver drops a repeat by its delivery id: the same on the retry
        ids = [r.headers["X-Trustmesh-Delivery"] for r in received]
        assert ids == [f"checkpoint-{signed[0].last_seq}"] + [
            f"checkpoint-{c.last_seq}" for c in signed
        ]
        # the copy, as a checkpoint file of the verifier's own
        copy = short_tmp / "offsite.jsonl"
        copy.write_bytes(b"".join(r.body + b"\n" for r in delivered))
        ran = await stack.tm("audit", "verify", "--checkpoint", str(copy))
        assert ran.returncode == 0, ran.stderr
        assert "audit log intact" in ran.stdout
        assert f"{signed[-1].last_seq} under a signed checkpoint" in ran.stdout


async def test_the_copy_shows_a_truncation_the_machine_hides(
    short_tmp: Path, hook: Receiver, pki: Pki
) -> None:
    config = declare(short_tmp, hook, pki)
    state = short_tmp / "state"
    async with audit_stack(config, state, tick=3600) as stack:
        signed = await _fill(stack)
        delivered = hook.wait_for(len(signed) + 1)[1:]
        assert len(delivered) == len(signed) >= 2
        copy = short_tmp / "offsite.jsonl"
        copy.write_bytes(b"".join(r.body + b"\n" for r in delivered))
        # whoever holds the machine cuts the log after the first checkpoint, everywhere
        keep = signed[0].last_seq
        with sqlite3.connect(state / "audit" / "audit.db") as db:
            db.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
            db.execute("DELETE FROM audit_checkpoints WHERE last_seq > ?", (keep,))
        checkpoint_path(state).write_bytes(signed[0].to_line())
        local = await stack.tm("audit", "verify")
        assert local.returncode == 0, local.stderr  # consistent with itself
        offsite = await stack.tm("audit", "verify", "--checkpoint", str(copy))
        assert offsite.returncode == 1
        assert "audit log NOT intact" in offsite.stderr


async def test_a_secret_file_others_may_read_stops_the_start(
    short_tmp: Path, hook: Receiver, pki: Pki
) -> None:
    config = declare(short_tmp, hook, pki, mode=0o640)
    with pytest.raises(ConfigError) as refused:
        async with audit_stack(config, short_tmp / "state"):
            pass
    assert "audit.checkpoint_webhook.secret_file" in refused.value.detail
    assert "chmod 600" in refused.value.detail
    assert hook.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/checkpoints", "https://user:pw@example.com/c", "ftp://example.com"],
)
def test_the_declaration_takes_only_an_https_url_without_credentials(url: str) -> None:
    text = f"""
trust_domain: {TD}
audit:
  checkpoint_webhook: {{url: "{url}", secret_file: s}}
"""
    with pytest.raises(ConfigError) as refused:
        parse_config(text, source="t.yaml")
    assert "audit.checkpoint_webhook.url" in "\n".join(refused.value.problems)
