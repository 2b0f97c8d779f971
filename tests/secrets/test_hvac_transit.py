"""Transit through the real hvac client: keys created, read, rotated and configured;
encrypt, decrypt, rewrap, batches and data keys; each identity only on its own key."""

from __future__ import annotations

import asyncio
import base64
import json

import hvac.exceptions
import pytest
from secretsrig import SecretsRig


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_transit_with_hvac(rig: SecretsRig) -> None:
    def run() -> None:
        transit = rig.login(rig.payments).secrets.transit
        # upsert: payments may create its own key by encrypting with it
        first = transit.encrypt_data("payments", plaintext=b64("4111 1111 1111 1111"))["data"]
        assert first["ciphertext"].startswith("vault:v1:")
        assert first["key_version"] == 1
        plain = transit.decrypt_data("payments", ciphertext=first["ciphertext"])["data"]
        assert base64.b64decode(plain["plaintext"]) == b"4111 1111 1111 1111"
        key = transit.read_key("payments")["data"]
        assert key["latest_version"] == 1
        assert key["type"] == "aes256-gcm96"
        operator = rig.login(rig.operator).secrets.transit
        operator.rotate_key("payments")
        rewrapped = transit.rewrap_data("payments", ciphertext=first["ciphertext"])["data"]
        assert rewrapped["ciphertext"].startswith("vault:v2:")
        again = transit.decrypt_data("payments", ciphertext=rewrapped["ciphertext"])["data"]
        assert base64.b64decode(again["plaintext"]) == b"4111 1111 1111 1111"
        # old versions refused once min_decryption_version passes them
        operator.update_key_configuration("payments", min_decryption_version=2)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="too old"):
            transit.decrypt_data("payments", ciphertext=first["ciphertext"])
        assert transit.read_key("payments")["data"]["min_decryption_version"] == 2
        # batches: one bad item does not spoil the others
        batch = transit.encrypt_data(
            "payments", batch_input=[{"plaintext": b64("a")}, {"plaintext": b64("b")}]
        )["data"]["batch_results"]
        assert [r["ciphertext"][:9] for r in batch] == ["vault:v2:", "vault:v2:"]
        client = rig.login(rig.payments)
        items = [
            {"ciphertext": batch[0]["ciphertext"]},
            {"ciphertext": "vault:v2:AAAA"},
            {"ciphertext": batch[1]["ciphertext"]},
        ]
        with pytest.raises(hvac.exceptions.InvalidRequest):  # Vault: 400 when one fails
            client.secrets.transit.decrypt_data("payments", batch_input=items)
        decrypted = client.adapter.post(
            "/v1/transit/decrypt/payments",
            json={"batch_input": items, "partial_failure_response_code": 207},
        )
        assert decrypted.status_code == 207
        results = decrypted.json()["data"]["batch_results"]
        assert base64.b64decode(results[0]["plaintext"]) == b"a"
        assert results[1]["error"]
        assert base64.b64decode(results[2]["plaintext"]) == b"b"
        # data keys: the wrapped one decrypts to the plaintext one
        datakey = transit.generate_data_key("payments", key_type="plaintext")["data"]
        opened = transit.decrypt_data("payments", ciphertext=datakey["ciphertext"])["data"]
        assert opened["plaintext"] == datakey["plaintext"]
        assert len(base64.b64decode(datakey["plaintext"])) == 32
        wrapped = transit.generate_data_key("payments", key_type="wrapped")["data"]
        assert "plaintext" not in wrapped
        # payments has no other key, and may not make one or rotate its own
        with pytest.raises(hvac.exceptions.Forbidden):
            transit.encrypt_data("orders", plaintext=b64("x"))
        with pytest.raises(hvac.exceptions.Forbidden):
            transit.rotate_key("payments")
        assert operator.list_keys()["data"]["keys"] == ["payments"]

    await asyncio.to_thread(run)


async def test_a_ciphertext_of_one_key_never_opens_under_another(rig: SecretsRig) -> None:
    def run() -> None:
        transit = rig.login(rig.operator).secrets.transit
        transit.create_key("a")
        transit.create_key("b")
        sealed = transit.encrypt_data("a", plaintext=b64("only for a"))["data"]["ciphertext"]
        with pytest.raises(hvac.exceptions.InvalidRequest):
            transit.decrypt_data("b", ciphertext=sealed)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not found"):
            transit.decrypt_data("missing", ciphertext=sealed)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not supported"):
            transit.create_key("rsa", key_type="rsa-2048")

    await asyncio.to_thread(run)
    # the key material is sealed at rest, bound to its name
    database = (rig.state / "secrets" / "secrets.db").read_bytes()
    assert b"aes256-gcm96" not in database
    assert json.dumps("only for a").encode() not in database
