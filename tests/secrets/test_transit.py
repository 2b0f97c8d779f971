"""Vault's transit engine as pure logic (trustmesh.secrets.transit): key rings, encryption,
rotation, min_decryption_version, rewrap, datakeys, batches, refusals and storage."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.errors import StateError, UsageError
from trustmesh.secrets.transit import (
    KEY_NOT_FOUND,
    KEY_TYPE,
    BatchAnswer,
    KeyVersion,
    TransitError,
    TransitKey,
)

NOW = 1_700_000_000
AUTH_FAILED = "cipher: message authentication failed"
TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
CARD = b"4111 1111 1111 1111"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def blob_of(ciphertext: str) -> tuple[str, bytes]:
    prefix, _, body = ciphertext.rpartition(":")
    return prefix, unb64(body)


def with_blob(prefix: str, blob: bytes) -> str:
    return f"{prefix}:{b64(blob)}"


def refused(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(TransitError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert caught.value.status == 400
    return str(caught.value)


@pytest.fixture
def key() -> TransitKey:
    return TransitKey.create("payments", now=NOW)


@pytest.fixture
def rotated(key: TransitKey) -> TransitKey:
    return key.rotate(now=NOW + 60).rotate(now=NOW + 120)


# -- round trips ----------------------------------------------------------------------------


def test_round_trip(key: TransitKey) -> None:
    result = key.encrypt(b64(CARD))
    assert result["key_version"] == 1
    assert result["ciphertext"].startswith("vault:v1:")
    assert CARD not in blob_of(result["ciphertext"])[1]
    assert unb64(key.decrypt(result["ciphertext"])["plaintext"]) == CARD
    assert key.decrypt(key.encrypt("")["ciphertext"]) == {"plaintext": ""}


def test_each_encryption_is_fresh(key: TransitKey) -> None:
    assert key.encrypt(b64(CARD))["ciphertext"] != key.encrypt(b64(CARD))["ciphertext"]


def test_round_trip_under_every_version(rotated: TransitKey) -> None:
    assert rotated.latest_version == 3
    for version in (1, 2, 3):
        result = rotated.encrypt(b64(CARD), key_version=version)
        assert result == {"ciphertext": result["ciphertext"], "key_version": version}
        assert result["ciphertext"].startswith(f"vault:v{version}:")
        assert unb64(rotated.decrypt(result["ciphertext"])["plaintext"]) == CARD
    assert rotated.encrypt(b64(CARD))["key_version"] == 3
    assert rotated.encrypt(b64(CARD), key_version=0)["key_version"] == 3


def test_rotation_keeps_old_ciphertexts_and_rewrap_moves_them_to_the_latest(
    key: TransitKey,
) -> None:
    old = key.encrypt(b64(CARD))["ciphertext"]
    newer = key.rotate(now=NOW + 60)
    assert newer.versions[1] == key.versions[1]
    assert newer.versions[2].key != key.versions[1].key
    assert newer.versions[2].created == NOW + 60
    assert unb64(newer.decrypt(old)["plaintext"]) == CARD
    rewrapped = newer.rewrap(old)
    assert rewrapped["key_version"] == 2
    assert rewrapped["ciphertext"].startswith("vault:v2:")
    assert unb64(newer.decrypt(rewrapped["ciphertext"])["plaintext"]) == CARD
    # the version is authenticated too: relabelled as v1, the v2 blob does not open
    relabelled = rewrapped["ciphertext"].replace("vault:v2:", "vault:v1:", 1)
    assert refused(newer.decrypt, relabelled) == AUTH_FAILED


def test_rewrap_to_a_chosen_version_and_with_associated_data(rotated: TransitKey) -> None:
    ad = b64(b"order 42")
    old = rotated.encrypt(b64(CARD), key_version=1, associated_data=ad)["ciphertext"]
    assert refused(rotated.rewrap, old) == AUTH_FAILED  # the AD is part of what is opened
    moved = rotated.rewrap(old, key_version=2, associated_data=ad)
    assert moved["key_version"] == 2
    assert unb64(rotated.decrypt(moved["ciphertext"], associated_data=ad)["plaintext"]) == CARD
    assert refused(rotated.decrypt, moved["ciphertext"]) == AUTH_FAILED


# -- min_decryption_version and min_encryption_version --------------------------------------


def test_min_decryption_version_refuses_older_ciphertexts(rotated: TransitKey) -> None:
    v1 = rotated.encrypt(b64(CARD), key_version=1)["ciphertext"]
    v2 = rotated.encrypt(b64(CARD), key_version=2)["ciphertext"]
    strict, warnings = rotated.configure(min_decryption_version=2)
    assert warnings == ()
    assert refused(strict.decrypt, v1) == TOO_OLD
    assert refused(strict.rewrap, v1) == TOO_OLD
    assert unb64(strict.decrypt(v2)["plaintext"]) == CARD
    assert strict.read()["keys"] == {"2": NOW + 60, "3": NOW + 120}
    assert refused(strict.encrypt, b64(CARD), key_version=1) == "no such key version"
    # as in Vault, the old versions are archived, not destroyed: lowering it again opens v1
    relaxed, _ = strict.configure(min_decryption_version=1)
    assert unb64(relaxed.decrypt(v1)["plaintext"]) == CARD


def test_encryption_versions_are_checked(rotated: TransitKey) -> None:
    assert (
        refused(rotated.encrypt, b64(CARD), key_version=4)
        == "requested version for encryption is higher than the latest key version"
    )
    assert (
        refused(rotated.encrypt, b64(CARD), key_version=-1)
        == "requested version for encryption is negative"
    )
    assert refused(rotated.encrypt, b64(CARD), key_version=True) == "key_version must be an integer"
    pinned, _ = rotated.configure(min_encryption_version=3)
    assert (
        refused(pinned.encrypt, b64(CARD), key_version=2)
        == "requested version for encryption is less than the minimum encryption key version"
    )
    assert pinned.encrypt(b64(CARD))["key_version"] == 3


# -- configuration --------------------------------------------------------------------------


def test_configure_validates_as_vault_does(rotated: TransitKey) -> None:
    assert (
        refused(rotated.configure, min_decryption_version=4)
        == "cannot set min decryption version of 4, latest key version is 3"
    )
    assert (
        refused(rotated.configure, min_encryption_version=4)
        == "cannot set min encryption version of 4, latest key version is 3"
    )
    assert (
        refused(rotated.configure, min_decryption_version=3, min_encryption_version=2)
        == "cannot set min encryption/decryption values; min encryption version of 2 must be "
        "greater than or equal to min decryption version of 3"
    )
    assert (
        refused(rotated.configure, min_decryption_version=-1)
        == "min decryption version cannot be negative"
    )
    assert (
        refused(rotated.configure, min_encryption_version=-1)
        == "min encryption version cannot be negative"
    )
    assert refused(rotated.configure, min_decryption_version="2") == (
        "min_decryption_version must be an integer"
    )
    assert (
        refused(rotated.configure, deletion_allowed="yes") == "deletion_allowed must be a boolean"
    )
    assert refused(rotated.configure, exportable=True) == "exportable keys are not supported"
    # min_encryption_version 0 means "latest" and is always allowed beside any minimum
    both, _ = rotated.configure(min_decryption_version=3, min_encryption_version=0)
    assert (both.min_decryption_version, both.min_encryption_version) == (3, 0)
    both, _ = rotated.configure(min_decryption_version=2, min_encryption_version=3)
    assert (both.min_decryption_version, both.min_encryption_version) == (2, 3)
    # a refused change leaves the key as it was (it is immutable anyway)
    assert rotated.min_decryption_version == 1


def test_configure_forces_version_zero_to_one_with_vaults_warning(rotated: TransitKey) -> None:
    raised, _ = rotated.configure(min_decryption_version=2)
    lowered, warnings = raised.configure(min_decryption_version=0)
    assert lowered.min_decryption_version == 1
    assert warnings == ("since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1",)


def test_deletion_is_refused_until_allowed(key: TransitKey) -> None:
    assert refused(key.ensure_deletable) == "deletion is not allowed for this key"
    allowed, _ = key.configure(deletion_allowed=True)
    allowed.ensure_deletable()
    assert allowed.read()["deletion_allowed"] is True
    again, _ = allowed.configure(deletion_allowed=False)
    assert refused(again.ensure_deletable) == "deletion is not allowed for this key"


# -- creation and reading -------------------------------------------------------------------


def test_create_takes_fresh_random_keys() -> None:
    one, two = TransitKey.create("a", now=NOW), TransitKey.create("a", now=NOW)
    assert len(one.versions[1].key) == 32
    assert one.versions[1].key != two.versions[1].key
    assert (one.type, one.min_decryption_version, one.min_encryption_version) == (KEY_TYPE, 1, 0)
    assert (one.deletion_allowed, one.derived, one.exportable) == (False, False, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_type": "rot13"}, "unknown key type rot13"),
        ({"key_type": "chacha20-poly1305"}, "key type chacha20-poly1305 is not supported"),
        ({"key_type": "rsa-2048"}, "key type rsa-2048 is not supported"),
        ({"derived": True}, "derived keys (key derivation, convergent encryption) are not"),
        (
            {"convergent_encryption": True},
            "convergent encryption requires derivation to be enabled",
        ),
        ({"derived": True, "convergent_encryption": True}, "derived keys"),
        ({"exportable": True}, "exportable keys are not supported"),
        ({"allow_plaintext_backup": True}, "plaintext backups are not supported"),
    ],
)
def test_create_refuses_what_is_not_supported(kwargs: dict[str, object], message: str) -> None:
    assert refused(TransitKey.create, "k", now=NOW, **kwargs).startswith(message)


@pytest.mark.parametrize("name", ["", "-lead", "trail-", "a/b", "a b", "é", "x" * 300, "a..b/"])
def test_create_refuses_bad_names(name: str) -> None:
    assert refused(TransitKey.create, name, now=NOW) == "invalid key name"


def test_names_vault_accepts() -> None:
    for name in ("a", "payments", "my-key.v2", "under_score", "A1"):
        assert TransitKey.create(name, now=NOW).name == name


def test_read_answers_vaults_fields(rotated: TransitKey) -> None:
    assert rotated.read() == {
        "allow_plaintext_backup": False,
        "auto_rotate_period": 0,
        "deletion_allowed": False,
        "derived": False,
        "exportable": False,
        "imported_key": False,
        "keys": {"1": NOW, "2": NOW + 60, "3": NOW + 120},
        "latest_version": 3,
        "min_available_version": 0,
        "min_decryption_version": 1,
        "min_encryption_version": 0,
        "name": "payments",
        "supports_decryption": True,
        "supports_derivation": False,
        "supports_encryption": True,
        "supports_signing": False,
        "type": "aes256-gcm96",
    }
    json.dumps(rotated.read())  # the adapter answers it as is


def test_nothing_prints_a_key(key: TransitKey) -> None:
    raw = key.versions[1].key
    for text in (repr(key), str(key), repr(key.versions[1]), repr(key.versions)):
        assert raw.hex() not in text
        assert b64(raw) not in text
        assert repr(raw) not in text


# -- refusals: malformed, tampered, foreign -------------------------------------------------


@pytest.mark.parametrize(
    ("ciphertext", "message"),
    [
        ("", "missing ciphertext to decrypt"),
        ("v1:AAAA", "invalid ciphertext: no prefix"),
        ("vault:x1:AAAA", "invalid ciphertext: no prefix"),
        ("vault:v1", "invalid ciphertext: wrong number of fields"),
        ("vault:vx:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v0:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v01:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v-1:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v99999999999:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v4:AAAA", "invalid ciphertext: version is too new"),
        ("vault:v1:not base64!", "invalid ciphertext: could not decode base64"),
        ("vault:v1:AAA", "invalid ciphertext: could not decode base64"),
        ("vault:v1:AAAA====", "invalid ciphertext: could not decode base64"),
        ("vault:v1:AAAA=", "invalid ciphertext: could not decode base64"),
        ("vault:v1:AAAA:AAAA", "invalid ciphertext: could not decode base64"),
        ("vault:v1:ÿÿÿÿ", "invalid ciphertext: could not decode base64"),
        ("vault:v1:", AUTH_FAILED),
        ("vault:v1:AAAA", AUTH_FAILED),
    ],
)
def test_malformed_ciphertexts_are_refused(
    rotated: TransitKey, ciphertext: str, message: str
) -> None:
    assert refused(rotated.decrypt, ciphertext) == message
    assert refused(rotated.rewrap, ciphertext) == message


def test_every_flipped_byte_is_refused(key: TransitKey) -> None:
    prefix, blob = blob_of(key.encrypt(b64(CARD))["ciphertext"])
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        assert refused(key.decrypt, with_blob(prefix, bytes(tampered))) == AUTH_FAILED


def test_every_truncation_and_extension_is_refused(key: TransitKey) -> None:
    prefix, blob = blob_of(key.encrypt(b64(CARD))["ciphertext"])
    for length in range(len(blob)):
        assert refused(key.decrypt, with_blob(prefix, blob[:length])) == AUTH_FAILED
    assert refused(key.decrypt, with_blob(prefix, blob + b"\x00")) == AUTH_FAILED


def test_a_ciphertext_never_opens_under_another_key_name_even_with_the_same_bytes(
    key: TransitKey,
) -> None:
    twin = dataclasses.replace(key, name="refunds")
    assert twin.versions[1].key == key.versions[1].key
    ciphertext = key.encrypt(b64(CARD))["ciphertext"]
    assert refused(twin.decrypt, ciphertext) == AUTH_FAILED
    assert refused(twin.rewrap, ciphertext) == AUTH_FAILED
    stranger = TransitKey.create("payments", now=NOW)  # same name, other key bytes
    assert refused(stranger.decrypt, ciphertext) == AUTH_FAILED


def test_associated_data_is_bound(key: TransitKey) -> None:
    ad = b64(b"customer 7")
    ciphertext = key.encrypt(b64(CARD), associated_data=ad)["ciphertext"]
    assert unb64(key.decrypt(ciphertext, associated_data=ad)["plaintext"]) == CARD
    assert refused(key.decrypt, ciphertext) == AUTH_FAILED
    assert refused(key.decrypt, ciphertext, associated_data=b64(b"customer 8")) == AUTH_FAILED
    plain = key.encrypt(b64(CARD))["ciphertext"]
    assert refused(key.decrypt, plain, associated_data=ad) == AUTH_FAILED
    assert unb64(key.decrypt(plain, associated_data="")["plaintext"]) == CARD  # "" is none
    assert refused(key.decrypt, plain, associated_data="@@") == (
        "associated_data: illegal base64 data at input byte 0"
    )


def test_bad_plaintexts_are_refused_without_echoing_them(key: TransitKey) -> None:
    assert refused(key.encrypt, "not base64 4111") == "illegal base64 data at input byte 3"
    assert refused(key.encrypt, "QUJD=") == "illegal base64 data at input byte 4"
    assert refused(key.encrypt, "QUJD====") == "illegal base64 data at input byte 4"
    assert refused(key.encrypt, "QUI") == "illegal base64 data at input byte 3"
    assert refused(key.encrypt, None) == "missing plaintext to encrypt"
    message = refused(key.encrypt, "4111111111111111!")
    assert "4111" not in message


def test_context_and_nonce_are_refused_not_ignored(key: TransitKey) -> None:
    ciphertext = key.encrypt(b64(CARD))["ciphertext"]
    for call, argument in ((key.encrypt, b64(CARD)), (key.decrypt, ciphertext)):
        assert "does not use key derivation" in refused(call, argument, context=b64(b"ctx"))
        assert refused(call, argument, nonce=b64(bytes(12))) == (
            "provided nonce not allowed for this key"
        )
    assert "does not use key derivation" in refused(key.datakey, "wrapped", context="Y3R4")


@settings(max_examples=60)
@given(st.binary(max_size=2048), st.binary(max_size=64), st.integers(1, 3))
def test_any_bytes_round_trip(raw: bytes, ad_raw: bytes, version: int) -> None:
    ring = TransitKey.create("prop", now=NOW).rotate(now=NOW).rotate(now=NOW)
    ad = b64(ad_raw) if ad_raw else None
    ciphertext = ring.encrypt(b64(raw), key_version=version, associated_data=ad)["ciphertext"]
    assert unb64(ring.decrypt(ciphertext, associated_data=ad)["plaintext"]) == raw


@settings(max_examples=200)
@given(st.binary(max_size=64), st.data())
def test_a_changed_character_never_yields_other_plaintext(raw: bytes, data: st.DataObject) -> None:
    ring = TransitKey.create("prop", now=NOW)
    ciphertext = ring.encrypt(b64(raw))["ciphertext"]
    index = data.draw(st.integers(0, len(ciphertext) - 1))
    replacement = data.draw(st.sampled_from("AQgw+/=:v0129Zz"))
    changed = ciphertext[:index] + replacement + ciphertext[index + 1 :]
    try:
        opened = ring.decrypt(changed)
    except TransitError:
        return
    # only a change the base64 decoding ignores (the last character's spare bits) opens
    assert unb64(opened["plaintext"]) == raw


# -- datakeys -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 256, 512])
def test_datakey_plaintext_and_wrapped(rotated: TransitKey, bits: int) -> None:
    answer = rotated.datakey("plaintext", bits=bits)
    assert set(answer) == {"ciphertext", "key_version", "plaintext"}
    assert answer["key_version"] == 3
    datakey = unb64(answer["plaintext"])
    assert len(datakey) == bits // 8
    assert rotated.decrypt(answer["ciphertext"]) == {"plaintext": answer["plaintext"]}
    wrapped = rotated.datakey("wrapped", bits=bits, key_version=2)
    assert set(wrapped) == {"ciphertext", "key_version"}
    assert wrapped["ciphertext"].startswith("vault:v2:")
    assert len(unb64(rotated.decrypt(wrapped["ciphertext"])["plaintext"])) == bits // 8
    assert rotated.datakey("plaintext", bits=bits)["plaintext"] != answer["plaintext"]


def test_datakey_refusals(key: TransitKey) -> None:
    assert refused(key.datakey, "both") == "Invalid path, must be 'plaintext' or 'wrapped'"
    for bits in (0, 64, 1024, True, "256"):
        assert refused(key.datakey, "plaintext", bits=bits) == "invalid bit length"
    assert (
        refused(key.datakey, "wrapped", key_version=2)
        == "requested version for encryption is higher than the latest key version"
    )


# -- batches --------------------------------------------------------------------------------


def test_encrypt_batch_one_bad_item_does_not_fail_the_others(key: TransitKey) -> None:
    answer = key.encrypt_batch(
        [
            {"plaintext": b64(b"one"), "reference": "r1"},
            {"plaintext": "%%%", "reference": "r2"},
            {"plaintext": b64(b"three"), "associated_data": b64(b"ad")},
        ]
    )
    assert isinstance(answer, BatchAnswer)
    assert answer.status == 400  # Vault: a failed item makes the batch a 400...
    first, second, third = answer.data["batch_results"]  # type: ignore[misc]
    assert second == {"error": "illegal base64 data at input byte 0", "reference": "r2"}
    assert first["reference"] == "r1"
    assert third["reference"] == ""
    assert first["key_version"] == third["key_version"] == 1
    assert unb64(key.decrypt(first["ciphertext"])["plaintext"]) == b"one"
    opened = key.decrypt(third["ciphertext"], associated_data=b64(b"ad"))
    assert unb64(opened["plaintext"]) == b"three"


def test_partial_failure_response_code(key: TransitKey) -> None:
    good, bad = {"plaintext": b64(b"x")}, {"plaintext": "!"}
    assert key.encrypt_batch([good, bad], partial_failure_response_code=207).status == 207
    assert key.encrypt_batch([good, good], partial_failure_response_code=207).status == 200
    everything_failed = key.encrypt_batch([bad, bad], partial_failure_response_code=207)
    assert everything_failed.status == 400
    odd = key.encrypt_batch([good, bad], partial_failure_response_code=1000)
    assert odd.status == 400
    assert odd.warnings == (
        "invalid HTTP response code override from partial_failure_response_code, reverting to 400",
    )


def test_decrypt_batch_reports_each_item(rotated: TransitKey) -> None:
    ciphertexts = [rotated.encrypt(b64(bytes([n])), key_version=n)["ciphertext"] for n in (1, 2)]
    prefix, blob = blob_of(ciphertexts[1])
    tampered = with_blob(prefix, blob[:-1] + bytes([blob[-1] ^ 1]))
    answer = rotated.decrypt_batch(
        [
            {"ciphertext": ciphertexts[0], "reference": "a"},
            {"ciphertext": tampered, "reference": "b"},
            {"ciphertext": ciphertexts[1]},
            {"reference": "d"},
        ],
        partial_failure_response_code=200,
    )
    assert answer.status == 200
    assert answer.data == {
        "batch_results": [
            {"plaintext": b64(b"\x01"), "reference": "a"},
            {"plaintext": "", "error": AUTH_FAILED, "reference": "b"},
            {"plaintext": b64(b"\x02"), "reference": ""},
            {"plaintext": "", "error": "missing ciphertext to decrypt", "reference": "d"},
        ]
    }
    assert rotated.decrypt_batch([{"ciphertext": tampered}]).status == 400


def test_rewrap_batch_answers_200_with_errors_in_items(rotated: TransitKey) -> None:
    old = rotated.encrypt(b64(CARD), key_version=1)["ciphertext"]
    answer = rotated.rewrap_batch([{"ciphertext": old}, {"ciphertext": "vault:v1:AAAA"}])
    assert answer.status == 200
    first, second = answer.data["batch_results"]  # type: ignore[misc]
    assert first["key_version"] == 3
    assert unb64(rotated.decrypt(first["ciphertext"])["plaintext"]) == CARD
    assert second == {"error": AUTH_FAILED, "reference": ""}


def test_batch_items_refuse_context_and_nonce_one_by_one(key: TransitKey) -> None:
    answer = key.encrypt_batch(
        [{"plaintext": b64(b"a"), "nonce": b64(bytes(12))}, {"plaintext": b64(b"b")}]
    )
    first, second = answer.data["batch_results"]  # type: ignore[misc]
    assert first["error"] == "provided nonce not allowed for this key"
    assert "ciphertext" in second


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"plaintext": "AA=="}, "failed to parse batch input: batch_input must be an array"),
        ("AA==", "failed to parse batch input: batch_input must be an array"),
        ([], "missing batch input to process"),
        (["AA=="], "failed to parse batch input: [0] expected a map"),
        (
            [{"plaintext": "AA=="}, {"plaintext": 7}],
            "failed to parse batch input: '[1].plaintext' expected type 'string'",
        ),
        (
            [{"plaintext": "AA==", "key_version": "1"}],
            "failed to parse batch input: '[0].key_version' expected type 'int'",
        ),
        (
            [{"plaintext": "AA==", "reference": 5}],
            "failed to parse batch input: '[0].reference' expected type 'string'",
        ),
    ],
)
def test_malformed_batches_are_refused_whole(key: TransitKey, items: object, message: str) -> None:
    for call in (key.encrypt_batch, key.decrypt_batch, key.rewrap_batch):
        assert refused(call, items) == message


# -- storage --------------------------------------------------------------------------------


def test_to_bytes_round_trip(rotated: TransitKey) -> None:
    configured, _ = rotated.configure(
        min_decryption_version=2, min_encryption_version=3, deletion_allowed=True
    )
    data = configured.to_bytes()
    restored = TransitKey.from_bytes(data)
    assert restored == configured
    assert restored.read() == configured.read()
    ciphertext = configured.encrypt(b64(CARD))["ciphertext"]
    assert unb64(restored.decrypt(ciphertext)["plaintext"]) == CARD
    assert TransitKey.from_bytes(restored.to_bytes()) == configured


def _stored(key: TransitKey) -> dict[str, object]:
    return json.loads(key.to_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("name"), "unexpected fields"),
        (lambda d: d.update(extra=1), "unexpected fields"),
        (lambda d: d.update(format=2), "unknown format"),
        (lambda d: d.update(type="chacha20-poly1305"), "unsupported type"),
        (lambda d: d.update(name="a/b"), "bad name"),
        (lambda d: d.update(versions=[]), "versions is not an object"),
        (lambda d: d["versions"].pop("2"), "versions must be 1..n"),
        (lambda d: d["versions"].update({"01": d["versions"]["1"]}), "bad version entry"),
        (lambda d: d["versions"]["1"].update(key="AAAA"), "not 32 bytes"),
        (lambda d: d["versions"]["1"].update(key="%%%%"), "not base64"),
        (lambda d: d["versions"]["1"].update(created="now"), "not a unix time"),
        (lambda d: d["versions"]["1"].update(extra=1), "bad version entry"),
        (lambda d: d.update(min_decryption_version=4), "min_decryption_version out of range"),
        (lambda d: d.update(min_decryption_version=0), "min_decryption_version out of range"),
        (lambda d: d.update(min_encryption_version=9), "min_encryption_version out of range"),
        (
            lambda d: d.update(min_decryption_version=3, min_encryption_version=2),
            "below min_decryption_version",
        ),
        (lambda d: d.update(deletion_allowed=1), "not a boolean"),
    ],
)
def test_from_bytes_refuses_anything_else(
    rotated: TransitKey, mutate: object, message: str
) -> None:
    document = _stored(rotated)
    mutate(document)  # type: ignore[operator]
    with pytest.raises(StateError, match=re.escape(message)) as caught:
        TransitKey.from_bytes(json.dumps(document).encode())
    for version in rotated.versions.values():
        assert b64(version.key) not in str(caught.value)


def test_from_bytes_refuses_non_json_and_duplicate_keys(key: TransitKey) -> None:
    for data in (b"", b"\xff\xfe", b"[1]", b"{" * 100_000):
        with pytest.raises(StateError):
            TransitKey.from_bytes(data)
    duplicated = key.to_bytes().replace(
        b'{"deletion_allowed":false,', b'{"deletion_allowed":true,"deletion_allowed":false,'
    )
    with pytest.raises(StateError, match="not JSON"):
        TransitKey.from_bytes(duplicated)


def test_a_key_is_immutable_and_validated(key: TransitKey) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        key.versions[2] = key.versions[1]  # type: ignore[index]
    with pytest.raises(StateError, match="not 32 bytes"):
        TransitKey("k", {1: KeyVersion(b"short", NOW)})
    with pytest.raises(StateError, match=r"versions must be 1\.\.n"):
        TransitKey("k", {})


def test_errors_fit_the_tree() -> None:
    assert issubclass(TransitError, UsageError)
    assert TransitError("x").status == 400
    assert KEY_NOT_FOUND == "encryption key not found"
